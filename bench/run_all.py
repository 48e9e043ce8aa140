"""``make bench``: the serving benchmark, start to finish, written to docs/benchmarks.md.

1. Build the tiny and medium ONNX MLPs (``bench_models``) and a config serving each twice:
   unbatched, and with dynamic batching (``<name>_batched``).
2. Measure the in-process floor (``floor``) while nothing else runs (and again at the end).
3. Measure the load generator's own ceiling against trivial HTTP and gRPC endpoints.
4. Start ``modelyard serve`` as its own process, as a user would, and for every model, variant
   and protocol run the load generator (its own process): closed loop at 1, 8 and 64 clients,
   then an open loop at half the best closed-loop rate. KServe gRPC is measured again with
   h2load (``h2grpc``) at 1, 8 and 64 streams where h2load is installed, and TF Serving REST
   with h2load at 1, 8 and 64 clients (``--h1``): issue 18's targets compare those two.
5. Cold start (``coldstart``): ``modelyard serve`` with two small models, from the command to
   both models' first correct answers; and the front end's resident memory.
6. Write tables and PNG plots (``report``).

    python bench/run_all.py                # about 6-7 minutes on 2 cores
    python bench/run_all.py --seconds 1    # a quick look (less stable numbers)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import coldstart
import h2grpc
import psutil
from bench_models import MEDIUM, MODELS, TINY, BenchModel, write_mlp
from floor import FloorPoint, measure
from protocols import GRPC_METHOD, H2LOAD_GRPC, H2LOAD_REST, PROTOCOLS, payload
from report import Report, environment, write_report

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BATCHING: dict[str, dict[str, Any]] = {
    # Big enough to take every request of 64 clients in one or two batches; the timeout is a
    # small fraction of one batch's compute, so a partial batch never waits long.
    TINY.name: {"max_batch_size": 64, "batch_timeout_micros": 500, "max_enqueued_batches": 64},
    MEDIUM.name: {"max_batch_size": 256, "batch_timeout_micros": 2000, "max_enqueued_batches": 8},
}
WINDOW_SCALE = {MEDIUM.name: 2}
"""The medium model's points measure twice as long: at 64 clients a round takes ~180 ms, so 3 s
holds only ~16 rounds per client and whether a batch boundary falls inside the window or not
moved its throughput by several percent between runs."""
FLOOR_SIZES = {TINY.name: [1, 8, 32, 64, 128, 256], MEDIUM.name: [8, 32, 64, 128, 256, 512]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--models", default="tiny,medium", help="which models to run")
    args = parser.parse_args()
    began = time.monotonic()
    chosen = [m for m in MODELS if m.name in args.models.split(",")]
    report = Report(environment=environment(), seconds=args.seconds, batching=BATCHING)
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        root = Path(tmp)
        config = build_repository(root, chosen)
        for model in chosen:
            _say(f"floor: {model.name}")
            report.floors[model.name] = measure_floor(model, root, args)
        _say("load generator ceiling")
        report.ceiling = ceiling(args.seconds)
        _say("cold start")
        report.cold_start = coldstart.measure(root / "coldstart")
        with serve(config, root) as (ports, pid):
            for model in chosen:
                check_answers(model, ports["rest"], root)
                for variant in (model.name, f"{model.name}_batched"):
                    for protocol in PROTOCOLS:
                        _say(f"load: {variant} over {protocol}")
                        port = ports["grpc" if protocol == "kserve_grpc" else "rest"]
                        seconds = args.seconds * WINDOW_SCALE.get(model.name, 1)
                        window = argparse.Namespace(seconds=seconds)
                        report.runs[(variant, protocol)] = load(
                            protocol, port, payload(protocol, variant, model.example()), window
                        )
                    if model is TINY and h2grpc.available():
                        _say(f"load: {variant} over gRPC with h2load")
                        request = payload("kserve_grpc", variant, model.example())
                        h2grpc.check(ports["grpc"], request)
                        report.runs[(variant, H2LOAD_GRPC)] = h2grpc.run(
                            ports["grpc"], request, args.seconds
                        )
                        _say(f"load: {variant} over TF Serving REST with h2load")
                        report.runs[(variant, H2LOAD_REST)] = h2grpc.run_rest(
                            ports["rest"],
                            payload("tfs_rest", variant, model.example()),
                            args.seconds,
                        )
            report.front_end_rss = psutil.Process(pid).memory_info().rss
        for model in chosen:
            _say(f"floor again: {model.name}")
            report.floors_after[model.name] = measure_floor(model, root, args)
    report.elapsed_s = time.monotonic() - began
    report.load_after = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    write_report(report, args.out)
    _say(f"wrote {args.out} in {report.elapsed_s:.0f} s")


def measure_floor(model: BenchModel, root: Path, args: argparse.Namespace) -> list[FloorPoint]:
    """The model called in process over its batch sizes (before and after the server runs)."""
    seconds = max(0.5, args.seconds / 3)
    return measure(model, root / model.name / "1", FLOOR_SIZES[model.name], seconds)


def build_repository(root: Path, models: list[BenchModel]) -> Path:
    lines = ["models:"]
    for model in models:
        write_mlp(model, root / model.name / "1")
        (root / f"{model.name}_batched").symlink_to(root / model.name)
        lines += [f"  - {{name: {model.name}, base_path: {root / model.name}}}"]
        options = ", ".join(f"{k}: {v}" for k, v in BATCHING[model.name].items())
        lines += [
            f"  - {{name: {model.name}_batched, base_path: {root / model.name}_batched, "
            f"batching: {{{options}}}}}"
        ]
    path = root / "modelyard.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class serve:
    """``modelyard serve CONFIG`` on free ports, as a separate process; yields its ports."""

    def __init__(self, config: Path, root: Path) -> None:
        self._config = config
        self._ports_file = root / "ports.json"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> tuple[dict[str, int], int]:
        command = [
            str(Path(PYTHON).parent / "modelyard"),
            "serve",
            str(self._config),
            "--port=0",
            "--rest_api_port=0",
            f"--ports-file={self._ports_file}",
            "--log-level=WARNING",
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while not self._ports_file.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("modelyard serve did not start; run it by hand to see why")
            time.sleep(0.2)
        ports: dict[str, int] = json.loads(self._ports_file.read_text())
        while httpx.get(f"http://127.0.0.1:{ports['rest']}/v2/health/ready").status_code != 200:
            time.sleep(0.2)
        return ports, self._process.pid

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(60)


def check_answers(model: BenchModel, rest_port: int, root: Path) -> None:
    """Both variants answer like the model itself; a benchmark of wrong answers is worthless."""
    from modelyard.backends import get_backend
    from modelyard.config.schema import Platform

    x = model.example()
    loaded = get_backend(Platform.ONNX).load(root / model.name / "1", "cpu", None)
    want = loaded.predict({"x": x})["y"]
    loaded.unload()
    for variant in (model.name, f"{model.name}_batched"):
        response = httpx.post(
            f"http://127.0.0.1:{rest_port}/v1/models/{variant}:predict",
            json={"instances": x.tolist()},
            timeout=60,
        )
        got = np.array(response.json()["predictions"], dtype=np.float32)
        if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"{variant} answers differ from the in-process model")


def load(protocol: str, port: int, request: bytes, args: argparse.Namespace) -> list[Any]:
    spec = {
        "protocol": "grpc" if protocol == "kserve_grpc" else "http",
        "host": "127.0.0.1",
        "port": port,
        "payload_b64": base64.b64encode(request).decode(),
        "grpc_method": GRPC_METHOD,
        "duration_s": args.seconds,
        "warmup_s": 0.5,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        out = subprocess.run(
            [PYTHON, str(ROOT / "bench" / "loadgen.py"), f.name], capture_output=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"the load generator failed:\n{out.stderr.decode()[-3000:]}")
    finally:
        os.unlink(f.name)
    results: list[Any] = json.loads(out.stdout)
    return results


def ceiling(seconds: float) -> dict[str, list[Any]]:
    """The generators against endpoints that answer at once (tiny model's request bodies)."""
    results = {}
    # The gRPC endpoint is modelyard's own HTTP/2 server (``h2grpc``), as the gRPC port's.
    for kind, protocol in (("http", "tfs_rest"), ("h2grpc", "kserve_grpc")):
        server = subprocess.Popen(
            [PYTHON, str(ROOT / "bench" / "trivial.py"), kind], stdout=subprocess.PIPE
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            ns = argparse.Namespace(seconds=seconds)
            results[protocol] = load(protocol, port, payload(protocol, "tiny", TINY.example()), ns)
            if kind == "h2grpc" and h2grpc.available():
                results[H2LOAD_GRPC] = h2grpc.run(port, payload(protocol, "tiny", TINY.example()),
                                                  seconds)  # fmt: skip
            elif h2grpc.available():
                results[H2LOAD_REST] = h2grpc.run_rest(
                    port, payload(protocol, "tiny", TINY.example()), seconds
                )
        finally:
            server.terminate()
            server.wait(10)
    return results


def _say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
