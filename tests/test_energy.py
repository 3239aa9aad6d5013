"""The energy of a run: RAPL counters read from powercap, else CPU time times watts per core."""

from __future__ import annotations

import time

import numpy as np
import pytest
from serving import running

import paragrad as pg
from paragrad.training.energy import DEFAULT_WATTS_PER_CORE, EnergyMeter, counter_change, package_zones


def write_zone(root, name: str, energy_uj: int, max_uj: int = 262_143_328_850) -> None:
    zone = root / name
    zone.mkdir(exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")


@pytest.fixture
def powercap(tmp_path, monkeypatch):
    """A powercap tree of two packages, one with a part (dram) that must not count twice."""
    write_zone(tmp_path, "intel-rapl:0", 1_000_000)
    write_zone(tmp_path, "intel-rapl:0:0", 500_000)
    write_zone(tmp_path, "intel-rapl:1", 999_000_000, max_uj=1_000_000_000)
    (tmp_path / "intel-rapl").mkdir()  # the control type's own folder: no counter
    monkeypatch.setenv("PARAGRAD_POWERCAP_ROOT", str(tmp_path))
    return tmp_path


def test_counters_are_read_per_package_across_a_wrap(powercap):
    meter = EnergyMeter()
    assert meter.measured and len(meter.zones) == 2
    write_zone(powercap, "intel-rapl:0", 3_500_000)  # +2.5 J
    write_zone(powercap, "intel-rapl:0:0", 9_000_000)  # a part of package 0: not added
    write_zone(powercap, "intel-rapl:1", 4_000_000, max_uj=1_000_000_000)  # wrapped: +5 J
    assert meter.lap().energy_j == pytest.approx(7.5)
    write_zone(powercap, "intel-rapl:0", 4_500_000)
    assert meter.lap().energy_j == pytest.approx(1.0)
    assert meter.total().energy_j == pytest.approx(8.5)
    assert "RAPL counters of 2 CPU packages" in meter.describe()


def test_counter_change_wraps_at_the_range():
    assert counter_change(10, 25, 100) == 15
    assert counter_change(90, 5, 100) == 15


def test_unreadable_counters_are_no_counters(tmp_path, monkeypatch):
    write_zone(tmp_path, "intel-rapl:0", 1)
    (tmp_path / "intel-rapl:0" / "energy_uj").chmod(0)
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("not a number")
    assert package_zones(tmp_path) == []
    monkeypatch.setenv("PARAGRAD_POWERCAP_ROOT", str(tmp_path / "missing"))
    assert not EnergyMeter().measured


def test_a_run_reports_the_counters(powercap):
    run = pg.train(
        pg.models.LogisticRegression(), pg.make_classification(500, 4, seed=0), engine="serial", workers=1
    )
    assert run.energy_j == 0.0  # the fake counters did not move
    assert "RAPL counters" in run.energy_source and "energy" in run.summary()
    assert all(record["energy_j"] == 0.0 for record in run.history)


@pytest.mark.parametrize("engine", ["serial", "local"])
def test_the_estimate_is_cpu_seconds_times_the_watts(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("PARAGRAD_POWERCAP_ROOT", str(tmp_path / "none"))
    monkeypatch.setenv("PARAGRAD_WATTS_PER_CORE", "7.5")
    data = pg.make_classification(20_000, 20, seed=0)
    own_start = time.process_time()
    run = pg.train(
        pg.models.LogisticRegression(),
        data,
        strategy=pg.SGD(batch_size=512),
        engine=engine,
        workers=2,
        epochs=2,
        tol=0.0,
    )
    own_cpu_s = time.process_time() - own_start
    for record in run.history:
        assert record["energy_j"] == pytest.approx(record["cpu_s"] * 7.5, rel=1e-12)
    assert run.energy_j == pytest.approx(run.cpu_s * 7.5, rel=1e-12)
    rounds_cpu_s = sum(record["cpu_s"] for record in run.history)
    assert 0 < rounds_cpu_s <= run.cpu_s
    if engine == "serial":  # the workers' time is this process's own
        assert run.cpu_s <= own_cpu_s
    else:  # the worker processes reported theirs
        assert run.cpu_s - own_cpu_s > 0
    assert "estimate: CPU seconds x 7.5 W per busy core" in run.summary()


def test_the_default_watts_are_stated(monkeypatch, tmp_path):
    monkeypatch.setenv("PARAGRAD_POWERCAP_ROOT", str(tmp_path))
    monkeypatch.delenv("PARAGRAD_WATTS_PER_CORE", raising=False)
    meter = EnergyMeter()
    assert meter.watts == DEFAULT_WATTS_PER_CORE
    assert "Cloud Carbon Footprint" in meter.describe()
    monkeypatch.setenv("PARAGRAD_WATTS_PER_CORE", "-1")
    with pytest.raises(pg.ConfigError, match="PARAGRAD_WATTS_PER_CORE"):
        EnergyMeter()


def test_the_server_counts_its_energy(tmp_path):
    data = pg.make_classification(200, 3, seed=0)
    pg.train(pg.models.LogisticRegression(), data, engine="serial", workers=1).save(tmp_path / "m.npz")
    env = {"PARAGRAD_POWERCAP_ROOT": str(tmp_path / "none"), "PARAGRAD_WATTS_PER_CORE": "2"}
    with running(str(tmp_path / "m.npz"), env=env) as server:
        server.infer("m", np.zeros((4, 3)))
        status, _, text = server.call("GET", "/metrics")
    assert status == 200
    line = next(line for line in text.splitlines() if line.startswith("paragrad_energy_joules_total"))
    assert 'source="estimate"' in line and float(line.split()[-1]) > 0


def test_codecarbon_tracks_a_run():
    pytest.importorskip("codecarbon")
    tracker = pg.callbacks.CodeCarbon(country_iso_code="FRA")
    pg.train(
        pg.models.LogisticRegression(),
        pg.make_classification(500, 4, seed=0),
        engine="serial",
        workers=1,
        callbacks=[tracker],
    )
    assert tracker.energy_kwh is not None and tracker.energy_kwh >= 0
    assert tracker.emissions_kg is not None


def test_the_energy_bench_reports_joules_per_million_rows():
    from paragrad.bench.energy_suite import bench_energy

    rows = bench_energy(quick=True)
    assert [row["strategy"] for row in rows] == ["GradientDescent", "SGD", "LocalSGD"]
    for row in rows:
        assert row["j_per_million_rows"] == pytest.approx(row["energy_j"] / row["rows_trained"] * 1e6)
        assert row["energy_j"] > 0 and row["source"]
    assert rows[0]["ratio_to_gd"] == 1.0


def test_a_checkpoint_from_before_the_energy_keys_resumes(tmp_path):
    from paragrad.optim.first_order import AdamState
    from paragrad.training.checkpoint import TrainingState, load_latest_checkpoint, save_checkpoint
    from paragrad.training.run import HISTORY_KEYS

    old_keys = HISTORY_KEYS[:-2]  # as written before cpu_s and energy_j were recorded
    record = dict.fromkeys(old_keys, 1)
    state = AdamState(np.array(0), np.zeros(2), np.zeros(2))
    convergence = {"previous_epoch_loss": None, "num_epoch_losses": 1, "converged": False}
    save_checkpoint(tmp_path, TrainingState(1, np.zeros(2), state, [record], convergence, None, {}), old_keys)
    read = load_latest_checkpoint(tmp_path, HISTORY_KEYS, AdamState)
    assert read is not None and tuple(read.history[0]) == HISTORY_KEYS
    assert np.isnan(read.history[0]["energy_j"]) and read.history[0]["loss"] == 1.0
