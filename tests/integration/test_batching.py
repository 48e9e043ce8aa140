"""Dynamic batching through a real server, over REST, with the real ONNX backend underneath.

A recording loader sits at the controller's seam (under the batcher): it records the shape of
every batch the model runs and can hold batches at a gate, so the queue fills deterministically.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.lifecycle.controller import InProcessLoader, LoadRequest
from modelyard.lifecycle.servable import Servable
from modelyard.tensors import Signature
from modelyard.testing.models import (
    BuiltModel,
    model_config,
    write_config,
    write_onnx_int64_affine,
    write_onnx_linear,
)
from modelyard.testing.server import RunningServer, serving

NEVER = 60_000_000  # µs: only a full batch is dispatched within a test's lifetime
TIMEOUT_MICROS = 200_000


class Recorded:
    """A loaded servable that records batch shapes and waits at ``gate`` before running."""

    def __init__(self, inner: Servable, model: str, loader: RecordingLoader) -> None:
        self._inner = inner
        self._model = model
        self._loader = loader

    @property
    def signature(self) -> Signature:
        return self._inner.signature

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._inner.signatures

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        self._loader.batches.setdefault(self._model, []).append(next(iter(inputs.values())).shape)
        if not self._loader.gate.is_set():
            await asyncio.to_thread(self._loader.gate.wait, 30)
        return await self._inner.infer(inputs, signature_name)

    async def close(self) -> None:
        await self._inner.close()


class RecordingLoader:
    def __init__(self) -> None:
        self.inner = InProcessLoader()
        self.batches: dict[str, list[tuple[int, ...]]] = {}
        self.gate = threading.Event()
        self.gate.set()

    async def load(self, request: LoadRequest) -> Servable:
        return Recorded(await self.inner.load(request), request.key.model, self)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, BuiltModel]]:
    root = tmp_path_factory.mktemp("batching")
    affine = write_onnx_int64_affine(root / "affine" / "1")
    linear = write_onnx_linear(root / "linear" / "1")
    for name in (
        "affine_batched",
        "linear_padded",
        "linear_full",
        "linear_gated",
        "linear_timeout",
    ):
        source = affine if name.startswith("affine") else linear
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / source.artifact.name).write_bytes(source.artifact.read_bytes())
    batching: dict[str, dict[str, Any]] = {
        "affine_batched": {"max_batch_size": 8, "batch_timeout_micros": 20_000},
        "linear_padded": {
            "max_batch_size": 8,
            "batch_timeout_micros": 50_000,
            "allowed_batch_sizes": [4, 8],
        },
        "linear_full": {"max_batch_size": 8, "batch_timeout_micros": NEVER},
        "linear_gated": {
            "max_batch_size": 2,
            "batch_timeout_micros": NEVER,
            "max_enqueued_batches": 2,
        },
        "linear_timeout": {"max_batch_size": 64, "batch_timeout_micros": TIMEOUT_MICROS},
    }
    entries = [model_config("affine", {1: affine}), model_config("linear", {1: linear})]
    entries += [
        model_config(name, {1: affine if name.startswith("affine") else linear}, batching=b)
        for name, b in batching.items()
    ]
    return write_config(root / "modelyard.yaml", entries), {"affine": affine, "linear": linear}


@pytest.fixture(scope="module")
def loader() -> Iterator[RecordingLoader]:
    recording = RecordingLoader()
    yield recording
    recording.inner.shutdown()


@pytest.fixture(scope="module")
def server(
    built: tuple[Path, dict[str, BuiltModel]], loader: RecordingLoader
) -> Iterator[RunningServer]:
    with serving(built[0], loader=loader) as running:
        yield running


def predict(server: RunningServer, model: str, x: np.ndarray) -> httpx.Response:
    return httpx.post(
        f"{server.rest_url}/v1/models/{model}:predict",
        json={"inputs": {"x": x.tolist()}},
        timeout=30,
    )


def concurrently(calls: list[Any]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_batched_outputs_are_identical_to_unbatched_ones(
    server: RunningServer, loader: RecordingLoader
) -> None:
    rng = np.random.default_rng(3)
    requests = [
        rng.integers(-1000, 1000, size=(int(rng.integers(1, 4)), width), dtype=np.int64)
        for width in (3, 3, 5, 3, 5, 3, 3, 5, 3, 3, 3, 5)
    ]
    batched = concurrently([lambda x=x: predict(server, "affine_batched", x) for x in requests])
    alone = [predict(server, "affine", x) for x in requests]
    for x, b, a in zip(requests, batched, alone, strict=True):
        assert b.status_code == a.status_code == 200, b.text
        got, want = np.array(b.json()["outputs"]), np.array(a.json()["outputs"])
        assert got.shape == x.shape
        assert np.array_equal(got, want)
    # Batching really happened, and never mixed widths.
    runs = loader.batches["affine_batched"]
    assert len(runs) < len(requests)
    assert sum(shape[0] for shape in runs) == sum(x.shape[0] for x in requests)


def test_padding_to_an_allowed_size_never_returns_the_pads(
    server: RunningServer, loader: RecordingLoader, built: tuple[Path, dict[str, BuiltModel]]
) -> None:
    reference = built[1]["linear"].reference
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(3)]
    responses = concurrently([lambda x=x: predict(server, "linear_padded", x) for x in rows])
    for x, response in zip(rows, responses, strict=True):
        assert response.status_code == 200, response.text
        got = np.array(response.json()["outputs"], dtype=np.float32)
        assert got.shape == (1, 2)
        assert np.allclose(got, reference({"x": x})["y"], atol=1e-5)
    # However the 3 requests fell into batches, each batch ran padded to 4 rows.
    assert set(loader.batches["linear_padded"]) == {(4, 4)}


def test_a_lone_request_runs_after_the_batch_timeout(server: RunningServer) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    assert predict(server, "linear", x).status_code == 200  # warm the connection path
    started = time.perf_counter()
    response = predict(server, "linear_timeout", x)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    timeout = TIMEOUT_MICROS / 1e6
    # Not before the timeout; and not much after it (generous: shared CI machines stall).
    assert timeout <= elapsed < timeout + 2.0


def test_a_bad_shape_fails_alone_and_never_joins_a_batch(
    server: RunningServer, loader: RecordingLoader
) -> None:
    good = np.ones((1, 4), dtype=np.float32)
    bad = np.ones((1, 3), dtype=np.float32)
    responses = concurrently(
        [lambda: predict(server, "linear_full", bad)]
        + [lambda: predict(server, "linear_full", good) for _ in range(8)]
    )
    assert responses[0].status_code == 400
    assert "shape [1, 3]" in responses[0].json()["error"]
    assert [r.status_code for r in responses[1:]] == [200] * 8
    # The 8 good rows filled the batch (its timeout never fires); the bad one never joined it.
    assert loader.batches["linear_full"] == [(8, 4)]


def test_a_full_queue_refuses_exactly_the_overflow_with_503(
    server: RunningServer, loader: RecordingLoader
) -> None:
    # max_batch_size 2, max_enqueued_batches 2: one batch of 2 runs (held at the gate) and
    # 2 x 2 rows wait, so of 10 one-row requests exactly 6 are accepted and 4 refused.
    x = np.ones((1, 4), dtype=np.float32)
    loader.gate.clear()
    try:
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(predict, server, "linear_gated", x) for _ in range(10)]
            deadline = time.monotonic() + 30
            while sum(f.done() for f in futures) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = [f.result() for f in futures if f.done()]
            loader.gate.set()
            responses = [f.result() for f in futures]
    finally:
        loader.gate.set()
    assert [r.status_code for r in refused] == [503] * 4
    assert "max_enqueued_batches" in refused[0].json()["error"]
    assert sorted(r.status_code for r in responses) == [200] * 6 + [503] * 4
