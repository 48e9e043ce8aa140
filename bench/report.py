"""Turns one benchmark run into docs/benchmarks.md: environment, tables, targets, PNG plots.

Everything in the document comes from the run that wrote it, except ``bench/findings.md``
(what profiling found and what was changed), which is copied in as written.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_models import MEDIUM, MODELS, TINY
from floor import FloorPoint
from protocols import H2LOAD_GRPC, H2LOAD_REST, LABELS, REPORTED

HERE = Path(__file__).resolve().parent


@dataclass
class Report:
    environment: dict[str, str]
    seconds: float
    batching: dict[str, dict[str, Any]]
    floors: dict[str, list[FloorPoint]] = field(default_factory=dict)
    floors_after: dict[str, list[FloorPoint]] = field(default_factory=dict)
    ceiling: dict[str, list[Any]] = field(default_factory=dict)
    runs: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    cold_start: Any = None  # coldstart.ColdStart
    load_after: str = ""
    front_end_rss: int = 0  # bytes: the benchmark server's front end after every load point


def git_state(*paths: str) -> tuple[str, bool]:
    """The checkout's short commit, and whether its tracked files (those under ``paths``,
    relative to the checkout's root, if given) have uncommitted changes; ``("unknown", False)``
    where git cannot tell."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE.parent,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
            capture_output=True,
            text=True,
            cwd=HERE.parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return sha, bool(dirty)  # fmt: skip


def environment() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        ram = 0.0
    sha, dirty = git_state()
    return {
        "load": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{ram:.1f} GiB",
        "python": platform.python_version(),
        "torch": version("torch"),
        "onnxruntime": version("onnxruntime"),
        "modelyard": version("modelyard"),
        "git": sha + (" (with uncommitted changes)" if dirty else ""),
        "loader": _default_loader(),
    }


def _default_loader() -> str:
    from modelyard.config.schema import ServerConfig
    from modelyard.server.runtime import Server

    loader = type(
        Server.from_config(ServerConfig())._loader
    ).__name__  # what `modelyard serve` uses
    return loader


def _stats(result: dict[str, Any]) -> dict[str, float]:
    lat = sorted(result["latencies_ms"]) or [float("nan")]
    return {
        "rps": result["requests"] / result["elapsed_s"],
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "errors": result["errors"],
    }


def _mode(result: dict[str, Any]) -> str:
    if result["mode"] == "closed":
        return f"closed c={result['concurrency']}"
    return f"open {result['target_rate']:.0f}/s"


def floor_points(report: Report, model: str) -> list[FloorPoint]:
    """Per batch size, the faster of the floor measured before and after the server runs.

    The cores are shared with other machines' work, and the model's own speed drifts by 10-20 %
    over a run; comparing the server with the faster measurement keeps that drift from ever
    flattering the server.
    """
    before = report.floors[model]
    after = {p.rows: p for p in report.floors_after.get(model, [])}
    return [max(p, after.get(p.rows, p), key=lambda q: q.rows_per_s) for p in before]


def _floor_summary(points: list[FloorPoint], rows: int) -> tuple[FloorPoint, FloorPoint]:
    unbatched = next(p for p in points if p.rows == rows)
    best = max(points, key=lambda p: p.rows_per_s)
    return unbatched, best


def write_report(report: Report, out: Path) -> None:
    images = out.parent / "benchmarks"
    images.mkdir(parents=True, exist_ok=True)
    env = report.environment
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run_all.py`); every figure below comes from one run.",
        "",
        f"- Date: {env['date']}; run took {report.elapsed_s:.0f} s; "
        f"{report.seconds:g} s measured per point (twice that for the medium model) after "
        "0.5 s warm-up",
        f"- Machine: {env['cpu']}, {env['cores']} cores, {env['ram']} RAM, no GPU. The cores are "
        "shared with other work, so figures move by 10-30 % between runs. Load average (1, 5, "
        f"15 min) when the run began: {env['load']}; when it ended: {report.load_after} "
        f"({env['cores']} would be the cores' worth of work).",
        f"- Versions: Python {env['python']}, torch {env['torch']}, onnxruntime "
        f"{env['onnxruntime']}, modelyard {env['modelyard']} (git {env['git']})",
        f"- Server: `modelyard serve` in its own process, default loader `{env['loader']}`; "
        "the load generator is another process on the same 2 cores.",
        "- Models (ONNX, FP32): tiny 64→256→256→10, 1 row per request; medium "
        "1024→4096→4096→1024, 8 rows per request. `*_batched` is the same model with "
        "`batching:` " + "; ".join(f"{m}: {b}" for m, b in report.batching.items()) + ".",
        "",
    ]
    lines += _targets(report)
    lines += ["## In-process floor", ""]
    lines += [
        "`LoadedModel.predict` called in a loop on one thread: no server at all. Measured before "
        "the server starts and again after it stops; every ratio below is taken against the "
        "faster of the two.",
        "",
        "| model | rows per call | p50 ms (before) | rows/s (before) | rows/s (after) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, points in report.floors.items():
        after = {p.rows: p for p in report.floors_after.get(name, [])}
        for p in points:
            later = f"{after[p.rows].rows_per_s:,.0f}" if p.rows in after else "-"
            lines.append(f"| {name} | {p.rows} | {p.p50_ms:.3f} | {p.rows_per_s:,.0f} | {later} |")
    lines += ["", "## Load generator ceiling", ""]
    lines += [
        "The generators against endpoints that answer at once (`bench/trivial.py`; tiny-model "
        "request bodies). The trivial servers are Python too and share the cores, so these are "
        "lower bounds on the generators' ceilings. The trivial gRPC server is modelyard's own "
        "HTTP/2 server (the gRPC port's, `server/grpc/fast.py`) answering an empty message; "
        "`bench/grpc_cost.py` compares its CPU per call with grpc.aio's.",
        "",
        "| protocol | mode | req/s | p50 ms |",
        "|---|---|---:|---:|",
    ]
    for protocol, results in report.ceiling.items():
        for r in results:
            s = _stats(r)
            lines.append(f"| {LABELS[protocol]} | {_mode(r)} | {s['rps']:,.0f} | {s['p50']:.2f} |")
    for model in MODELS:
        if model.name not in report.floors:
            continue
        unbatched, best = _floor_summary(floor_points(report, model.name), model.rows_per_request)
        lines += [
            "",
            f"## {model.name}: {model.rows_per_request} row(s) per request",
            "",
            f"Floor: unbatched {unbatched.rows_per_s:,.0f} rows/s (p50 {unbatched.p50_ms:.3f} ms "
            f"per call of {unbatched.rows} rows); batched {best.rows_per_s:,.0f} rows/s at "
            f"{best.rows} rows. *% batched floor* = server rows/s ÷ batched floor rows/s; "
            "*added p50* = server p50 - unbatched floor p50.",
        ]
        if any((model.name, p) in report.runs for p in (H2LOAD_REST, H2LOAD_GRPC)):
            lines += [
                "",
                "Rows marked *(h2load)* come from h2load, a C generator (REST over HTTP/1.1, one "
                "keep-alive connection per client; gRPC on one connection, one stream per call "
                "in flight); the others from `bench/loadgen.py`, Python in its own process, "
                "whose own CPU per request lies on a request's path at one client. Issue 18's "
                "targets compare the h2load rows (the same generator for both protocols; the "
                "peers' reference figures below were measured with wrk, a C generator too).",
            ]
        lines += [
            "",
            "| served as | protocol | load | req/s | rows/s | % batched floor | p50 ms | "
            "added p50 ms | p99 ms | errors |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for variant in (model.name, f"{model.name}_batched"):
            for protocol in REPORTED:
                for r in report.runs.get((variant, protocol), []):
                    s = _stats(r)
                    rows = s["rps"] * model.rows_per_request
                    lines.append(
                        f"| {variant} | {LABELS[protocol]} | {_mode(r)} | {s['rps']:,.0f} | "
                        f"{rows:,.0f} | {100 * rows / best.rows_per_s:.0f} % | {s['p50']:.2f} | "
                        f"{s['p50'] - unbatched.p50_ms:.2f} | {s['p99']:.2f} | {s['errors']} |"
                    )
        lines += ["", f"![{model.name} throughput](benchmarks/{model.name}.png)"]
        _plot(report, model.name, model.rows_per_request, images / f"{model.name}.png")
    lines += _reference()
    findings = HERE / "findings.md"
    if findings.exists():
        lines += ["", findings.read_text().rstrip()]
    out.write_text("\n".join(lines) + "\n")


def _closed(report: Report, variant: str, protocol: str) -> dict[int, dict[str, float]]:
    return {
        r["concurrency"]: _stats(r)
        for r in report.runs.get((variant, protocol), [])
        if r["mode"] == "closed"
    }


def _targets(report: Report) -> list[str]:
    lines = ["## Targets (issue 7)", ""]
    if MEDIUM.name in report.floors:
        alone, best = _floor_summary(floor_points(report, MEDIUM.name), MEDIUM.rows_per_request)
        batched = _closed(report, f"{MEDIUM.name}_batched", "tfs_rest").get(64)
        plain = _closed(report, MEDIUM.name, "tfs_rest").get(64)
        if batched and plain:
            share = batched["rps"] * MEDIUM.rows_per_request / best.rows_per_s
            gain = batched["rps"] / plain["rps"]
            lines.append(
                f"- Medium, 64 clients, TF Serving REST, batched: {share:.0%} of the in-process "
                f"batched floor (target ≥ 70 %): **{'met' if share >= 0.7 else 'missed'}**."
            )
            lines.append(
                f"- Batching vs no batching (same load): {gain:.2f}x (target ≥ 2.5x): "
                f"**{'met' if gain >= 2.5 else 'missed'}**. The model itself gains "
                f"{best.rows_per_s / alone.rows_per_s:.2f}x in process ({best.rows} rows per "
                f"call vs {alone.rows}); batching cannot make the model compute faster than that."
            )
    if TINY.name in report.floors:
        unbatched, _ = _floor_summary(floor_points(report, TINY.name), TINY.rows_per_request)
        one = _closed(report, TINY.name, "tfs_rest").get(1)
        if one:
            added = one["p50"] - unbatched.p50_ms
            lines.append(
                f"- Tiny, 1 client, TF Serving REST: p50 {one['p50']:.3f} ms vs "
                f"{unbatched.p50_ms:.3f} ms in process, {added:.3f} ms added (target ≤ 1 ms): "
                f"**{'met' if added <= 1.0 else 'missed'}**."
            )
    return [*lines, "", *_targets_18(report)]


def _targets_18(report: Report) -> list[str]:
    """Issue 18's targets. REST is judged by its h2load points where the run has them: the same
    C generator as gRPC's, and at one client little of the generator's own time on the path
    (``loadgen.py``'s figure is given beside it)."""
    lines = ["## Targets (issue 18)", ""]
    if TINY.name in report.floors:
        unbatched, _ = _floor_summary(floor_points(report, TINY.name), TINY.rows_per_request)
        by_loadgen = _closed(report, TINY.name, "tfs_rest")
        by_h2load = _closed(report, TINY.name, H2LOAD_REST)
        rest = by_h2load or by_loadgen
        generator = "h2load" if by_h2load else "loadgen.py"
        one = rest.get(1)
        if one:
            added = one["p50"] - unbatched.p50_ms
            beside = ""
            if by_h2load and 1 in by_loadgen:
                beside = (
                    f"; {by_loadgen[1]['p50'] - unbatched.p50_ms:.3f} ms by `loadgen.py`, whose "
                    "own CPU per request (Python) lies on the path at one client"
                )
            lines.append(
                f"- Tiny, 1 client, TF Serving REST ({generator}): {added:.3f} ms added to the "
                f"in-process p50{beside} (target ≤ 0.35 ms): "
                f"**{'met' if added <= 0.35 else 'missed'}**."
            )
        grpc = _closed(report, TINY.name, H2LOAD_GRPC)
        for n in (1, 64):
            if n in rest and n in grpc:
                ok = grpc[n]["rps"] >= rest[n]["rps"]
                beside = (
                    f"; by `loadgen.py` {by_loadgen[n]['rps']:,.0f}"
                    if by_h2load and n in by_loadgen
                    else ""
                )
                lines.append(
                    f"- Tiny, KServe gRPC (h2load) at {n} stream(s): {grpc[n]['rps']:,.0f} req/s "
                    f"vs TF Serving REST ({generator}) at {n} client(s): {rest[n]['rps']:,.0f}"
                    f"{beside} (target: gRPC ≥ REST): **{'met' if ok else 'missed'}**."
                )
    cold = report.cold_start
    if cold is not None:
        tries = ", ".join(f"{s:.2f}" for s in cold.seconds)
        lines.append(
            f"- Cold start, `modelyard serve` with two small ONNX models to both first correct "
            f"answers: median {cold.median_s:.2f} s (tries: {tries} s; target ≤ 3 s): "
            f"**{'met' if cold.median_s <= 3.0 else 'missed'}**."
        )
        lines.append(
            f"- Front end's resident memory serving two small models (that server, after its "
            f"first answers): {cold.front_end_rss / 2**20:.0f} MiB (target ≤ 120 MB, with no ML "
            "framework in it; tests/e2e/test_lean_front_end.py checks both): "
            f"**{'met' if cold.front_end_rss <= 120e6 else 'missed'}**."
        )
    if report.front_end_rss:
        lines.append(
            f"- The benchmark server's front end after every load point above (medium model, 64 "
            f"clients: its buffers grow with the load): {report.front_end_rss / 2**20:.0f} MiB."
        )
    return [*lines, ""]


def _reference() -> list[str]:
    """The peers' figures from issue 18: measured once on this machine, not re-measured here."""
    return [
        "",
        "## Reference: the peers (issue 18's figures, not re-measured)",
        "",
        "Measured side by side in one earlier run on this 2-core machine (same models, same wrk "
        "load, each server's defaults, no batching); kept here as the line to compare against, "
        "not produced by this run.",
        "",
        "| figure | modelyard then | peers |",
        "|---|---:|---|",
        "| tiny, 64 clients, req/s | 2,554 | LitServe 1,336; TorchServe 1,122; MLServer 823; "
        "Triton (PyTriton's tritonserver) 483 |",
        "| medium, req/s | 123 | at most 49 |",
        "| tiny, 1 client, p50 ms | 0.90 | bare FastAPI calling the model in process 0.40; "
        "TorchServe 0.89; Triton's C++ front end adds about 0.082 server-side |",
        "| tiny, KServe gRPC (h2load), req/s at 1 / 64 streams | 815 / 1,750 | "
        "(REST in the same hour: 1,065 / 2,554) |",
        "| memory: front end / all processes | 260 MB / 700 MB | bare app 340 MB in all |",
        "| cold start to the first correct answer | 4.7 s | bare app 2.1 s |",
    ]


def _plot(report: Report, model: str, rows_per_request: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant, style in ((model, "--"), (f"{model}_batched", "-")):
        for protocol in REPORTED:
            closed = _closed(report, variant, protocol)
            xs = sorted(closed)
            label = f"{LABELS[protocol]}{' (batched)' if variant != model else ''}"
            left.plot(
                xs,
                [closed[c]["rps"] * rows_per_request for c in xs],
                style,
                marker="o",
                label=label,
            )
            right.plot(xs, [closed[c]["p50"] for c in xs], style, marker="o", label=label)
    unbatched, best = _floor_summary(floor_points(report, model), rows_per_request)
    left.axhline(best.rows_per_s, color="k", linewidth=1, label=f"floor, batch {best.rows}")
    left.axhline(unbatched.rows_per_s, color="grey", linewidth=1, label="floor, unbatched")
    for axis, title, unit in ((left, "throughput", "rows/s"), (right, "p50 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients (closed loop)")
        axis.set_ylabel(unit)
        axis.set_title(f"{model}: {title}")
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
