"""``paragrad bench`` runs its suites and writes figures with their baselines (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import run_cli


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
    import paragrad.cli_parser

    assert set(paragrad.bench.SUITES) == set(paragrad.cli_parser.BENCH_SUITES)
    assert len(paragrad.cli_parser.BENCH_SUITES) == len(paragrad.bench.SUITES)


def test_cli_does_not_load_the_benchmarks():
    code = "import sys, paragrad.cli; print([m for m in sys.modules if m.startswith('paragrad.bench')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
