"""Overload: past ``max_concurrent_requests`` in flight, a request is refused at once with 503
(REST) or RESOURCE_EXHAUSTED (gRPC) and a message that says what to change; the requests
already in flight are answered, and the server serves again as soon as they finish."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from modelyard.testing.models import model_config, write_config, write_onnx_linear
from modelyard.testing.server import serving

HOLD_S = 1.0


def test_requests_past_the_limit_are_refused_at_once(tmp_path: Path) -> None:
    built = write_onnx_linear(tmp_path / "held" / "1", seed=4)
    # A lone request waits the batch timeout: two of them keep the server at its limit.
    batching = {"max_batch_size": 64, "batch_timeout_micros": int(HOLD_S * 1e6)}
    config = write_config(
        tmp_path / "modelyard.yaml", [model_config("held", {1: built}, batching=batching)]
    )
    x = built.example["x"][:1]
    want = built.reference({"x": x})["y"]
    with serving(config, max_concurrent_requests=2) as server:
        url = f"{server.rest_url}/v1/models/held:predict"
        answers: list[httpx.Response] = []

        def held() -> None:
            answers.append(httpx.post(url, json={"instances": x.tolist()}, timeout=30))

        threads = [threading.Thread(target=held) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(HOLD_S / 3)
        started = time.monotonic()
        refused = httpx.post(url, json={"instances": x.tolist()}, timeout=30)
        assert time.monotonic() - started < HOLD_S / 2  # refused at once, not queued
        assert refused.status_code == 503
        assert "limit of 2 requests" in refused.json()["error"]
        client = grpcclient.InferenceServerClient(server.grpc_target)
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as info:
            client.infer("held", [tensor])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        for thread in threads:
            thread.join(30)
        assert [a.status_code for a in answers] == [200, 200]
        for answer in answers:
            np.testing.assert_allclose(answer.json()["predictions"], want, rtol=1e-5)
        again = client.infer("held", [tensor]).as_numpy("y")
        np.testing.assert_allclose(again, want, rtol=1e-5)
