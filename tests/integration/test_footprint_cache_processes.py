"""The measured-footprint cache shared by several server processes recording at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from modelyard.planner.footprints import FootprintCache

MiB = 2**20

# One recording server, as a real process: records each folder given on the command line.
_RECORDER = """
import sys
from pathlib import Path
from modelyard.config.schema import DeviceKind
from modelyard.planner.footprints import FootprintCache

cache = FootprintCache(Path(sys.argv[1]))
for folder in sys.argv[2:]:
    cache.record_measured(Path(folder), int(Path(folder).name) * 2**20, DeviceKind.CPU)
"""


def test_servers_recording_at_once_keep_every_record(tmp_path: Path) -> None:
    """Four processes record 30 versions each into one cache file at the same time."""
    workers, each = 4, 30
    folders: list[list[Path]] = []
    for w in range(workers):
        mine = []
        for i in range(each):
            folder = tmp_path / f"m{w}" / str(w * 1000 + i + 1)
            folder.mkdir(parents=True)
            (folder / "model.onnx").write_bytes(b"\0" * (i + 1))
            mine.append(folder)
        folders.append(mine)
    cache_path = tmp_path / "cache" / "footprints.json"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RECORDER, str(cache_path), *map(str, folders[w])],
            stderr=subprocess.PIPE,
        )
        for w in range(workers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    cache = FootprintCache(cache_path)
    found = {folder: cache.lookup(folder) for mine in folders for folder in mine}
    missing = [folder.relative_to(tmp_path) for folder, v in found.items() if v is None]
    assert not missing, f"{len(missing)} of {workers * each} records lost: {missing[:5]}"
    assert all(v == int(folder.name) * MiB for folder, v in found.items())
