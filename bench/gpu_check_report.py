"""``summary.md`` of a GPU check run: the figures of ``summary.json`` as short tables."""

from __future__ import annotations

from typing import Any

GiB = 2**30


def markdown(summary: dict[str, Any]) -> str:
    profile = summary["profile"]
    steps = summary["steps"]
    lines = [
        f"# modelyard GPU check: {profile['name']}",
        "",
        f"Started {summary['started_utc']}, {summary.get('elapsed_s', 0):.0f} s so far.",
        "",
        "| step | status | seconds | detail |",
        "|---|---|---:|---|",
    ]
    for name, step in steps.items():
        detail = str(step["detail"]).replace("|", "/")[:300]
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.1f} | {detail} |")
    lines.append("")
    for name, step in steps.items():
        result = step.get("result") or {}
        if not result:
            continue
        lines += [f"## {name}", ""]
        checks = result.get("checks", {})
        if checks:
            lines.append(
                "Checks: " + ", ".join(f"{k} **{'yes' if v else 'NO'}**" for k, v in checks.items())
            )
            lines.append("")
        writer = _WRITERS.get(name, _plain)
        lines += writer(result.get("figures", {}))
        for error in result.get("errors", [])[:10]:
            lines.append(f"- error: {error}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _plain(figures: dict[str, Any]) -> list[str]:
    return [f"- {k}: {v}" for k, v in figures.items() if not isinstance(v, dict | list)]


def _env(figures: dict[str, Any]) -> list[str]:
    lines = _plain(figures)
    versions = figures.get("versions", {})
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines


def _cuda_tests(figures: dict[str, Any]) -> list[str]:
    keys = ("tests", "ran", "failures", "errors", "skipped", "exit_code")
    lines = [", ".join(f"{k} {figures.get(k)}" for k in keys), ""]
    lines += [f"- {f}" for f in figures.get("files", [])]
    return lines


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return str(n)
    return f"{n / GiB:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _seed(f: dict[str, Any]) -> list[str]:
    lines = [
        f"- models: {len(f.get('footprints', {})) or '?'} x {_size(f.get('model_weight_bytes'))}"
        f" of weights (layers {f.get('model_layers')}), {f.get('distinct_artifacts')} distinct"
        f" artifacts, built in {f.get('build_s')} s",
        f"- planned at headroom {f.get('plan_headroom_fraction') or 'default'}; at the default"
        f" headroom the plan is"
        f" {'feasible' if f.get('default_headroom_plan_feasible') else 'NOT feasible'}",
        f"- cold start: listening after {f.get('cold_start_listening_s')} s, all AVAILABLE after"
        f" {f.get('cold_start_all_available_s')} s; slowest device ({f.get('slowest_device')})"
        f" loads summed in its worker {f.get('device_load_sum_s', {}).get(f.get('slowest_device'))}"
        f" s, alone in a fresh process {f.get('slowest_device_alone_total_s')} s"
        f" {f.get('slowest_device_alone_load_s')}; wall / alone ="
        f" {f.get('cold_start_over_alone_sequential')}",
        f"- estimate / measured: min {f.get('estimate_over_measured_min')},"
        f" max {f.get('estimate_over_measured_max')}",
    ]
    kill = f.get("kill")
    if kill:
        lines.append(
            f"- SIGKILL of {kill['device']}'s worker: {kill['neighbour_answers']} answers from"
            f" the other devices' models in {kill['rounds_over_neighbours']} rounds"
            f" ({kill['seconds_of_rounds']} s), {kill['neighbour_wrong']} wrong,"
            f" {kill['neighbour_failed']} failed; its models back after"
            f" {kill.get('back_available_s')} s"
        )
    workers = f.get("workers", {})
    if workers:
        lines += [
            "",
            "| device | pid | models (placed on) | CUDA allocated | RSS | loads (s) |",
            "|---|---:|---|---:|---:|---|",
        ]
        for device, w in workers.items():
            models = ", ".join(f"{m} ({v['placed_on']})" for m, v in w["models"].items())
            loads = ", ".join(str(v["load_seconds"]) for v in w["models"].values())
            lines.append(
                f"| {device} | {w['pid']} | {models} | {_size(w.get('cuda_allocated_bytes') or 0)}"
                f" | {_size(w['rss_bytes'])} | {loads} |"
            )
    footprints = f.get("footprints", {})
    if footprints:
        lines += ["", "| model | estimate | measured | estimate / measured | answer max abs diff |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        diffs = f.get("answer_max_abs_diff", {})
        for name, fp in footprints.items():
            diff = diffs.get(name)
            shown = f"{diff:.2e}" if isinstance(diff, float) else "?"
            lines.append(
                f"| {name} | {_size(fp['estimated_bytes'])} | {_size(fp['measured_bytes'])} |"
                f" {fp['estimate_over_measured']} | {shown} |"
            )
    return lines


def _batching(f: dict[str, Any]) -> list[str]:
    lines = [
        f"- medium {f.get('medium_layers')}, 64 clients: batching gain"
        f" {f.get('medium_c64_batching_gain_tfs_rest')}x over TF Serving REST,"
        f" {f.get('medium_c64_batching_gain_kserve_grpc')}x over KServe gRPC"
        f" (goal >= {f.get('goal_batching_gain')}x)",
        f"- tiny, 1 client, added p50 over the in-process call: unbatched"
        f" {f.get('tiny_added_p50_ms')} ms, batched {f.get('tiny_batched_added_p50_ms')} ms",
        "",
        "| served as / protocol / clients | req/s | rows/s | p50 ms | p99 ms | errors"
        " | CPU s: front end / workers / load |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, run in f.get("runs", {}).items():
        cpu = run.get("cpu_s", {})
        lines.append(
            f"| {key} | {run['req_per_s']} | {run['rows_per_s']} | {run['p50_ms']} |"
            f" {run['p99_ms']} | {run['errors']} | {cpu.get('front_end')} /"
            f" {cpu.get('workers')} / {cpu.get('load_generator')} |"
        )
    floors = f.get("floor", {})
    for name, floor in floors.items():
        lines.append(f"\nIn process, {name}: p50 ms by rows {floor['p50_ms_by_rows']},"
                     f" rows/s {floor['rows_per_s_by_rows']}")  # fmt: skip
    return lines


_WRITERS = {"env": _env, "cuda_tests": _cuda_tests, "seed": _seed, "batching": _batching}
