"""The states a model version goes through, and the transitions allowed between them.

    START ──> LOADING ──> AVAILABLE ──> UNLOADING ──> END
                 │  ^          │                       ^
                 │  └──────────┘ (its worker died: reloading)
                 └──────> FAILED ──(retry)──> LOADING  │
                            └──────────────────────────┘

The names follow TF Serving's ``ModelVersionStatus.State``; FAILED is ours (TF Serving reports
a failed load as END with an error status, which is how the TF Serving adapter shows it).
"""

from __future__ import annotations

import enum


class ModelState(enum.Enum):
    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"
    FAILED = "FAILED"


ALLOWED_TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.START: frozenset({ModelState.LOADING, ModelState.END}),
    ModelState.LOADING: frozenset({ModelState.AVAILABLE, ModelState.FAILED}),
    ModelState.AVAILABLE: frozenset({ModelState.UNLOADING, ModelState.LOADING}),
    ModelState.UNLOADING: frozenset({ModelState.END}),
    ModelState.FAILED: frozenset({ModelState.LOADING, ModelState.END}),
    ModelState.END: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug: code tried a transition the state machine does not allow."""


def check_transition(current: ModelState, target: ModelState) -> None:
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(f"{current.value} -> {target.value} is not allowed")
