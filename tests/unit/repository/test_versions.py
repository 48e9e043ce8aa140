from pathlib import Path

import pytest

from modelyard.config import VersionPolicy
from modelyard.errors import ConfigError
from modelyard.repository import (
    SettleTracker,
    aspired_snapshot,
    aspired_versions,
    check_labels,
    fingerprint,
    scan_versions,
    version_dir,
)


def test_scan_takes_numeric_folders_only(tmp_path: Path) -> None:
    for name in ["1", "2", "10", "0", "tmp", "3.bak"]:
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a version folder")
    assert scan_versions(tmp_path) == [1, 2, 10]


def test_scan_missing_base_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        scan_versions(tmp_path / "nope")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy(), [10]),
        (VersionPolicy(latest=2), [3, 10]),
        (VersionPolicy(all=True), [1, 3, 10]),
        (VersionPolicy(specific=(1, 10, 99)), [1, 10]),
    ],
)
def test_policies(policy: VersionPolicy, expected: list[int]) -> None:
    assert aspired_versions([10, 1, 3], policy) == expected


def test_label_must_point_at_a_served_version() -> None:
    check_labels("m", {"stable": 1}, [1, 2])
    with pytest.raises(ConfigError, match="label 'canary' points at version 3"):
        check_labels("m", {"canary": 3}, [1, 2])


def test_a_zero_padded_folder_is_the_version_it_spells_as_tf_serving_reads_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "007").mkdir()
    (tmp_path / "2").mkdir()
    assert scan_versions(tmp_path) == [2, 7]
    assert version_dir(tmp_path, 7) == tmp_path / "007"
    assert version_dir(tmp_path, 2) == tmp_path / "2"


def test_two_folders_naming_one_version_serve_the_canonical_one(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "007").mkdir()
    assert scan_versions(tmp_path) == [7]
    assert version_dir(tmp_path, 7) == tmp_path / "7"


def test_names_that_are_not_int64_versions_are_ignored(tmp_path: Path) -> None:
    for name in ["00", str(2**63), "٣", "²", "+4", "-5", " 6"]:
        (tmp_path / name).mkdir()
    (tmp_path / str(2**63 - 1)).mkdir()
    assert scan_versions(tmp_path) == [2**63 - 1]


def test_the_snapshot_changes_when_a_file_of_an_aspired_version_changes(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    artifact = tmp_path / "m" / "1" / "model.onnx"
    artifact.write_bytes(b"half")
    models = [("m", tmp_path / "m", VersionPolicy())]
    before = aspired_snapshot(models)
    assert [v for v, _ in before["m"]] == [1]
    with artifact.open("ab") as f:
        f.write(b" and the rest")
    assert aspired_snapshot(models) != before
    assert aspired_snapshot([("gone", tmp_path / "nope", VersionPolicy())]) == {"gone": ()}


def test_a_folder_is_settled_once_unchanged_for_the_settle_time(tmp_path: Path) -> None:
    now = [100.0]
    tracker = SettleTracker(1.0, clock=lambda: now[0])
    (tmp_path / "model.onnx").write_bytes(b"half")
    print_1 = fingerprint(tmp_path)
    assert not tracker.settled(tmp_path, print_1)  # first look
    now[0] += 0.5
    assert not tracker.settled(tmp_path, print_1)
    (tmp_path / "model.onnx").write_bytes(b"half and the rest")
    print_2 = fingerprint(tmp_path)
    assert print_2 != print_1
    now[0] += 0.7
    assert not tracker.settled(tmp_path, print_2)  # changed: the clock starts again
    now[0] += 0.9
    assert not tracker.settled(tmp_path, print_2)
    now[0] += 0.2
    assert tracker.settled(tmp_path, print_2)
    assert fingerprint(tmp_path / "missing") == ()
