from pathlib import Path

import pytest

from modelyard.config import VersionPolicy
from modelyard.errors import ConfigError
from modelyard.repository import aspired_versions, check_labels, scan_versions


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
