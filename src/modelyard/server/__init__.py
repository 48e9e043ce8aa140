"""The front end: a protocol-neutral data plane under thin REST and gRPC adapters."""
