"""The host tier's store: stable links that point at the copy in host memory while there is
one and at the original folder otherwise; copies bounded by bytes."""

from __future__ import annotations

from pathlib import Path

from modelyard.ids import VersionKey
from modelyard.lifecycle.paging.store import HostStore, folder_bytes


def version(tmp: Path, name: str, size: int) -> Path:
    folder = tmp / "models" / name / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(name.encode() * size)
    return folder


def test_a_link_reads_the_copy_while_there_is_one_and_the_original_after(tmp_path: Path) -> None:
    store = HostStore(1000, parent=tmp_path)
    store.start()
    original = version(tmp_path, "a", 100)
    key = VersionKey("a", 1)
    link = store.link(key, original)
    assert (link / "model.onnx").read_bytes() == b"a" * 100
    assert store.copy_in(key, folder_bytes(original))
    assert store.holds(key)
    assert store.used_bytes == 100
    (original / "model.onnx").unlink()  # the original is gone: the copy still serves
    assert (link / "model.onnx").read_bytes() == b"a" * 100
    assert store.drop(key) == 100
    assert not (link / "model.onnx").exists()  # back to the (now empty) original
    store.close()
    assert not store.root.exists()


def test_copies_stay_within_the_capacity(tmp_path: Path) -> None:
    store = HostStore(250, parent=tmp_path)
    store.start()
    keys = []
    for name in "abc":
        original = version(tmp_path, name, 100)
        keys.append(VersionKey(name, 1))
        store.link(keys[-1], original)
    assert store.copy_in(keys[0], 100)
    assert store.copy_in(keys[1], 100)
    assert not store.copy_in(keys[2], 100)  # 300 > 250: stays on disk
    assert store.held() == keys[:2]
    store.drop(keys[0])
    assert store.copy_in(keys[2], 100)
    store.forget(keys[2])
    assert not store.holds(keys[2])
    store.close()


def test_a_store_left_by_a_server_that_was_killed_is_removed_at_the_next_start(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(ended.stdout)
    left = tmp_path / f"modelyard-{dead}-abc"
    (left / "links").mkdir(parents=True)
    (left / "data" / "m@1.1").mkdir(parents=True)
    mine = HostStore(100, parent=tmp_path)
    mine.start()  # a live store of this process: kept by the next one
    HostStore(100, parent=tmp_path).start()
    assert not left.exists()
    assert mine.root.exists()
