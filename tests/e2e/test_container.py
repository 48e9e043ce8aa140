"""The Dockerfile, exercised without a container engine (none runs on the build machines; see
docs/container.md for what was and was not run).

- Its shape: multi-stage, a non-root user in the final stage, TF Serving's ports exposed, a
  HEALTHCHECK on ``/v2/health/ready``, ``--host 0.0.0.0`` given explicitly by the ENTRYPOINT,
  and every COPY source present in the checkout and let through by ``.dockerignore``.
- Its run: the ENTRYPOINT with the CMD that docs/container.md's ``docker run -v
  ...:/models`` gives, in a new network namespace (``unshare --net``: its own loopback, so the
  fixed ports 8500/8501 and 0.0.0.0 touch nothing outside), then the HEALTHCHECK's own command
  until it passes, then the docs' curl, whose answer must be the model's.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modelyard.testing.models import write_onnx_linear

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    stage: int


def parse(text: str) -> list[Instruction]:
    """The Dockerfile's instructions (continuations joined, comments dropped), with the index
    of the stage each belongs to (-1 before the first FROM)."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    found: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, value = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        found.append(Instruction(keyword, value.strip(), stage))
    return found


def exec_form(value: str) -> list[str]:
    """An exec-form argument list (``["a", "b"]``)."""
    parsed = json.loads(value)
    assert isinstance(parsed, list), value
    return [str(p) for p in parsed]


def test_the_dockerfile_is_multi_stage_non_root_and_checks_readiness() -> None:
    steps = parse(DOCKERFILE.read_text())
    final = max(s.stage for s in steps)
    assert final >= 1, "multi-stage: a build stage and a runtime stage"
    last = [s for s in steps if s.stage == final]
    users = [s.value for s in last if s.keyword == "USER"]
    assert users, "the runtime stage sets a USER"
    assert users[-1] not in ("root", "0")
    exposed = {p for s in last if s.keyword == "EXPOSE" for p in s.value.split()}
    assert {"8500", "8501"} <= exposed
    (health,) = [s.value for s in last if s.keyword == "HEALTHCHECK"]
    assert "/v2/health/ready" in health
    entry = exec_form(next(s.value for s in last if s.keyword == "ENTRYPOINT"))
    assert entry[:2] == ["modelyard", "serve"]
    assert entry[entry.index("--host") + 1] == "0.0.0.0"
    assert entry[entry.index("--port") + 1] == "8500"
    assert entry[entry.index("--rest_api_port") + 1] == "8501"


def test_every_copy_source_is_in_the_checkout_and_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:  # the last matching line wins, as in Docker
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                verdict = not negate
        return verdict

    copies = [s.value.split() for s in parse(DOCKERFILE.read_text()) if s.keyword == "COPY"]
    sources = [src for c in copies if not c[0].startswith("--from") for src in c[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not ignored(src), f"{src} is excluded by .dockerignore"
    assert ignored(".venv")
    assert ignored(".git")


def _runtime() -> tuple[list[str], list[str]]:
    """The final stage's ENTRYPOINT and HEALTHCHECK command."""
    steps = parse(DOCKERFILE.read_text())
    last = [s for s in steps if s.stage == max(s.stage for s in steps)]
    entry = exec_form(next(s.value for s in last if s.keyword == "ENTRYPOINT"))
    health = next(s.value for s in last if s.keyword == "HEALTHCHECK")
    return entry, exec_form(health[health.index("CMD") + 3 :].strip())


def _netns_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    done = subprocess.run(
        ["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, check=False
    )
    return done.returncode == 0


@pytest.mark.skipif(not _netns_works(), reason="needs unshare --net (root) and ip")
def test_the_entrypoint_serves_models_and_passes_its_healthcheck(tmp_path: Path) -> None:
    models = tmp_path / "models"  # docker run -v "$PWD/models:/models"
    built = write_onnx_linear(models / "linear" / "1", seed=1)
    (models / "models.config").write_text(
        'model_config_list {\n  config { name: "linear" base_path: "/models/linear" '
        'model_platform: "onnx" }\n}\n'
    )
    # The container sees the mount at /models; here the folder is where the mount would be.
    config = (models / "models.config").read_text().replace("/models/", f"{models}/")
    (models / "models.config").write_text(config)
    entry, health = _runtime()
    # docs/container.md's run: the image's ENTRYPOINT, then the CMD docker run appends.
    serve = [*entry, f"--model_config_file={models}/models.config"]
    curl = (
        "curl -sf http://127.0.0.1:8501/v1/models/linear:predict "
        """-d '{"instances": [[1.0, 2.0, 3.0, 4.0]]}'"""
    )
    script = f"""
set -u
ip link set lo up
{shlex.join(serve)} > {tmp_path}/serve.log 2>&1 &
server=$!
healthy=no
for i in $(seq 1 120); do
  if {shlex.join(health)} 2>/dev/null; then healthy=yes; break; fi
  kill -0 $server 2>/dev/null || break
  sleep 1
done
echo "healthy=$healthy"
[ $healthy = yes ] && {curl}
echo
kill -TERM $server; wait $server; echo "exit=$?"
"""
    # As the image's ENV PATH=/opt/modelyard/bin:$PATH: this venv's modelyard and python.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MODELYARD_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        ["unshare", "--net", "bash", "-c", script],
        cwd=models,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    log = (tmp_path / "serve.log").read_text()
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "healthy=yes", done.stdout + done.stderr + log
    expected = built.reference({"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)})["y"]
    answer = json.loads(lines[1])
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-5)
    assert lines[-1] == "exit=0", log
    assert "Traceback" not in log
