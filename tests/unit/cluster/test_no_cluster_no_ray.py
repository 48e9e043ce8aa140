"""Without a cluster nothing imports ray; asking for one without the extra says what to install.

Each check runs in a fresh interpreter, since this test process may have imported ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from modelyard.cli.exits import ExitCode

CONFIG = """\
devices:
  - {name: sim0, kind: cpu, memory: 1GiB}
models:
  - {name: m, base_path: ./m, memory: 10MiB}
"""


def python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd,
        check=False,
    )  # fmt: skip


def test_plan_and_server_without_a_cluster_never_import_ray(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "m" / "1").mkdir(parents=True)
    result = python(
        "import sys\n"
        "from modelyard.cli.main import main\n"
        "from pathlib import Path\n"
        "from modelyard.config import load_config\n"
        "from modelyard.server.runtime import Server\n"
        "assert main(['plan', 'c.yaml']) == 0\n"
        "server = Server.from_config(load_config(Path('c.yaml')))\n"
        "assert server.cluster is None\n"
        "print('RAY', 'ray' in sys.modules)\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "sim0 (cpu)" in result.stdout
    assert "RAY False" in result.stdout


def test_a_cluster_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "m" / "1").mkdir(parents=True)  # serve checks the folders before connecting
    result = python(
        "import sys\n"
        "sys.modules['ray'] = None  # as if the extra were not installed\n"
        "from modelyard.cli.main import main\n"
        "sys.exit(main(['plan', 'c.yaml', '--ray-address', '127.0.0.1:1']))\n",
        tmp_path,
    )
    assert result.returncode == ExitCode.BAD_INPUT  # docs/cli.md: a config that cannot be served
    assert "Ray is not installed" in result.stderr
    assert "pip install 'modelyard[ray]'" in result.stderr
    served = python(
        "import sys\n"
        "sys.modules['ray'] = None\n"
        "from modelyard.cli.main import main\n"
        "sys.exit(main(['serve', 'c.yaml', '--ray-address', 'auto', '--port', '0',\n"
        "               '--rest_api_port', '0', '--state-dir', 'state']))\n",
        tmp_path,
    )
    assert served.returncode == 2
    assert "pip install 'modelyard[ray]'" in served.stderr
