"""On a GPU: 4 memory-capped slices of GPU 0, 12 models, each model's weights on its planned slice.

Checked from inside each worker (its report): the worker sees exactly one GPU
(``CUDA_VISIBLE_DEVICES=0``), and every parameter of every model it holds is on ``cuda:0``.
Skipped without a CUDA GPU.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from modelyard.config import load_config
from modelyard.testing.models import model_config, write_config, write_torch_export_mlp
from modelyard.testing.server import serving

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_four_capped_slices_of_gpu0_hold_their_planned_models(tmp_path: Path) -> None:
    models = {
        f"m{i:02d}": write_torch_export_mlp(tmp_path / f"m{i:02d}" / "1", seed=i) for i in range(12)
    }
    entries = [model_config(name, {1: m}, memory="256MiB") for name, m in models.items()]
    devices = [
        {"name": f"slice{i}", "kind": "cuda", "index": 0, "memory": "1GiB"} for i in range(4)
    ]
    config = load_config(write_config(tmp_path / "modelyard.yaml", entries, devices=devices))
    with serving(config) as running, httpx.Client(timeout=30) as client:
        plan = running.server.start_plan
        assert plan.feasible, plan.explanation
        planned = {u.device.name: sorted(str(k) for k in u.models) for u in plan.devices}
        assert all(len(v) == 3 for v in planned.values())
        status = client.get(f"{running.rest_url}/modelyard/v1/status").json()
        assert len({d["pid"] for d in status["devices"]}) == 4
        for device in status["devices"]:
            name = device["name"]
            report = client.get(
                f"{running.rest_url}/modelyard/v1/status/devices/{name}/report"
            ).json()
            assert report["cuda_visible_devices"] == "0"
            assert report["cuda_device_count"] == 1
            held = sorted(f"{m['model']}:{m['version']}" for m in report["models"])
            assert held == planned[name]
            assert all(m["placed_on"] == "cuda:0" for m in report["models"]), report["models"]
            assert all(m["measured_bytes"] > 0 for m in report["models"])
        for name, built in models.items():
            x = built.example["x"]
            body = {
                "inputs": [
                    {
                        "name": "x",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
            response = client.post(f"{running.rest_url}/v2/models/{name}/infer", json=body)
            assert response.status_code == 200, response.text
            out = response.json()["outputs"][0]
            got = np.asarray(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(
                got, built.reference({"x": x})["output_0"], rtol=1e-4, atol=1e-4
            )
