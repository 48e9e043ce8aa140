"""The REST entry runs only on the uvicorn it was tested with: a version outside the tested
range, or a protocol without what the entry uses, leaves uvicorn's plain ASGI path in place
(said once in the log), and the server still serves (``tests/integration/test_rest_lean.py``
checks the entry is in use on the installed uvicorn)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelyard.lifecycle.registry import ModelRegistry
from modelyard.server.dataplane import DataPlane
from modelyard.server.http import entry
from modelyard.server.http.lean import LeanInference
from modelyard.server.http.transport import http_protocol


def _lean() -> LeanInference:
    return LeanInference(
        Starlette(), DataPlane(ModelRegistry()), max_request_bytes=1024, observer=None
    )


def test_the_installed_uvicorn_gets_the_entry() -> None:
    assert entry.usable(HttpToolsProtocol) is None
    protocol = http_protocol(_lean())
    assert not isinstance(protocol, str)
    assert protocol.__name__ == "HotHttpToolsProtocol"


@pytest.mark.parametrize("version", ["0.28.1", "0.55.0", "1.0.0", "0.60.0.dev1"])
def test_an_untested_uvicorn_keeps_the_plain_path(
    version: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(uvicorn, "__version__", version)
    assert f"uvicorn {version} is outside the tested" in (entry.usable(HttpToolsProtocol) or "")
    with caplog.at_level(logging.INFO, logger="modelyard.server.http.transport"):
        protocol = http_protocol(_lean())
    assert not isinstance(protocol, str)
    assert protocol.__name__ == "CoalescingHttpToolsProtocol"
    assert f"uvicorn {version} is outside the tested" in caplog.text


def test_a_protocol_without_what_the_entry_uses_keeps_the_plain_path() -> None:
    class Changed(HttpToolsProtocol):  # a later uvicorn that renamed its pipeline
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            del self.pipeline

    why = entry.usable(Changed)
    assert why is not None
    assert "protocol has no pipeline" in why
