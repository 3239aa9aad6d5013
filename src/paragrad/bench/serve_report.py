"""The ``serve`` suite's figures turned into rows, verdicts and a text table.

A cell is one server's figures for one model, request size and concurrency, as the load
generator measures them; a row puts paragrad's cell beside its baselines' in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from paragrad.bench.common import Row

MODELS = ("logistic", "mlp")
MAX_WAIT_MS = 2.0  # paragrad serve's default, which the p50 target allows over the baseline's
TARGET_SPEEDUP = 2.0  # over (b), 1-row requests, 64 clients
TARGET_FRACTION_OF_FLOOR = 0.7
TARGET_BINARY = 2.0  # binary tensors over JSON, 100-row requests
TARGET_OVER_MLSERVER = {1: 3.0, 100: 1.5}  # paragrad over (c)'s requests/s, by request rows
FASTAPI = ("fastapi", "fastapi_async")  # the variants of (b)
MLSERVER = ("mlserver", "mlserver_inproc", "mlserver_inproc_batch")  # the variants of (c)
Cells = dict[tuple[str, str, int, int], dict[str, Any]]  # (server, model, rows, clients) -> figures


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def best(cells: Cells, servers: Sequence[str], model: str, rows: int, clients: int) -> dict[str, Any]:
    """A baseline in one cell: the better of its variants measured (``FASTAPI`` or
    ``MLSERVER``), figure by figure (all None when it is not installed)."""
    keys = [(server, model, rows, clients) for server in servers]
    variants = [cells[key] for key in keys if key in cells]
    p50s = [v["p50_ms"] for v in variants if v["p50_ms"] is not None]
    p99s = [v["p99_ms"] for v in variants if v["p99_ms"] is not None]
    return {
        "requests_per_s": max((v["requests_per_s"] for v in variants), default=None),
        "p50_ms": min(p50s, default=None),
        "p99_ms": min(p99s, default=None),
        "errors": sum(v["errors"] for v in variants),
    }


def cell_rows(cells: Cells, mlserver_status: str) -> list[Row]:
    """One row per model, request size and concurrency: paragrad beside every baseline;
    ``mlserver_status`` says which MLServer ran, or why none did."""
    rows = []
    for (server, model, request_rows, clients), ours in cells.items():
        if server != "paragrad":
            continue
        floor = cells["floor", "-", request_rows, clients]
        fastapi = best(cells, FASTAPI, model, request_rows, clients)
        mlserver = best(cells, MLSERVER, model, request_rows, clients)
        over_mlserver = ratio(ours["requests_per_s"], mlserver["requests_per_s"])
        mlserver_target = TARGET_OVER_MLSERVER.get(request_rows)
        rows.append(
            {
                "benchmark": "serve",
                "model": model,
                "request_rows": request_rows,
                "concurrency": clients,
                "requests": ours["requests"],
                "requests_per_s": ours["requests_per_s"],
                "p50_ms": ours["p50_ms"],
                "p99_ms": ours["p99_ms"],
                "avg_batch_rows": ours["avg_batch_rows"],
                "floor_requests_per_s": floor["requests_per_s"],
                "floor_p50_ms": floor["p50_ms"],
                "floor_p99_ms": floor["p99_ms"],
                "fastapi_requests_per_s": fastapi["requests_per_s"],
                "fastapi_p50_ms": fastapi["p50_ms"],
                "fastapi_p99_ms": fastapi["p99_ms"],
                "speedup_over_fastapi": ratio(ours["requests_per_s"], fastapi["requests_per_s"]),
                "fraction_of_floor": ratio(ours["requests_per_s"], floor["requests_per_s"]),
                "mlserver_status": mlserver_status,
                "mlserver_requests_per_s": mlserver["requests_per_s"],
                "mlserver_p50_ms": mlserver["p50_ms"],
                "mlserver_p99_ms": mlserver["p99_ms"],
                "speedup_over_mlserver": over_mlserver,
                "mlserver_target": mlserver_target,
                "mlserver_verdict": verdict(
                    None
                    if over_mlserver is None or mlserver_target is None
                    else over_mlserver >= mlserver_target
                ),
                "errors": ours["errors"] + floor["errors"] + fastapi["errors"] + mlserver["errors"],
            }
        )
    return rows


def mlserver_rows(rows: list[Row], same_answers: dict[str, bool | None]) -> list[Row]:
    """paragrad over MLServer for each model and request size, at every client count,
    and the verdict on the target, met when it holds at all of them."""
    summary = []
    for model, request_rows in dict.fromkeys((row["model"], row["request_rows"]) for row in rows):
        cells = [row for row in rows if row["model"] == model and row["request_rows"] == request_rows]
        speedups = [row["speedup_over_mlserver"] for row in cells]
        target = TARGET_OVER_MLSERVER.get(request_rows)
        measured = None not in speedups
        summary.append(
            {
                "benchmark": "serve_mlserver",
                "model": model,
                "request_rows": request_rows,
                "mlserver_status": cells[0]["mlserver_status"],
                "same_answers_as_mlserver": same_answers.get(model),
                **{f"speedup_c{row['concurrency']}": row["speedup_over_mlserver"] for row in cells},
                "speedup_min": min(speedups) if measured else None,
                "target": target,
                "verdict": verdict(None if not measured or target is None else min(speedups) >= target),
            }
        )
    return summary


def verdict(flag: bool | None) -> str:
    return "n/a" if flag is None else "met" if flag else "not met"


def target_rows(rows: list[Row], same_labels: dict[str, bool | None]) -> list[Row]:
    """The targets for 1-row requests, for each model, each with its verdict."""
    targets = []
    for model in MODELS:
        cell = {row["concurrency"]: row for row in rows if row["model"] == model and row["request_rows"] == 1}
        busy, alone = cell[64], cell[1]
        speedup, floor = busy["speedup_over_fastapi"], busy["fraction_of_floor"]
        p99, p99_limit = busy["p99_ms"], busy["fastapi_p99_ms"]
        p50, p50_limit = alone["p50_ms"], alone["fastapi_p50_ms"]
        p50_limit = None if p50_limit is None else p50_limit + MAX_WAIT_MS
        targets.append(
            {
                "benchmark": "serve_targets",
                "model": model,
                "request_rows": 1,
                "same_labels_as_sklearn": same_labels[model],
                "speedup_c64": speedup,
                "speedup_target": TARGET_SPEEDUP,
                "speedup_verdict": verdict(None if speedup is None else speedup >= TARGET_SPEEDUP),
                "fraction_of_floor_c64": floor,
                "floor_target": TARGET_FRACTION_OF_FLOOR,
                "floor_verdict": verdict(None if floor is None else floor >= TARGET_FRACTION_OF_FLOOR),
                "p99_ms_c64": p99,
                "p99_limit_ms_c64": p99_limit,
                "p99_verdict": verdict(None if p99 is None or p99_limit is None else p99 <= p99_limit),
                "p50_ms_c1": p50,
                "p50_limit_ms_c1": p50_limit,
                "p50_verdict": verdict(None if p50 is None or p50_limit is None else p50 <= p50_limit),
            }
        )
    return targets


def shown(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def table(
    cells: Cells,
    split: list[Row],
    targets: list[Row],
    binary: Sequence[Row] = (),
    versus_mlserver: Sequence[Row] = (),
) -> str:
    """The figures as a compact text table: every cell, the large requests, the verdicts."""
    lines = [f"{'server':<22}{'model':<10}{'rows':>5}{'conc':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'batch':>7}{'errors':>7}"]  # fmt: skip
    for (server, model, rows, clients), cell in cells.items():
        lines.append(
            f"{server:<22}{model:<10}{rows:>5}{clients:>6}{cell['requests_per_s']:>9.0f}"
            f"{shown(cell['p50_ms']):>9}{shown(cell['p99_ms']):>9}"
            f"{shown(cell.get('avg_batch_rows')):>7}{cell['errors']:>7}"
        )
    for row in binary:
        lines.append(
            f"{row['model']}, 100-row requests, {row['concurrency']} clients: binary tensors "
            f"{shown(row['binary_requests_per_s'])} req/s (p50 {shown(row['binary_p50_ms'])} ms), "
            f"JSON {shown(row['json_requests_per_s'])} req/s (p50 {shown(row['json_p50_ms'])} ms): "
            f"{shown(row['speedup_binary'])}x [>= {row['binary_target']:g}: {row['binary_verdict']}]"
        )
    for row in split:
        lines.append(
            f"mlp, one request of {row['request_rows']} rows at a time: "
            f"in the server process {shown(row['in_server_requests_per_s'])} req/s "
            f"(p50 {shown(row['in_server_p50_ms'], 4)} ms); on 2 workers "
            f"{shown(row['workers2_requests_per_s'])} req/s (p50 {shown(row['workers2_p50_ms'], 4)} ms)"
        )
    for row in targets:
        lines.append(
            f"targets, {row['model']}, 1-row requests: at 64 clients "
            f"{shown(row['speedup_c64'])}x (b) [>= {row['speedup_target']:g}: {row['speedup_verdict']}], "
            f"{shown(row['fraction_of_floor_c64'])}x the floor "
            f"[>= {row['floor_target']:g}: {row['floor_verdict']}], "
            f"p99 {shown(row['p99_ms_c64'])} ms "
            f"[<= (b)'s {shown(row['p99_limit_ms_c64'])}: {row['p99_verdict']}]; "
            f"at 1 client p50 {shown(row['p50_ms_c1'])} ms "
            f"[<= (b)'s + {MAX_WAIT_MS:g} = {shown(row['p50_limit_ms_c1'])}: {row['p50_verdict']}]"
        )
    for row in versus_mlserver:
        at = {
            key.removeprefix("speedup_c"): value for key, value in row.items() if key.startswith("speedup_c")
        }
        if row["speedup_min"] is None and None in at.values():
            lines.append(
                f"{row['model']}, {row['request_rows']}-row requests: MLServer {row['mlserver_status']}"
            )
            continue
        lines.append(
            f"against {row['mlserver_status']}, {row['model']}, {row['request_rows']}-row requests: "
            f"paragrad at {', '.join(shown(value) for value in at.values())}x its req/s "
            f"with {', '.join(at)} clients [>= {shown(row['target'])} at each: {row['verdict']}]; "
            f"same answers: {shown(row['same_answers_as_mlserver'])}"
        )
    return "\n".join(lines)
