"""`modelyard plan` as a user runs it: a real process, real config files, exit codes, output."""

from __future__ import annotations

import json
from pathlib import Path

from modelyard.testing.cli import modelyard_plan

EXAMPLES = Path(__file__).parents[2] / "examples"
GiB = 2**30


def test_seed_example_fits_three_per_gpu(tmp_path: Path) -> None:
    result = modelyard_plan(str(EXAMPLES / "seed-12x4GiB.yaml"), cache_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    for gpu in ("gpu0", "gpu1", "gpu2", "gpu3"):
        assert f"{gpu} (cuda:{gpu[-1]}" in result.stdout
    assert result.stdout.count("12.0 GiB of 15.0 GiB used (80.0%)") == 4


def test_seed_example_as_json(tmp_path: Path) -> None:
    result = modelyard_plan(str(EXAMPLES / "seed-12x4GiB.yaml"), "--json", cache_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["feasible"] is True
    assert [len(d["models"]) for d in plan["devices"]] == [3, 3, 3, 3]
    assert all(d["used_bytes"] == 12 * GiB for d in plan["devices"])


def test_a_set_that_does_not_fit_exits_2_with_the_explanation(tmp_path: Path) -> None:
    models = "\n".join(
        f"  - {{name: m{i}, base_path: ./m{i}, memory: 4GiB, devices: [gpu0]}}" for i in range(12)
    )
    config = tmp_path / "pinned.yaml"
    config.write_text(
        "devices:\n"
        + "".join(
            f"  - {{name: gpu{i}, kind: cuda, index: {i}, memory: 15GiB}}\n" for i in range(4)
        )
        + "models:\n"
        + models
        + "\n"
    )
    result = modelyard_plan(str(config), cache_dir=tmp_path)
    assert result.returncode == 2
    assert "DOES NOT FIT" in result.stdout
    assert "the only device they may use, gpu0, has 2.2 GiB free" in result.stderr
    assert "To fit:" in result.stderr

    as_json = modelyard_plan(str(config), "--json", cache_dir=tmp_path)
    assert as_json.returncode == 2
    plan = json.loads(as_json.stdout)
    assert plan["feasible"] is False
    assert len(plan["not_placed"]) == 9
    assert "gpu0" in plan["explanation"]


def test_a_model_without_files_or_memory_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n  - {name: m, base_path: ./nowhere}\n")
    result = modelyard_plan(str(config), cache_dir=tmp_path)
    assert result.returncode == 2  # a bad config, as serve says it
    assert f"{config}: model 'm': base_path" in result.stderr
    assert "does not exist" in result.stderr
