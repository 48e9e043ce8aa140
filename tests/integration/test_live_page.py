"""``GET /``: the live page is served, and the status document it draws from is there."""

from __future__ import annotations

import httpx

from modelyard.testing.server import RunningServer


def test_live_page_and_its_data(server: RunningServer) -> None:
    page = httpx.get(f"{server.rest_url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # The page draws from these two endpoints; both must answer what it expects.
    assert "modelyard/v1/status" in page.text
    assert "v2/health/ready" in page.text
    status = httpx.get(f"{server.rest_url}/modelyard/v1/status").json()
    keys = {f"{m['model']}:{m['version']}" for m in status["models"]}
    on_devices = {key for device in status["devices"] for key in device["models"]}
    assert on_devices == keys  # every version is drawn on the device the plan gave it
    assert httpx.get(f"{server.rest_url}/v2/health/ready").status_code == 200
