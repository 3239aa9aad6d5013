"""``paragrad bench`` runs its suites and writes figures with their baselines (no timing asserts)."""

from __future__ import annotations

import json

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
