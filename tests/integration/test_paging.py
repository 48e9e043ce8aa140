"""Paging on real worker processes: 16 MiB ONNX tables on one CPU device that holds four or five.

What a user notices: a paged-out model answers correctly after one page-in however many
requests wait for it; a model used every second and a resident model stay on the device while
colder ones go; a wait past ``max_wait_ms`` is a 503 naming it and the server keeps serving; a
worker killed during a page-in comes back with its models from host memory, without their
files (they are deleted before the kill).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.demo.models import BuiltModel
from modelyard.testing.models import write_config
from modelyard.testing.paging import write_onnx_table
from modelyard.testing.server import RunningServer, serving

MIB = 16  # weights per model; the device (128 MiB) holds the resident model and 3-4 others
COLD = [f"t{i}" for i in range(5)]
Served = tuple[RunningServer, dict[str, BuiltModel]]


def build(root: Path, max_wait_ms: int, host_memory: str) -> tuple[Path, dict[str, BuiltModel]]:
    built = {name: write_onnx_table(root / name / "1", MIB, seed=i) for i, name in
             enumerate(["hot", *COLD, "r"])}  # fmt: skip
    entries: list[dict[str, Any]] = [
        {"name": n, "base_path": n, "platform": "onnx"} for n in built if n != "r"
    ]
    entries.append({"name": "r", "base_path": "r", "platform": "onnx", "resident": True,
                    "memory": "20MiB"})  # fmt: skip
    config = write_config(
        root / "paging.yaml",
        entries,
        devices=[{"name": "sim0", "kind": "cpu", "memory": "128MiB"}],
        paging={"host_memory": host_memory, "max_wait_ms": max_wait_ms},
    )
    return config, built


def infer(url: str, name: str, built: BuiltModel, timeout: float = 60.0) -> httpx.Response:
    ids = built.example["ids"]
    body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [len(ids)],
                        "data": ids.tolist()}]}  # fmt: skip
    return httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=timeout)


def correct(reply: httpx.Response, built: BuiltModel) -> bool:
    out = reply.json()["outputs"][0]
    got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    return bool(np.array_equal(got, built.reference(built.example)["rows"]))


def paging(url: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{url}/modelyard/v1/status", timeout=30).json()
    return doc


def version(url: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(v for v in paging(url)["paging"]["versions"]
                                 if v["model"] == name)  # fmt: skip
    return found


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config, built = build(tmp_path_factory.mktemp("paging"), 30000, "256MiB")
    with serving(config, poll_interval_s=0) as running:
        yield running, built


def test_every_model_answers_and_pages_in_on_demand(
    paged: Served,
) -> None:
    server, built = paged
    for _ in range(2):
        for name, model in built.items():
            reply = infer(server.rest_url, name, model)
            assert reply.status_code == 200, reply.text
            assert correct(reply, model)
    doc = paging(server.rest_url)["paging"]
    assert doc["page_ins"] > 0
    on_device = [v["model"] for v in doc["versions"] if v["tier"] == "device"]
    assert 2 <= len(on_device) < len(built)  # the device holds some, not all seven
    assert "r" in on_device
    assert {v["model"] for v in doc["versions"]} == set(built)  # every version has a tier
    page = httpx.get(f"{server.rest_url}/", timeout=30).text
    assert "status.paging" in page  # the live page draws each version's tier from it


def test_a_burst_of_16_requests_causes_exactly_one_page_in(
    paged: Served,
) -> None:
    server, built = paged
    url = server.rest_url
    name = next(v["model"] for v in paging(url)["paging"]["versions"] if v["tier"] != "device")
    before = version(url, name)["page_ins"]
    replies: list[httpx.Response] = []
    go = threading.Barrier(16)

    def one() -> None:
        go.wait(10)
        replies.append(infer(url, name, built[name]))

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in replies] == [200] * 16
    assert all(correct(r, built[name]) for r in replies)
    assert version(url, name)["page_ins"] == before + 1


def test_a_model_used_every_second_and_a_resident_one_stay_while_colder_ones_go(
    paged: Served,
) -> None:
    server, built = paged
    url = server.rest_url
    for _ in range(3):  # "hot" becomes a model used every second
        assert infer(url, "hot", built["hot"]).status_code == 200
        time.sleep(1.0)
    hot_before = version(url, "hot")["evictions"]
    cold_before = sum(version(url, n)["evictions"] for n in COLD)
    next_hot = time.monotonic()
    end = time.monotonic() + 8.0
    i = 0
    while time.monotonic() < end:
        if time.monotonic() >= next_hot:
            assert infer(url, "hot", built["hot"]).status_code == 200
            next_hot += 1.0
        name = COLD[i % len(COLD)]
        i += 1
        reply = infer(url, name, built[name])
        assert reply.status_code == 200, reply.text
        assert correct(reply, built[name])
        time.sleep(0.3)
    assert version(url, "hot")["evictions"] == hot_before
    assert version(url, "hot")["tier"] == "device"
    assert sum(version(url, n)["evictions"] for n in COLD) > cold_before  # they did go
    resident = version(url, "r")
    assert resident["evictions"] == 0
    assert resident["tier"] == "device"


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config, built = build(tmp_path_factory.mktemp("impatient"), 1, "256MiB")
    with serving(config, poll_interval_s=0) as running:
        yield running, built


def until_served(url: str, name: str, built: BuiltModel, seconds: float = 60.0) -> httpx.Response:
    end = time.monotonic() + seconds
    while True:
        reply = infer(url, name, built)
        if reply.status_code == 200 or time.monotonic() > end:
            return reply
        assert reply.status_code == 503, reply.text
        time.sleep(0.05)


def test_a_wait_past_max_wait_ms_is_a_503_naming_it_and_the_server_keeps_serving(
    impatient: Served,
) -> None:
    server, built = impatient
    url = server.rest_url
    name = next(v["model"] for v in paging(url)["paging"]["versions"] if v["tier"] != "device")
    reply = infer(url, name, built[name])
    assert reply.status_code == 503
    assert "did not page in" in reply.text
    assert "max_wait_ms=1" in reply.text
    served = until_served(url, name, built[name])
    assert served.status_code == 200, served.text
    assert correct(served, built[name])


def test_a_worker_killed_during_a_page_in_comes_back_from_host_memory_without_its_files(
    impatient: Served,
) -> None:
    server, built = impatient
    url = server.rest_url
    doc = paging(url)
    assert all(v["host_bytes"] > 0 for v in doc["paging"]["versions"])  # all in host memory
    for model in built.values():
        model.artifact.unlink()  # from now on only host memory has them
    pid = doc["devices"][0]["pid"]
    name = next(v["model"] for v in doc["paging"]["versions"] if v["tier"] != "device")
    from_host = version(url, name)["page_ins_from_host"]
    os.kill(pid, signal.SIGSTOP)  # the page-in below cannot finish until the kill
    try:
        assert infer(url, name, built[name]).status_code == 503  # max_wait_ms=1
        deadline = time.monotonic() + 10
        while not version(url, name)["paging_in"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert version(url, name)["paging_in"]
    finally:
        os.kill(pid, signal.SIGKILL)
    for other, model in built.items():
        reply = until_served(url, other, model)
        assert reply.status_code == 200, (other, reply.text, paging(url))
        assert correct(reply, model)
    doc = paging(url)
    assert doc["devices"][0]["pid"] != pid
    assert doc["devices"][0]["restarts"] >= 1
    assert version(url, name)["page_ins_from_host"] > from_host
    assert all(m["state"] == "AVAILABLE" for m in doc["models"])
