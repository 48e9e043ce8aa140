"""Server defaults users see in ``--help``; a light module so the CLI can show them without
importing the web and gRPC stacks (``modelyard plan`` never needs those)."""

DEFAULT_GRPC_PORT = 8500
"""TF Serving's gRPC port."""
DEFAULT_REST_PORT = 8501
"""TF Serving's REST port."""
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
"""Largest request body (REST) or message (gRPC) accepted."""
DEFAULT_MAX_IN_FLIGHT = 4096
"""Inference requests served at once per device, all protocols together, before new ones for
that device get 503 (each device has its own budget: one device's trouble cannot use up
another's)."""
DEFAULT_REQUEST_TIMEOUT_MS = 60_000
"""Every request's deadline unless the protocol gives a sooner one. Long enough for a large
model's first call on a GPU (lazy initialisation, kernel autotuning) and for a request queued
behind a full batch queue; short enough that a stuck device answers 504 within a minute instead
of holding clients (and their connections and memory here) for ever. It matches the idle
timeout common load balancers use, past which nobody is listening any more."""
