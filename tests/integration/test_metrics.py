"""``GET /metrics``: Prometheus text that counts what users did, with bounded labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelyard.testing.server import RunningServer


def _samples(rest_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{rest_url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_requests_and_errors_are_counted_per_model(server: RunningServer) -> None:
    ok_key = (
        "modelyard_inference_requests_total",
        (("model", "linear"), ("outcome", "OK"), ("protocol", "tfserving_rest"), ("version", "1")),
    )
    bad_key = (
        "modelyard_inference_requests_total",
        (
            ("model", "linear"),
            ("outcome", "INVALID_ARGUMENT"),
            ("protocol", "tfserving_rest"),
            ("version", "1"),
        ),
    )
    before = _samples(server.rest_url)
    url = f"{server.rest_url}/v1/models/linear/versions/1:predict"
    for _ in range(3):
        assert httpx.post(url, json={"instances": [[1, 2, 3, 4]]}).status_code == 200
    assert httpx.post(url, json={"instances": [[1, 2, 3]]}).status_code == 400
    assert (
        httpx.post(
            f"{server.rest_url}/v1/models/no-such-model:predict", json={"instances": [1]}
        ).status_code
        == 404
    )
    after = _samples(server.rest_url)
    assert after[ok_key] - before.get(ok_key, 0) == 3
    assert after[bad_key] - before.get(bad_key, 0) == 1
    # A name a client made up never becomes a label value.
    assert not any("no-such-model" in str(labels) for _, labels in after)


def test_model_states_are_exported(server: RunningServer) -> None:
    samples = _samples(server.rest_url)
    key = (
        "modelyard_model_version_state",
        (("model", "mlp"), ("state", "AVAILABLE"), ("version", "2")),
    )
    assert samples[key] == 1.0
