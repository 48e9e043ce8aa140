"""`modelyard plan` on the seed scenario scaled to 20 x 4 GiB on 4 x 15 GiB, with and without
paging (sizes from `memory:`: nothing is built or loaded)."""

from __future__ import annotations

import json
from pathlib import Path

from modelyard.testing.cli import modelyard_plan

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_without_paging_it_is_refused_with_a_hint_to_page(tmp_path: Path) -> None:
    result = modelyard_plan(str(EXAMPLES / "seed-20x4GiB.yaml"), cache_dir=tmp_path)
    assert result.returncode == 2
    assert "23.0 GiB short" in result.stderr
    assert "Or turn on paging" in result.stderr
    assert "paging: {host_memory: <size>}" in result.stderr


def test_with_paging_every_model_has_a_home_and_the_residents_are_shown(tmp_path: Path) -> None:
    path = EXAMPLES / "seed-20x4GiB-paging.yaml"
    result = modelyard_plan(str(path), cache_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "with paging" in out
    assert "fits" in out
    assert "resident (never paged out): 2 version(s): m1:0, m2:0" in out
    assert out.count("home, on device at start") == 10
    assert out.count("home, paged") == 8
    assert "host memory: 32.0 GiB of 64.0 GiB at start (8 version(s))" in out
    doc = json.loads(modelyard_plan(str(path), "--json", cache_dir=tmp_path).stdout)
    assert doc["feasible"] is True
    assert doc["paging"] is True
    homes = [h["model"] for d in doc["devices"] for h in d["homes"]]
    assert sorted(homes) == sorted(f"m{i}" for i in range(3, 21))
    assert [d["resident_bytes"] for d in doc["devices"]].count(4 * 2**30) == 2
    assert doc["disk"]["versions"] == []
