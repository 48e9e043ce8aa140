"""Paging on a real worker: a version with a long request in flight is not evicted while it runs.

One CPU device of 96 MiB and three TorchScript loop models (``write_torchscript_loop``: a
request's ``n`` sets how long it runs), each declared at 48 MiB, so the device holds one of them
at a time. A long request (about 3.5 s) runs on ``a``; while it runs, requests for ``b`` and
``c`` need ``a``'s room. The documented rule (docs/paging.md, "Page-in and eviction"): a pinned
version is never evicted; the page-in waits for it to be released, and the requests waiting for
it are bounded by ``max_wait_ms`` (here 20 s, longer than ``a``'s request, so they are served
once it is done). The status API is sampled all along.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.testing.models import (
    BuiltModel,
    loop_turns_per_second,
    model_config,
    write_config,
    write_torchscript_loop,
)
from modelyard.testing.server import serving

pytest.importorskip("torch")

LONG_S = 3.5
"""How long ``a``'s long request runs (at the pace measured in this process)."""
MAX_WAIT_MS = 20_000
"""Longer than the long request, even on a loaded machine: the others wait, then are served."""


def _body(built: BuiltModel, turns: int) -> dict[str, Any]:
    x = built.example["x"]
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape),
             "data": x.ravel().tolist()},
            {"name": "n", "datatype": "INT64", "shape": [1], "data": [turns]},
        ]
    }  # fmt: skip


def _correct(reply: httpx.Response, built: BuiltModel, turns: int) -> bool:
    out = reply.json()["outputs"][0]
    got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    want = built.reference({"x": built.example["x"], "n": np.array([turns])})["y"]
    return bool(np.array_equal(got, want))


def _versions(client: httpx.Client, url: str) -> dict[str, dict[str, Any]]:
    doc = client.get(f"{url}/modelyard/v1/status").json()
    return {v["model"]: v for v in doc["paging"]["versions"]}


class _Call(threading.Thread):
    """One inference on its own thread, with when it was sent and when its answer came."""

    def __init__(self, url: str, name: str, built: BuiltModel, turns: int) -> None:
        super().__init__(daemon=True)
        self.url, self.name, self.built, self.turns = url, name, built, turns
        self.sent = self.done = 0.0
        self.reply: httpx.Response | None = None

    def run(self) -> None:
        self.sent = time.monotonic()
        self.reply = httpx.post(
            f"{self.url}/v2/models/{self.name}/infer",
            json=_body(self.built, self.turns),
            timeout=60.0,
        )
        self.done = time.monotonic()

    def answer(self) -> httpx.Response:
        """The reply (after ``run`` or ``join``)."""
        assert self.reply is not None, f"{self.name}: no answer"
        return self.reply


def test_a_version_with_a_long_request_in_flight_is_not_evicted_while_it_runs(
    tmp_path: Path,
) -> None:
    # Widths differ so each answer's shape tells which model gave it.
    built = {n: write_torchscript_loop(tmp_path / n / "1", width=w)
             for n, w in (("a", 4), ("b", 3), ("c", 5))}  # fmt: skip
    config = write_config(
        tmp_path / "paging.yaml",
        [model_config(n, {1: m}, memory="48MiB") for n, m in built.items()],
        devices=[{"name": "sim0", "kind": "cpu", "memory": "96MiB"}],
        paging={"host_memory": "64MiB", "max_wait_ms": MAX_WAIT_MS},
    )
    turns = int(LONG_S * loop_turns_per_second(built["a"]))
    with serving(config, poll_interval_s=0) as server, httpx.Client(timeout=30) as client:
        url = server.rest_url
        warm = _Call(url, "a", built["a"], 3)  # puts a on the device
        warm.run()
        assert warm.answer().status_code == 200, warm.answer().text
        before = _versions(client, url)
        assert before["a"]["tier"] == "device"
        assert before["b"]["tier"] != "device"  # one of the three fits at a time
        assert before["c"]["tier"] != "device"

        long = _Call(url, "a", built["a"], turns)
        long.start()
        end = time.monotonic() + 15
        while _versions(client, url)["a"]["in_flight"] < 1 and time.monotonic() < end:
            time.sleep(0.02)
        others = [_Call(url, n, built[n], 3) for n in "bc"]
        for call in others:
            call.start()
        samples: list[dict[str, dict[str, Any]]] = []
        end = time.monotonic() + 45
        while long.is_alive() and time.monotonic() < end:
            samples.append(_versions(client, url))
            time.sleep(0.1)
        long.join(30)
        for call in others:
            call.join(30)

        # a's long request answered correctly, not an error.
        assert long.answer().status_code == 200, long.answer().text
        assert _correct(long.answer(), built["a"], turns)
        ran = long.done - long.sent
        # While it was in flight, a stayed on its device, and b and c waited for its room.
        running = [s for s in samples if s["a"]["in_flight"] >= 1]
        assert len(running) >= 5, (ran, len(samples))
        assert all(s["a"]["tier"] == "device" for s in running), running
        assert all(s["a"]["evictions"] == before["a"]["evictions"] for s in running), running
        waiting = [s for s in running if s["b"]["in_flight"] + s["c"]["in_flight"] >= 1]
        assert waiting, running  # the others' requests were there, pinned, while a ran
        assert all(s[n]["tier"] != "device" for s in running for n in "bc"), running
        # The others were served, correctly, after a's request: within max_wait_ms, not a 503.
        for call in others:
            assert call.answer().status_code == 200, call.answer().text
            assert _correct(call.answer(), call.built, 3)
            assert call.done > long.done - 0.5, (call.name, call.done - long.done)
        # Once its request was done, a could leave: the others took its room.
        after = _versions(client, url)
        assert after["a"]["evictions"] > before["a"]["evictions"]
        assert after["a"]["in_flight"] == 0
        assert sum(after[n]["page_ins"] for n in "bc") > sum(before[n]["page_ins"] for n in "bc")
        again = _Call(url, "a", built["a"], 3)
        again.run()
        assert again.answer().status_code == 200, again.answer().text
        assert _correct(again.answer(), built["a"], 3)
        print(
            f"\na's long request: {ran:.2f} s (n={turns}); "
            + "; ".join(
                f"{c.name}: sent {c.sent - long.sent:.2f} s after a, answered "
                f"{c.done - long.done:+.2f} s from a's answer, waited {c.done - c.sent:.2f} s"
                for c in others
            )
            + f"; {len(running)} status samples while a ran, a on its device in all"
        )
