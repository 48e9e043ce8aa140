"""Server defaults users see in ``--help``; a light module so the CLI can show them without
importing the web and gRPC stacks (``modelyard plan`` never needs those)."""

DEFAULT_GRPC_PORT = 8500
"""TF Serving's gRPC port."""
DEFAULT_REST_PORT = 8501
"""TF Serving's REST port."""
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
"""Largest request body (REST) or message (gRPC) accepted."""
DEFAULT_MAX_IN_FLIGHT = 4096
"""Inference requests served at once, all protocols together, before new ones get 503."""
