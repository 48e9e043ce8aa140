"""REST adapters (TF Serving, KServe v2) over the data plane, assembled into one ASGI app."""
