"""Run-time management: the durable record of operators' changes, and the service that applies
them through the controller (the HTTP adapter is ``modelyard.server.http.management``)."""

from modelyard.management.service import Management
from modelyard.management.state import ManagementState, ModelOverride, StateStore, apply_overrides

__all__ = ["Management", "ManagementState", "ModelOverride", "StateStore", "apply_overrides"]
