"""Front-end CPU per large JSON request (the medium model's 8 x 1,024 float32 in and out).

``bench/request_cost.py`` for a chosen benchmark model: starts ``modelyard serve`` once per
source tree, sends ``--requests`` requests with h2load (``--clients`` connections, one request
in flight on each) over TF Serving REST (``{"instances": ...}``) and KServe v2 REST JSON, and
reports the CPU microseconds per request of the front end process and of its workers (read from
/proc, so time spent waiting for a CPU on a loaded machine is not counted) and the front end's
minor page faults per request. Trees are interleaved ``--rounds`` times; medians are shown, and
the front end's least figure.

``--model medium_io`` serves a model with the medium model's inputs and outputs (8 rows of
1,024 float32 in, 8 x 1,024 out) but one 1,024 x 1,024 layer, so the workers finish quickly on
a CPU-only machine; the front end's work is the same bytes either way.

    python bench/json_cost.py --tree new=src --tree main=/work/main/src --model medium
"""

from __future__ import annotations

import argparse
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import MEDIUM, TINY, BenchModel, write_mlp
from protocols import GRPC_METHOD, LABELS, payload
from request_cost import GrpcClient, HttpClient, cpu_seconds, serve

MODELS = {
    "tiny": TINY,
    "medium": MEDIUM,
    "medium_io": BenchModel("medium_io", (1024, 1024), rows_per_request=8),
}


def _h2load(
    ports: dict[str, int], protocol: str, request: bytes, requests: int, clients: int = 1
) -> None:
    with tempfile.TemporaryDirectory(prefix="modelyard-json-h2-") as tmp:
        body = Path(tmp) / "body"
        if protocol == "kserve_grpc":
            body.write_bytes(b"\x00" + struct.pack(">I", len(request)) + request)
            url = f"http://127.0.0.1:{ports['grpc']}{GRPC_METHOD}"
            extra = ["--header=content-type: application/grpc", "--header=te: trailers"]
        else:
            head, _, data = request.partition(b"\r\n\r\n")
            body.write_bytes(data)
            lines = head.decode().split("\r\n")
            url = f"http://127.0.0.1:{ports['rest']}{lines[0].split(' ')[1]}"
            extra = ["--h1"] + [
                f"--header={line}"
                for line in lines[1:]
                if not line.lower().startswith(("host:", "content-length:"))
            ]
        command = ["h2load", f"--requests={requests}", f"--clients={clients}",
                   "--max-concurrent-streams=1", f"--data={body}", *extra, url]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if f"{requests} succeeded" not in out.stdout:
            raise RuntimeError(f"h2load: {out.stdout[-1500:]}{out.stderr[-1500:]}")


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (every thread): fresh memory the kernel had to
    map and zero, a cost that CPU time shows only on a quiet machine."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def measure(
    process: subprocess.Popen[bytes], ports: dict[str, int], protocol: str, model: BenchModel,
    requests: int, clients: int = 1,
) -> dict[str, float]:  # fmt: skip
    request = payload(protocol, model.name, model.example())
    client: HttpClient | GrpcClient
    client = GrpcClient(ports["grpc"]) if protocol == "kserve_grpc" else HttpClient(ports["rest"])
    for _ in range(30):  # warm-up, and a check that the answers are 200 OK
        client.call(request)
    proc = psutil.Process(process.pid)
    own0, kids0 = cpu_seconds(proc)
    faults0 = minor_faults(process.pid)
    began = time.perf_counter()
    _h2load(ports, protocol, request, requests, clients)
    elapsed = time.perf_counter() - began
    own1, kids1 = cpu_seconds(proc)
    faults = minor_faults(process.pid) - faults0
    return {
        "front_us": (own1 - own0) / requests * 1e6,
        "worker_us": (kids1 - kids0) / requests * 1e6,
        "req_s": requests / elapsed,
        "faults": faults / requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="LABEL=SRC_DIR")
    parser.add_argument("--model", choices=sorted(MODELS), default="medium_io")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocols", default="tfs_rest,kserve_json")
    parser.add_argument("--clients", type=int, default=1, help="connections, one request each")
    args = parser.parse_args()
    model = MODELS[args.model]
    trees = dict(t.split("=", 1) for t in args.tree)
    protocols = args.protocols.split(",")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="modelyard-json-") as tmp:
        root = Path(tmp)
        write_mlp(model, root / model.name / "1")
        config = root / "modelyard.yaml"
        config.write_text(f"models:\n  - {{name: {model.name}, base_path: {root / model.name}}}\n")
        for _ in range(args.rounds):
            for label, tree in trees.items():
                process, ports = serve(tree, config, root)
                try:
                    for protocol in protocols:
                        point = measure(
                            process, ports, protocol, model, args.requests, args.clients
                        )
                        results.setdefault((label, protocol), []).append(point)
                finally:
                    process.terminate()
                    process.wait(60)
    print(f"model {model.name}, {args.clients} client(s); CPU microseconds per request (median "
          f"of {args.rounds})")  # fmt: skip
    columns = ("front us", "worker us", "req/s", "faults", "front min")
    print(f"{'tree':8} {'protocol':22} " + " ".join(f"{c:>9}" for c in columns))
    for protocol in protocols:
        for label in trees:
            points = results[(label, protocol)]
            med = {k: statistics.median(p[k] for p in points) for k in points[0]}
            least = min(p["front_us"] for p in points)
            print(
                f"{label:8} {LABELS[protocol]:22} {med['front_us']:9.0f} {med['worker_us']:9.0f} "
                f"{med['req_s']:9.0f} {med['faults']:9.1f} {least:9.0f}"
            )


if __name__ == "__main__":
    main()
