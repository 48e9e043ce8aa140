"""Prometheus metrics, in the server's own registry (never the process-global one)."""

from modelyard.metrics.server_metrics import ServerMetrics

__all__ = ["ServerMetrics"]
