"""``paragrad bench`` runs its suites and writes figures with their baselines (no timing asserts)."""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli

from paragrad.data import make_classification


def tiny_model_file(path):
    """A logistic regression on 4 features with fixed parameters, saved to ``path``."""
    from paragrad.models import LogisticRegression

    model = LogisticRegression()
    model.setup(4, np.arange(2))
    model.params_ = np.linspace(-1, 1, model.num_params)
    model.save(path)
    return model


def assert_ratios(rows):
    """Each e2e row's ratio is ours over the baseline's, and its verdict follows its target."""
    for row in rows:
        assert row["ratio"] == row["ours_s"] / row["baseline_s"] > 0
        assert row["met"] == (row["ratio"] <= row["target_ratio"])


def test_bench_writes_results_with_baselines(tmp_path):
    result = run_cli("bench", "--quick", "--suite", "latency", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["cores"] >= 1 and results["quick"] is True
    rows = results["results"]
    assert [row["d"] for row in rows] == [100, 1_000_000]
    for row in rows:
        assert row["local_median_s"] > 0 and row["pipe_median_s"] > 0
        assert row["ratio_pipe_over_local"] == row["pipe_median_s"] / row["local_median_s"]


def test_cli_names_the_same_suites_as_the_registry():
    import paragrad.bench
    import paragrad.cli.parser

    assert set(paragrad.bench.SUITES) == set(paragrad.cli.parser.BENCH_SUITES)
    assert len(paragrad.cli.parser.BENCH_SUITES) == len(paragrad.bench.SUITES)


def test_cli_does_not_load_the_benchmarks():
    code = "import sys, paragrad.cli; print([m for m in sys.modules if m.startswith('paragrad.bench')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_serve_load_generator_measures_a_baseline_server_and_stops_it():
    pytest.importorskip("uvicorn")
    from paragrad.bench.serve_load import Load, LoadGenerator
    from paragrad.bench.serve_servers import baseline_command, running

    with LoadGenerator() as generator, running(baseline_command("floor", {})) as port:
        load = Load(port, "any", 1, 4, concurrency=4, warmup_s=0.1, measure_s=0.3, max_requests=200)
        result = generator.run(load)
    assert result["errors"] == 0 and 0 < result["requests"] <= 200
    assert result["requests_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
    with pytest.raises(ConnectionRefusedError):  # the server was stopped
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_serve_baseline_answers_as_paragrad_serve_does(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    from paragrad.bench.serve_servers import baseline_command, predicted_labels, running

    data = make_classification(200, 4, seed=1)
    model = LogisticRegression().fit(data.X, data.y.astype(int))
    with open(tmp_path / "m.pkl", "wb") as handle:
        pickle.dump(model, handle)
    with running(baseline_command("fastapi", {"m": tmp_path / "m.pkl"})) as port:
        labels = predicted_labels(port, "m", 5, 4)
    expected = model.predict(np.random.default_rng(0).standard_normal((5, 4)))
    assert labels == expected.tolist()


def test_serve_targets_are_judged_against_the_better_baseline():
    from paragrad.bench.serve_report import FASTAPI, best, cell_rows, target_rows

    def cell(rate, p50, p99):
        return {"requests": 100, "requests_per_s": rate, "p50_ms": p50, "p99_ms": p99, "errors": 0}

    cells = {}
    for clients in (1, 8, 64):
        cells["floor", "-", 1, clients] = cell(10_000.0, 0.1, 0.2)
        for model in ("logistic", "mlp"):
            cells["paragrad", model, 1, clients] = {**cell(4000.0, 0.5, 20.0), "avg_batch_rows": 8.0}
            cells["fastapi", model, 1, clients] = cell(1000.0, 0.9, 30.0)
            cells["fastapi_async", model, 1, clients] = cell(2500.0, 0.4, 10.0)
    rows = cell_rows(cells, "not installed")
    assert rows[0]["fastapi_requests_per_s"] == 2500.0 and rows[0]["fastapi_p99_ms"] == 10.0
    targets = target_rows(rows, {"logistic": True, "mlp": True})
    assert targets[0]["speedup_c64"] == 1.6 and targets[0]["speedup_verdict"] == "not met"
    assert targets[0]["floor_verdict"] == "not met"  # 0.4 of the floor
    assert targets[0]["p99_verdict"] == "not met"  # 20 ms against the async variant's 10
    assert targets[0]["p50_limit_ms_c1"] == 0.4 + 2.0 and targets[0]["p50_verdict"] == "met"
    assert best({}, FASTAPI, "mlp", 1, 64)["requests_per_s"] is None  # FastAPI not installed: no (b)


def test_serve_rows_put_paragrad_over_mlserver_at_every_client_count():
    from paragrad.bench.serve_report import cell_rows, mlserver_rows

    def cell(rate):
        return {"requests": 100, "requests_per_s": rate, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}

    cells = {}
    for rows, clients in [(1, 1), (1, 64), (100, 1), (100, 64)]:
        cells["floor", "-", rows, clients] = cell(10_000.0)
        cells["paragrad", "m", rows, clients] = {**cell(3000.0), "avg_batch_rows": 1.0}
        cells["mlserver", "m", rows, clients] = cell(1000.0 if clients == 1 else 2500.0)
        cells["mlserver_inproc_batch", "m", rows, clients] = cell(1500.0)
    summary = mlserver_rows(cell_rows(cells, "MLServer 1.7.1"), {"m": True})
    assert [(row["request_rows"], row["speedup_c1"], row["speedup_c64"]) for row in summary] == [
        (1, 2.0, 1.2),  # the better variant in each cell: batched at 1 client, plain at 64
        (100, 2.0, 1.2),
    ]
    assert [row["verdict"] for row in summary] == ["not met", "not met"]  # 3x at 1 row, 1.5x at 100
    absent = cell_rows(
        {key: value for key, value in cells.items() if "mlserver" not in key[0]}, "not installed"
    )
    assert {row["mlserver_verdict"] for row in absent} == {"n/a"}
    assert mlserver_rows(absent, {})[0]["mlserver_status"] == "not installed"


def test_serve_suite_measures_paragrad_beside_every_baseline_at_tiny_size(tmp_path):
    pytest.importorskip("uvicorn")
    import contextlib

    from paragrad.bench import serve_suite as suite
    from paragrad.bench.serve_load import LoadGenerator
    from paragrad.bench.serve_report import cell_rows, mlserver_rows

    tiny_model_file(tmp_path / "m.npz")
    plan = suite.Plan(models=("m",), features=4, clients=(1, 2), warmup_s=0.05, measure_s=0.15)
    with contextlib.ExitStack() as servers, LoadGenerator() as generator:
        ports, mlserver = suite.start_servers(servers, {"m": tmp_path / "m.npz"}, {}, tmp_path, quick=True)
        same = suite.same_answers(ports, plan)
        cells = suite.matrix(generator, ports, plan)
        binary = suite.binary_rows(generator, ports["paragrad"], plan)
    rows = cell_rows(cells, mlserver)
    assert [(row["request_rows"], row["concurrency"]) for row in rows] == [(1, 1), (1, 2), (100, 1), (100, 2)]
    for row in rows:
        assert row["errors"] == 0 and row["requests_per_s"] > 0 and row["floor_requests_per_s"] > 0
        if "mlserver" in ports:
            assert row["speedup_over_mlserver"] == row["requests_per_s"] / row["mlserver_requests_per_s"]
        else:
            assert row["mlserver_requests_per_s"] is None and row["mlserver_status"].startswith(
                "not installed"
            )
    assert same["m"] == {"fastapi": None, "mlserver": True if "mlserver" in ports else None}
    assert len(mlserver_rows(rows, {})) == 2
    assert [row["concurrency"] for row in binary] == [1, 2]
    assert all(row["errors"] == 0 and row["speedup_binary"] > 0 for row in binary)


def test_the_gd_step_benchmark_runs_against_the_strategies_of_today():
    # The suites drive engines and strategies directly: a renamed call broke
    # `paragrad bench` (the gd_step suite) with no test to tell.
    from paragrad.bench.common import linear_gd_step
    from paragrad.core.shards import plan_shards
    from paragrad.data import Dataset
    from paragrad.engines import make_engine

    X = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [2.0, 0.0]])
    with make_engine("serial", 2) as engine:
        engine.start(Dataset(X, np.zeros(4)), plan_shards(4, 2))
        step = linear_gd_step(engine, 2)
        step()


def test_the_elastic_suite_reports_each_change_with_its_cost():
    from paragrad.bench.elastic_suite import _change_rows
    from paragrad.engines.serial import SerialEngine

    with SerialEngine(2) as engine:
        rows = _change_rows("serial", engine, make_classification(2000, 5, seed=0), bandwidth=1e10)
    assert [(row["change"], row["cause"]) for row in rows] == [
        ("2->1", "resize, waiting for its start"),
        ("1->2", "resize, waiting for its start"),
        ("2->1", "resize, waiting for its start"),
        ("1->2", "resize, its start overlapping rounds"),
    ]
    for row in rows:
        assert row["cost_s"] == row["change_s"] + row["next_round_delay_s"]
        assert row["moved_bytes"] == 1000 * 5 * 8 and row["moved_copy_s"] == row["moved_bytes"] / 1e10
        assert row["ratio_to_round_plus_copy"] == row["cost_s"] / (row["round_s"] + row["moved_copy_s"])


def test_the_e2e_suite_measures_every_row_against_its_baseline(tmp_path):
    from paragrad.bench import e2e_suite as e2e

    logistic = e2e._logistic_rows(3000, 1, warm=True)
    peers = list(e2e._peers(np.zeros((2, 1)), np.zeros(2)))  # scikit-learn-intelex, glum: when installed
    beside = logistic[1:-2]  # each peer, then the fastest of them
    assert [row["baseline"] for row in beside[: len(peers)]] == peers
    assert all(abs(row["loss_minus_baseline"]) < 1e-3 for row in beside[: len(peers)])
    assert [row["target_ratio"] for row in beside[len(peers) :]] == ([0.8] if peers else [])
    rows = [
        logistic[0],
        *logistic[-2:],
        e2e._cross_validation_row(3000, 1),
        *e2e._mlp_rows(3000, 1),
        e2e._csv_row(2000, 1, tmp_path),
        e2e._csv_row(200, 1, tmp_path, num_features=5),
        *e2e._predict_row(3000, tmp_path, 1),
        *e2e._mmap_rows([3000, 6000], tmp_path),
    ]
    assert len(rows) == 14
    assert "peak_over_data" not in rows[-4]  # a small file's peak is the interpreter's
    assert not list(tmp_path.glob("X*.npy")) and not (tmp_path / "P.npy").exists()  # the big files go
    assert_ratios(rows)
    assert abs(rows[0]["loss_minus_baseline"]) < 1e-3  # the same answer as scikit-learn's
    assert rows[2]["cold_s"] > 0 and rows[2]["release_s"] >= 0
    assert all(row["coordinator_peak_gb"] > 0 for row in rows[-2:])


def _stand_in(name: str, listed: bool):
    """A row function that gives its own name: a list of one row, or one row."""

    def row(*args, **options):
        return [{"row": name}] if listed else {"row": name, **options}

    return row


def test_paragrad_bench_e2e_runs_every_row(monkeypatch):
    """Each row's function is part of ``paragrad bench --suite e2e``, the small CSV row too."""
    from paragrad.bench import e2e_suite as e2e

    names = [
        "_logistic_rows",
        "fresh_process_row",
        "_cross_validation_row",
        "_mlp_rows",
        "small_rows",
        "grid_search_rows",
        "checkpoint_row",
        "_csv_row",
        "_predict_row",
        "_mmap_rows",
    ]
    for name in names:
        listed = name not in {"_cross_validation_row", "fresh_process_row", "checkpoint_row", "_csv_row"}
        monkeypatch.setattr(e2e, name, _stand_in(name, listed))
    rows = e2e.bench_e2e(quick=True)
    assert {row["row"] for row in rows} == set(names)
    assert {"num_features": 5, "row": "_csv_row"} in rows


def test_the_fixed_cost_rows_time_small_data_grid_searches_and_checkpoints():
    from paragrad.bench import fixed_costs

    small = fixed_costs.small_rows(1)
    assert [row["baseline"] for row in small] == ["statsmodels Logit.fit"] * 2 + ["statsmodels OLS.fit"]
    assert all(row["params_relative_gap"] < 1e-6 for row in small)  # statsmodels' answer
    searches = fixed_costs.grid_search_rows(1)
    assert [row["row"].split(", ")[-1] for row in searches] == ["n_jobs=None", "n_jobs=-1"]
    checkpoints = fixed_costs.checkpoint_row(20_000, 1)
    assert checkpoints["checkpoints"] == 6 and checkpoints["same_params"]  # 5 rounds, and the last
    fresh = fixed_costs.fresh_process_row(3000, 2)  # two processes of each, taking turns
    assert len(fresh["ours_runs"]) == len(fresh["baseline_runs"]) == 2
    assert fresh["ours_s"] == min(fresh["ours_runs"]) and fresh["baseline_s"] == min(fresh["baseline_runs"])
    assert_ratios([*small, *searches, checkpoints, fresh])


def test_serve_load_generator_measures_binary_tensors_beside_json(tmp_path):
    pytest.importorskip("uvicorn")
    from paragrad.bench.serve_load import Load, LoadGenerator
    from paragrad.bench.serve_servers import paragrad_command, running

    tiny_model_file(tmp_path / "m.npz")
    with LoadGenerator() as generator, running(paragrad_command({"m": tmp_path / "m.npz"})) as port:
        results = [
            generator.run(Load(port, "m", 100, 4, 2, 0.1, 0.3, 100, binary=binary))
            for binary in (False, True)
        ]
    for result in results:
        assert result["errors"] == 0 and result["requests"] > 0


def test_the_engine_suite_measures_every_place_and_the_choice():
    from paragrad.bench.engine_suite import bench_engine
    from paragrad.engines.forked import can_fork

    rows = bench_engine(quick=True)
    assert [row["row"] for row in rows] == ["logistic 500 x 10", "logistic 2000 x 10"]
    for row in rows:
        assert row["in_process_s"] > 0 and row["local_cold_s"] > 0 and row["local_warm_s"] > 0
        assert row["threads_s"] > 0 and (row["forked_s"] > 0 if can_fork() else row["forked_s"] is None)
        assert row["auto_cold"] == row["auto_warm"] == "serial"  # far below both thresholds
        assert row["met"] == (row["faster_cold"] == "serial" and row["faster_warm"] == "serial")


def test_mlserver_answers_paragrads_model_file_as_paragrad_does(tmp_path):
    from paragrad.bench.serve_mlserver import mlserver_executable, mlserver_running
    from paragrad.bench.serve_servers import predicted

    executable, why = mlserver_executable()
    if executable is None:
        pytest.skip(f"MLServer {why}")
    model = tiny_model_file(tmp_path / "m.npz")
    with mlserver_running(executable, {"m": tmp_path / "m.npz"}, tmp_path / "repository") as port:
        answers = predicted(port, "m", 5, 4)
    X = np.random.default_rng(0).standard_normal((5, 4))  # the rows of the request body
    assert answers["predict"] == model.predict(X).tolist()
    assert answers["proba"] == model.predict_proba(X).ravel().tolist()  # bit for bit
    with pytest.raises(ConnectionRefusedError):  # the server was stopped
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_mlserver_not_installed_is_said_not_raised(tmp_path, monkeypatch):
    from paragrad.bench.serve_mlserver import NOT_INSTALLED, mlserver_executable

    monkeypatch.setenv("PARAGRAD_MLSERVER", str(tmp_path / "missing"))
    executable, why = mlserver_executable()
    assert executable is None and str(tmp_path / "missing") in why
    monkeypatch.delenv("PARAGRAD_MLSERVER")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert mlserver_executable() == (None, NOT_INSTALLED)
