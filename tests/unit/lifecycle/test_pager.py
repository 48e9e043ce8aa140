"""The pager's rules with a fake loader at the ``Loader`` seam (no processes, virtual time):
single-flight page-ins, eviction by bytes coldest first, residents and versions in flight
never evicted, waits bounded by ``max_wait_ms``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from modelyard.config.schema import ModelConfig, Platform
from modelyard.devices import DeviceTarget
from modelyard.errors import Unavailable
from modelyard.ids import VersionKey
from modelyard.lifecycle.loading import LoadRequest
from modelyard.lifecycle.paging.eviction import Candidate, Usage, choose_victims
from modelyard.lifecycle.paging.pager import Pager
from modelyard.lifecycle.paging.replica import PagedReplica, Room
from modelyard.lifecycle.paging.store import HostStore
from modelyard.servable import Servable
from modelyard.tensors import DataType, Signature, TensorSpec

MiB = 2**20
SIG = Signature((TensorSpec("x", DataType.FP32, (-1,)),), (TensorSpec("y", DataType.FP32, (-1,)),))


class FakeServable:
    def __init__(self, loader: FakeLoader, key: VersionKey) -> None:
        self.loader, self.key = loader, key
        self.signature = SIG
        self.signatures: Mapping[str, Signature] = {"serving_default": SIG}

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        gate = self.loader.gates.get(self.key)
        if gate is not None:
            await gate.wait()
        return {"y": inputs["x"]}

    async def close(self) -> None:
        await asyncio.sleep(self.loader.close_s)
        self.loader.loaded.discard(self.key)


class FakeLoader:
    """Loads take ``load_s`` and closes ``close_s`` (0: at once); ``gates`` hold inferences of
    a version."""

    def __init__(self, load_s: float = 0.0) -> None:
        self.load_s = load_s
        self.close_s = 0.0
        self.loads: list[VersionKey] = []
        self.loaded: set[VersionKey] = set()
        self.gates: dict[VersionKey, asyncio.Event] = {}

    async def load(self, request: LoadRequest) -> Servable:
        self.loads.append(request.key)
        await asyncio.sleep(self.load_s)
        self.loaded.add(request.key)
        return FakeServable(self, request.key)


def request(tmp: Path, name: str) -> LoadRequest:
    folder = tmp / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"x" * 1024)
    config = ModelConfig(name=name, base_path=tmp / name)
    return LoadRequest(VersionKey(name, 1), folder, Platform.ONNX, DeviceTarget.cpu(), None,
                       config, "sim0")  # fmt: skip


async def pager_with(
    tmp: Path, loader: FakeLoader, names: list[str], *, slots: int = 2, max_wait_ms: int = 30000,
    resident: frozenset[str] = frozenset(),
) -> tuple[Pager, dict[str, PagedReplica]]:  # fmt: skip
    """A device that holds ``slots`` versions of 10 MiB (each page-in also needs 1 KiB)."""
    store = HostStore(64 * MiB, parent=tmp)
    store.start()
    budget = slots * 10 * MiB + 4096
    pager = Pager(loader, store, {"sim0": Room(budget, budget)}, max_wait_ms=max_wait_ms)
    replicas = {}
    for name in names:
        replicas[name] = await pager.register(
            request(tmp, name), 10 * MiB, declared=True, resident=name in resident
        )
    return pager, replicas


async def call(pager: Pager, replica: PagedReplica) -> None:
    servable = await pager.acquire(replica)
    try:
        await servable.infer({"x": np.zeros(1, np.float32)})
    finally:
        pager.release(replica)


def test_sixteen_requests_for_a_paged_out_version_cause_one_page_in(tmp_path: Path) -> None:
    async def main() -> None:
        loader = FakeLoader(load_s=0.05)
        pager, r = await pager_with(tmp_path, loader, ["a", "b", "c"])
        assert pager.tier(r["a"]).value == "host"  # c and b came in after it
        await asyncio.gather(*(call(pager, r["a"]) for _ in range(16)))
        assert loader.loads.count(VersionKey("a", 1)) == 2  # registration + one page-in
        assert r["a"].page_ins == 1
        assert r["a"].misses == 16

    asyncio.run(main())


def test_a_version_with_a_request_in_flight_is_not_evicted_while_it_runs(tmp_path: Path) -> None:
    async def main() -> None:
        loader = FakeLoader()
        pager, r = await pager_with(tmp_path, loader, ["a", "b", "c"], slots=2)
        await call(pager, r["b"])
        loader.gates[VersionKey("b", 1)] = asyncio.Event()
        long = asyncio.ensure_future(call(pager, r["b"]))  # b runs and runs
        await asyncio.sleep(0.01)
        await call(pager, r["a"])  # needs room: c goes, not b (b is colder but in flight)
        assert VersionKey("b", 1) in loader.loaded
        assert VersionKey("c", 1) not in loader.loaded
        waiting = asyncio.ensure_future(call(pager, r["c"]))  # a or b must go: a does
        await asyncio.sleep(0.05)
        assert VersionKey("b", 1) in loader.loaded
        loader.gates[VersionKey("b", 1)].set()
        await asyncio.wait_for(asyncio.gather(long, waiting), 5)

    asyncio.run(main())


def test_a_victim_pinned_while_an_earlier_victim_closes_is_not_evicted(tmp_path: Path) -> None:
    """A page-in that needs two victims closes them one by one (each close awaits the worker);
    a request for the second that arrives meanwhile pins it, and it stays while it runs."""

    async def main() -> None:
        loader = FakeLoader()
        pager, r = await pager_with(tmp_path, loader, ["a", "b"], slots=2)
        big = await pager.register(request(tmp_path, "big"), 20 * MiB, declared=True,
                                   resident=False)  # fmt: skip
        await call(pager, r["a"])  # a and b on the device, big paged out; a the colder
        await call(pager, r["b"])
        assert pager.tier(big).value != "device"
        evictions = r["b"].evictions
        loader.close_s = 0.2
        incoming = asyncio.ensure_future(call(pager, big))  # a and b must both go
        await asyncio.sleep(0.05)  # a is closing
        loader.gates[VersionKey("b", 1)] = asyncio.Event()
        long = asyncio.ensure_future(call(pager, r["b"]))  # a hit: b runs and runs
        await asyncio.sleep(0.5)
        assert r["b"].in_flight == 1
        assert pager.tier(r["b"]).value == "device"
        assert r["b"].evictions == evictions
        loader.gates[VersionKey("b", 1)].set()
        await asyncio.wait_for(asyncio.gather(long, incoming), 5)
        assert pager.tier(big).value == "device"  # then b could go
        assert r["b"].evictions == evictions + 1

    asyncio.run(main())


def test_a_resident_version_is_never_evicted(tmp_path: Path) -> None:
    async def main() -> None:
        loader = FakeLoader()
        names = ["r", "a", "b", "c", "d"]
        pager, rep = await pager_with(tmp_path, loader, names, resident=frozenset({"r"}))
        for _ in range(3):
            for name in ["a", "b", "c", "d"]:
                await call(pager, rep[name])
        assert rep["r"].evictions == 0
        assert pager.tier(rep["r"]).value == "device"
        assert sum(rep[n].evictions for n in "abcd") >= 8

    asyncio.run(main())


def test_when_every_other_version_is_pinned_a_wait_past_max_wait_is_a_503(tmp_path: Path) -> None:
    async def main() -> None:
        loader = FakeLoader()
        pager, r = await pager_with(tmp_path, loader, ["a", "b", "c"], slots=1, max_wait_ms=50)
        loader.gates[VersionKey("c", 1)] = asyncio.Event()
        busy = asyncio.ensure_future(call(pager, r["c"]))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match=r"did not page in .* within max_wait_ms=50"):
            await call(pager, r["a"])
        loader.gates[VersionKey("c", 1)].set()
        await busy
        await call(pager, r["a"])  # the page-in went on: served now
        assert r["a"].timeouts == 1

    asyncio.run(main())


def test_the_coldest_versions_leave_first_by_bytes() -> None:
    now = 100.0
    hot, warm, cold = Usage(), Usage(), Usage()
    for t in range(90, 100):
        hot.touch(float(t))  # every second
    warm.touch(99.5)  # once, just now
    cold.touch(50.0)
    cands = [
        Candidate(VersionKey("hot", 1), 10, hot.score(now), hot.last_use),
        Candidate(VersionKey("warm", 1), 10, warm.score(now), warm.last_use),
        Candidate(VersionKey("cold", 1), 10, cold.score(now), cold.last_use),
        Candidate(VersionKey("res", 1), 10, 0.0, 0.0, resident=True),
    ]
    assert choose_victims(cands, free_bytes=0, need_bytes=10) == [VersionKey("cold", 1)]
    assert choose_victims(cands, free_bytes=0, need_bytes=15) == [
        VersionKey("cold", 1),
        VersionKey("warm", 1),
    ]
    assert choose_victims(cands, free_bytes=0, need_bytes=40) is None  # never the resident
    assert choose_victims(cands, free_bytes=20, need_bytes=15) == []
