"""The management gate: the one check, and which entry points are open."""

from __future__ import annotations

import pytest

from modelyard.errors import PermissionDenied, Unauthenticated
from modelyard.management.access import Access, Gate, route_access, rpc_access


def test_off_without_a_token_whatever_is_presented() -> None:
    for gate in (Gate(None), Gate("")):
        assert not gate.on
        for presented in ("", "Bearer ", "Bearer anything"):
            with pytest.raises(PermissionDenied, match="--management-token"):
                gate.check(presented)


@pytest.mark.parametrize(
    "presented",
    ["", "secret", "Bearer", "Bearer ", "Bearer secre", "Bearer secrets", "Basic secret",
     "Bearer\tsecret", "bearer: secret", "Bearer sécret"],
)  # fmt: skip
def test_anything_but_the_bearer_token_is_unauthenticated(presented: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        Gate("secret").check(presented)
    assert "secret" not in info.value.message.replace("TOKEN", "")


@pytest.mark.parametrize("presented", ["Bearer secret", "bearer secret", "  Bearer  secret "])
def test_the_bearer_token_passes(presented: str) -> None:
    Gate("secret").check(presented)


def test_the_token_never_shows_in_a_repr() -> None:
    assert "secret" not in repr(Gate("secret"))


def test_changes_are_guarded_and_reads_open() -> None:
    assert route_access("POST", "/v2/repository/models/{model}/load") is Access.GUARDED
    assert route_access("POST", "/v2/repository/index") is Access.GUARDED
    assert route_access("PUT", "/modelyard/v1/models/{model}/labels/{label}") is Access.GUARDED
    assert route_access("GET", "/v2/health/ready") is Access.OPEN
    assert route_access("HEAD", "/v2/health/ready") is Access.OPEN
    assert route_access("DELETE", "/v2/health/ready") is Access.GUARDED
    assert route_access("GET", "/a/route/nobody/listed") is Access.GUARDED
    assert rpc_access("/tensorflow.serving.ModelService/HandleReloadConfigRequest") is (
        Access.GUARDED
    )
    assert rpc_access("/tensorflow.serving.ModelService/GetModelStatus") is Access.OPEN
    assert rpc_access("/some.New/Method") is Access.GUARDED
