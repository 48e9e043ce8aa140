"""The mistakes a new user makes in the first hour, run through the real CLI as a subprocess.

Each answers with a message that names the file (and line), or the flag, says what was wrong
and what to do, exits with the documented status (docs/cli.md: 0 ok, 1 a run-time failure,
2 bad input, 3 plan's "some versions cannot be read"), and never prints a traceback. Then
``plan`` and ``serve`` are held to agree on a table of bad configs (TF Serving's models.config
and ``--overlay`` among them): the same exit status and the same message, since ``plan`` is
``serve``'s checks without loading.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelyard.testing.models import write_corrupt, write_onnx_linear

SIM = "devices:\n  - {name: sim0, kind: cpu, memory: 1GiB}\n"
"""An explicit CPU device: no GPU probe (which imports torch), so each run takes about 1 s."""
OVERLAY_SIM = "devices: [{name: sim0, kind: cpu, memory: 1GiB}]\n"
TIMEOUT_S = 90


def modelyard(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m modelyard ARGS`` in ``cwd`` as a user would; (status, stdout, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "MODELYARD_CACHE_DIR": str(cwd / "cache"), **(env or {})},
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def _models(root: Path) -> None:
    """``m/1`` and ``m/2`` (ONNX), so ``latest: 1`` serves version 2 only."""
    write_onnx_linear(root / "m" / "1", seed=1)
    write_onnx_linear(root / "m" / "2", seed=2)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return path.name


Hold = Callable[[], int]
"""Returns a 127.0.0.1 port that a socket of the test listens on until the test ends."""


@dataclasses.dataclass(frozen=True)
class Mistake:
    """``setup(tmp, hold)`` writes files and returns the argv; the answer must exit ``status``,
    say every one of ``says`` on stderr, and none of ``never``."""

    name: str
    setup: Callable[[Path, Hold], list[str]]
    status: int
    says: tuple[str, ...]
    never: tuple[str, ...] = ()


def _label_not_served(tmp: Path, hold: Hold) -> list[str]:
    _models(tmp)
    return ["plan", _write(tmp / "label.yaml", SIM + LABEL_MODEL)]


LABEL_MODEL = "models:\n  - {name: m, base_path: ./m, version_labels: {stable: 1}}\n"


def _binary_config(tmp: Path, hold: Hold) -> list[str]:
    (tmp / "model.bin").write_bytes(bytes(range(256)) * 4)
    return ["plan", "model.bin"]


def _corrupt_onnx(tmp: Path, hold: Hold) -> list[str]:
    write_corrupt(tmp / "bad" / "1")
    return ["plan", _write(tmp / "c.yaml", SIM + "models:\n  - {name: bad, base_path: ./bad}\n")]


def _wrong_platform(tmp: Path, hold: Hold) -> list[str]:
    write_onnx_linear(tmp / "p" / "1", seed=1)
    (tmp / "p" / "1" / "model.onnx").rename(tmp / "p" / "1" / "model.pt2")
    return [
        "plan",
        _write(tmp / "p.yaml", SIM + "models:\n  - {name: p, base_path: ./p, platform: onnx}\n"),
    ]


def _base_path_is_a_file(tmp: Path, hold: Hold) -> list[str]:
    _models(tmp)
    return [
        "serve",
        _write(tmp / "f.yaml", SIM + "models:\n  - {name: m, base_path: ./m/1/model.onnx}\n"),
    ]


def _tf_flags_missing_path(tmp: Path, hold: Hold) -> list[str]:
    return ["--model_name=foo", f"--model_base_path={tmp / 'nonexistent'}"]


def _misnamed_versions(tmp: Path, hold: Hold) -> list[str]:
    write_onnx_linear(tmp / "vv" / "v1", seed=1)
    write_onnx_linear(tmp / "vv" / "latest", seed=2)
    return ["plan", _write(tmp / "vv.yaml", SIM + "models:\n  - {name: vv, base_path: ./vv}\n")]


def _bad_pin(tmp: Path, hold: Hold) -> list[str]:
    text = SIM + "models:\n  - name: m\n    base_path: ./m\n    memory: 1MiB\n    devices: [gpu1]\n"
    return ["plan", _write(tmp / "pin.yaml", text)]


def _yaml_syntax(tmp: Path, hold: Hold) -> list[str]:
    return ["plan", _write(tmp / "syn.yaml", "models:\n  - {name: m, base_path: ./m\n  - x: [\n")]


def _devices_typo(tmp: Path, hold: Hold) -> list[str]:
    text = "devices:\n  - {name: gpu0, kind: cuda, memroy: 15GiB}\nmodels: []\n"
    return ["plan", _write(tmp / "dev.yaml", text)]


def _rest_port_in_use(tmp: Path, hold: Hold) -> list[str]:
    _models(tmp)
    config = _write(tmp / "ok.yaml", SIM + "models:\n  - {name: m, base_path: ./m}\n")
    return ["serve", config, "--port", "0", "--rest_api_port", str(hold())]


def _grpc_port_in_use(tmp: Path, hold: Hold) -> list[str]:
    _models(tmp)
    config = _write(tmp / "ok.yaml", SIM + "models:\n  - {name: m, base_path: ./m}\n")
    return ["serve", config, "--port", str(hold()), "--rest_api_port", "0"]


def _models_config_syntax(tmp: Path, hold: Hold) -> list[str]:
    text = 'model_config_list {\n  config { name: "m" base_path: "/models/m"\n}\n'
    return ["plan", _write(tmp / "models.config", text)]


def _tf_config_missing_path(tmp: Path, hold: Hold) -> list[str]:
    text = 'model_config_list {\n  config { name: "m" base_path: "/nonexistent/m" }\n}\n'
    return ["--model_config_file=" + _write(tmp / "models.config", text)]


MISTAKES = [
    Mistake(
        "log level",
        lambda tmp, hold: ["serve", "--log-level", "chatty"],
        2,
        ("usage: modelyard serve", "--log-level", "'chatty'", "DEBUG, INFO, WARNING, ERROR"),
    ),
    Mistake("binary config", _binary_config, 2, ("model.bin is not a text file",)),
    Mistake(
        "corrupt onnx, no memory:",
        _corrupt_onnx,
        3,
        ("bad/1/model.onnx is not a valid ONNX model", "FAILED when served"),
    ),
    Mistake(
        "label at a version not served",
        _label_not_served,
        2,
        ("label.yaml: model 'm': label 'stable' points at version 1", "served versions: [2]"),
    ),
    Mistake(
        "platform: onnx on a .pt2 folder",
        _wrong_platform,
        3,
        ("holds model.pt2 (torch_export); set platform: torch_export or auto",),
    ),
    Mistake(
        "base_path is a file",
        _base_path_is_a_file,
        2,
        ("f.yaml: model 'm': base_path", "is a file, not a folder", "base_path is m"),
        ("does not exist",),
    ),
    Mistake(
        "TF Serving flags, no such folder",
        _tf_flags_missing_path,
        2,
        ("--model_base_path", "nonexistent does not exist"),
        ("memory",),
    ),
    Mistake(
        "version folders v1/ and latest/",
        _misnamed_versions,
        0,
        ("latest/, v1/ under vv hold a model but are not versions", "rename them"),
    ),
    Mistake(
        "pin to an undeclared device",
        _bad_pin,
        2,
        ("pin.yaml:7: models.0.devices.0: model 'm' pins device 'gpu1'", "declared devices: sim0"),
    ),
    Mistake("YAML syntax", _yaml_syntax, 2, ("syn.yaml:3:6: not valid YAML",), ("<unicode",)),
    Mistake(
        "typo under devices:",
        _devices_typo,
        2,
        ("dev.yaml:2: unknown key 'memroy'", "allowed keys: index, kind, memory, name"),
        ("Input should be 'auto'",),
    ),
    Mistake(
        "REST port in use",
        _rest_port_in_use,
        1,
        ("for REST: Address already in use", "--rest_api_port"),
    ),
    Mistake(
        "gRPC port in use", _grpc_port_in_use, 1, ("for gRPC: Address already in use", "--port")
    ),
    Mistake(
        "serve --rest-port",
        lambda tmp, hold: ["serve", "--rest-port", "9000"],
        2,
        ("usage: modelyard serve", "unrecognized arguments: --rest-port", "--rest_api_port"),
    ),
    Mistake(
        "port out of range",
        lambda tmp, hold: ["serve", "--port", "99999"],
        2,
        ("argument --port", "0 (any free one) to 65535, got 99999"),
    ),
    Mistake(
        "plan with nothing to plan",
        lambda tmp, hold: ["plan"],
        2,
        ("give a CONFIG", "--model_config_file"),
    ),
    Mistake("models.config syntax", _models_config_syntax, 2, ("models.config:3:1:",)),
    Mistake(
        "models.config base_path missing",
        _tf_config_missing_path,
        2,
        ("models.config: model 'm': base_path /nonexistent/m does not exist",),
        ("memory",),
    ),
    Mistake(
        "config is a folder",
        lambda tmp, hold: ["plan", "."],
        2,
        ("config . is a folder; expected a file",),
    ),
    Mistake(
        "batching file without --enable_batching",
        lambda tmp, hold: ["serve", "--batching_parameters_file", "b.txt"],
        2,
        ("--batching_parameters_file needs --enable_batching",),
    ),
]


@pytest.fixture
def hold() -> Iterator[Hold]:
    held: list[socket.socket] = []

    def listen() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        held.append(sock)
        return int(sock.getsockname()[1])

    yield listen
    for sock in held:
        sock.close()


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_a_mistake_gets_a_message_not_a_traceback(
    mistake: Mistake, tmp_path: Path, hold: Hold
) -> None:
    argv = mistake.setup(tmp_path, hold)
    status, out, err = modelyard(*argv, cwd=tmp_path)
    assert "Traceback" not in out + err, err
    assert status == mistake.status, err
    for text in mistake.says:
        assert text in err, f"{text!r} not in:\n{err}"
    for text in mistake.never:
        assert text not in err, f"{text!r} in:\n{err}"


def test_the_table_holds_the_issues_cases() -> None:
    assert len(MISTAKES) >= 14


# -- plan and serve agree --------------------------------------------------------------------

TF_CONFIG = 'model_config_list {{\n  config {{ name: "m" base_path: "{base}" {extra}}}\n}}\n'


def _tf(tmp: Path, base: str = "m", extra: str = "") -> str:
    return _write(tmp / "models.config", TF_CONFIG.format(base=base, extra=extra))


def _yaml(tmp: Path, models: str, name: str = "c.yaml") -> str:
    return _write(tmp / name, SIM + "models:\n" + models)


BAD_CONFIGS: dict[str, Callable[[Path], list[str]]] = {
    "label not served": lambda tmp: [
        _yaml(tmp, "  - {name: m, base_path: ./m, version_labels: {stable: 1}}\n")
    ],
    "models.config label not served": lambda tmp: [
        "--model_config_file",
        _tf(tmp, extra='version_labels { key: "stable" value: 1 } '),
        "--overlay",
        _write(tmp / "o.yaml", OVERLAY_SIM),
    ],
    "base_path is a file": lambda tmp: [_yaml(tmp, "  - {name: m, base_path: ./m/2/model.onnx}\n")],
    "base_path missing": lambda tmp: [_yaml(tmp, "  - {name: m, base_path: ./nowhere}\n")],
    "models.config base_path missing": lambda tmp: [_tf(tmp, base="/nonexistent/m")],
    "unknown key": lambda tmp: [_yaml(tmp, "  - {name: m, base_path: ./m, replica: 2}\n")],
    "pin to an undeclared device": lambda tmp: [
        _yaml(tmp, "  - {name: m, base_path: ./m, devices: [gpu7]}\n")
    ],
    "YAML syntax": lambda tmp: [_yaml(tmp, "  - {name: m, base_path: ./m\n")],
    "models.config syntax": lambda tmp: [_write(tmp / "models.config", "model_config_list {\n")],
    "overlay names a model not in models.config": lambda tmp: [
        _tf(tmp),
        "--overlay",
        _write(tmp / "o.yaml", OVERLAY_SIM + "models: {resnet: {memory: 1GiB}}\n"),
    ],
    "overlay on modelyard YAML": lambda tmp: [
        _yaml(tmp, "  - {name: m, base_path: ./m}\n"),
        "--overlay",
        _write(tmp / "o.yaml", OVERLAY_SIM),
    ],
    "does not fit": lambda tmp: [
        _yaml(tmp, "".join(f"  - {{name: m{i}, base_path: ./m, memory: 600MiB}}\n" for i in (1, 2)))
    ],
    "--model_base_path is a file": lambda tmp: [
        "--model_name=m",
        f"--model_base_path={tmp / 'm' / '1' / 'model.onnx'}",
    ],
    "batching parameters": lambda tmp: [
        _yaml(tmp, "  - {name: m, base_path: ./m}\n"),
        "--enable_batching",
        "--batching_parameters_file",
        _write(tmp / "b.txt", "max_batch_size { value: 0 }\n"),
    ],
}


def _said(stderr: str) -> set[str]:
    """The lines of an answer, without the command's prefix, headers and log lines."""
    headers = ("No plan: not every model fits.", "refusing to load a set that does not fit:")
    lines = set()
    for line in stderr.splitlines():
        line = line.removeprefix("modelyard plan: ").removeprefix("modelyard: ").strip()
        if line and not line.startswith(headers) and not line[:4].isdigit():  # log: 2026-...
            lines.add(line)
    return lines


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_plan_refuses_what_serve_refuses_with_the_same_words(case: str, tmp_path: Path) -> None:
    _models(tmp_path)
    args = BAD_CONFIGS[case](tmp_path)
    with ThreadPoolExecutor(2) as both:  # at once: half the wall time
        plan_run = both.submit(modelyard, "plan", *args, cwd=tmp_path)
        serve_run = both.submit(
            modelyard, "serve", *args, "--port", "0", "--rest_api_port", "0", cwd=tmp_path
        )
        (planned, _, plan_err), (served, _, serve_err) = plan_run.result(), serve_run.result()
    assert planned == served == 2, f"plan: {planned} {plan_err}\nserve: {served} {serve_err}"
    said = _said(plan_err)
    assert said, plan_err
    assert said <= _said(serve_err), f"plan said:\n{plan_err}\nserve said:\n{serve_err}"
    assert "Traceback" not in plan_err + serve_err


def test_the_agreement_table_has_ten_configs_with_tf_serving_ones() -> None:
    assert len(BAD_CONFIGS) >= 10
    assert sum("models.config" in case for case in BAD_CONFIGS) >= 3


def test_a_tf_serving_user_dry_runs_then_serves_the_same_models_config(tmp_path: Path) -> None:
    """plan reads a models.config with --overlay as serve does; what it plans, serve serves."""
    _models(tmp_path)
    args = ["--model_config_file", _tf(tmp_path), "--overlay", _write(tmp_path / "o.yaml",
            OVERLAY_SIM)]  # fmt: skip
    status, out, err = modelyard("plan", *args, "--json", cwd=tmp_path)
    assert status == 0, err
    planned = json.loads(out)["devices"]
    assert [(d["name"], [(m["model"], m["version"]) for m in d["models"]]) for d in planned] == [
        ("sim0", [("m", 2)])
    ]
    ports = tmp_path / "ports.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelyard",
            *args,
            "--port=0",
            "--rest_api_port=0",
            "--ports-file",
            str(ports),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MODELYARD_CACHE_DIR": str(tmp_path / "cache")},
    )
    try:
        deadline = time.monotonic() + 60
        while not ports.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "serve did not start within 60 s"
            time.sleep(0.1)
        import httpx

        rest = f"http://127.0.0.1:{json.loads(ports.read_text())['rest']}"
        status_doc = httpx.get(f"{rest}/v1/models/m", timeout=10).json()
        assert [v["version"] for v in status_doc["model_version_status"]] == ["2"]
        answer = httpx.post(f"{rest}/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]})
        assert answer.status_code == 200, answer.text
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
