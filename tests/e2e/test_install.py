"""The README's install line works: a new venv, ``pip install '.[tensorflow]'`` from the checkout
(not editable), then ``modelyard serve --model_config_file=...`` on a SavedModel, from a folder
outside the checkout and without PYTHONPATH, answers TF Serving's REST predict correctly.

Marked ``install`` (run it alone with ``pytest -m install tests/e2e/test_install.py``). Two
modes:

- default (``make test``): the new venv sees the build venv's third-party packages through a
  folder of links (every package but modelyard), so the README's pip line builds and installs
  modelyard itself and resolves its extras against packages already there, without unpacking
  tensorflow-cpu again (minutes on a 2-core box). This proves the package: its build from a
  checkout, its data files (protos, the live page), its entry point, and that nothing imports
  from the source tree. The links are hard links, so the build venv and the temporary folder
  must be on one file system (else the test skips).
- ``MODELYARD_INSTALL_TEST=clean``: a plain new venv, every dependency installed by pip from
  the configured indexes, exactly as a user's first install (4-5 minutes here).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import venv
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

pytestmark = pytest.mark.install


def readme_pip_line() -> list[str]:
    """The README's install line for the TF Serving drop-in, as argv after ``pip``."""
    found = re.search(r"^pip install '\.\[tensorflow\]'$", README.read_text(), re.MULTILINE)
    assert found, "README.md no longer says: pip install '.[tensorflow]'"
    return shlex.split(found.group(0))[1:]


def _needed(extra: str) -> list[metadata.Distribution]:
    """The build venv's distributions that ``modelyard[extra]`` needs, transitively."""
    todo = [(req, {extra}) for req in metadata.requires("modelyard") or []]
    found: dict[str, metadata.Distribution] = {}
    while todo:
        text, extras = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        key = canonicalize_name(req.name)
        if key == "modelyard":  # `all = ["modelyard[torch,...]"]`: its own extras
            todo.extend((r, set(req.extras)) for r in metadata.requires("modelyard") or [])
            continue
        if key in found:
            continue
        dist = metadata.distribution(req.name)
        found[key] = dist
        todo.extend((r, set(req.extras) or {""}) for r in dist.requires or [])
    return list(found.values())


def _link_build_packages(site: Path, extra: str) -> None:
    """Make the build venv's packages that ``modelyard[extra]`` needs importable in the new
    venv: their files as hard links (no data copied; were pip to uninstall one, only the links
    would go, never the build venv's files), on the new venv's path through a ``.pth`` file."""
    farm = site.parent / "build-venv-packages"
    for dist in _needed(extra):
        base = Path(str(dist.locate_file("")))
        for file in dist.files or []:
            source = base / file
            target = (farm / file).resolve()
            if not target.is_relative_to(farm) or not source.is_file():
                continue  # scripts in ../../bin, and files RECORD lists but pip did not keep
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
    (site / "zz-build-venv-packages.pth").write_text(f"{farm}\n")


def test_readme_install_line_serves_a_savedmodel(tmp_path: Path) -> None:
    if not any(
        (Path(p) / "tensorflow").is_dir() for p in sys.path if p
    ):  # no import: TF in the test process breaks the CP-SAT solver (see test_tensorflow_child)
        pytest.skip("needs tensorflow-cpu in the build venv (make setup installs it)")
    clean = os.environ.get("MODELYARD_INSTALL_TEST") == "clean"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    if not clean:
        if os.stat(sys.prefix).st_dev != os.stat(tmp_path).st_dev:
            pytest.skip("the build venv and the temporary folder are on two file systems")
        site = Path(
            subprocess.check_output(
                [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                text=True,
            ).strip()
        )
        _link_build_packages(site, "tensorflow")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MODELYARD_CACHE_DIR"] = str(tmp_path / "cache")

    started = time.monotonic()
    pip = [str(python), "-m", "pip", *readme_pip_line(), "--quiet", "--disable-pip-version-check"]
    installed = subprocess.run(
        pip, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    install_s = time.monotonic() - started
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    print(f"pip install '.[tensorflow]' ({'clean' if clean else 'linked'}): {install_s:.1f} s")

    # Outside the checkout, nothing can come from the source tree.
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.check_output(
        [python, "-c", "import modelyard; print(modelyard.__file__)"], cwd=work, env=env, text=True
    )
    assert str(env_dir) in where
    assert str(ROOT / "src") not in where
    subprocess.run(
        [python, "-c", "from pathlib import Path; from modelyard.testing.tf_models import "
         "export_half_plus_two as e; e(Path('models/half_plus_two'))"],
        cwd=work, env=env, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    (work / "models.config").write_text(
        'model_config_list {\n  config {\n    name: "half_plus_two"\n'
        '    base_path: "models/half_plus_two"\n    model_platform: "tensorflow"\n  }\n}\n'
    )
    ports = work / "ports.json"
    serve = subprocess.Popen(
        [env_dir / "bin" / "modelyard", "serve", "--model_config_file=models.config",
         "--port=0", "--rest_api_port=0", "--ports-file", str(ports)],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not ports.exists():
            assert serve.poll() is None, serve.communicate()
            assert time.monotonic() < deadline, "modelyard serve did not start in 180 s"
            time.sleep(0.2)
        rest = f"http://127.0.0.1:{json.loads(ports.read_text())['rest']}"
        answer = httpx.post(
            f"{rest}/v1/models/half_plus_two:predict",
            json={"instances": [[1.0, 2.0, 5.0]]},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [[2.5, 3.0, 4.5]]}
    finally:
        serve.terminate()
        serve.communicate(timeout=60)
    print(f"install to answer: {time.monotonic() - started:.1f} s")
