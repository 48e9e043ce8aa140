"""What workers measure for each model is the model's own footprint: the framework's one-time
costs (imports, runtime, CUDA context) are paid before the first load's baseline, not charged
to whichever model happens to load first, and then cached as its footprint for every plan."""

from __future__ import annotations

import httpx

from modelyard.testing.server import RunningServer

# The test models are a few KiB of weights. Before the backends prepared their framework, the
# first torch.export model in a worker measured about 100 MiB and the first ONNX one about 10.
LIMIT_BYTES = {"mlp": 40 * 2**20, "linear": 5 * 2**20}


def test_first_model_of_a_framework_is_not_charged_for_the_framework(
    server: RunningServer,
) -> None:
    status = httpx.get(f"{server.rest_url}/modelyard/v1/status").json()
    measured = {
        (m["model"], m["version"]): max(v for v in m["measured_bytes"].values() if v is not None)
        for m in status["models"]
        if m["model"] in LIMIT_BYTES
    }
    assert set(measured) == {("mlp", 1), ("mlp", 2), ("linear", 1), ("linear", 2)}
    for (model, version), size in measured.items():
        assert 0 < size < LIMIT_BYTES[model], f"{model}:{version} measured {size} bytes"
