"""The Ray engine against a real Ray: a local instance, and a head joined by its address."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import relative_error, run_cli
from test_engines import MODELS, STRATEGIES, Boom, data_for

import paragrad as pg
from paragrad.core.shards import default_workers, plan_shards
from paragrad.engines import Task
from paragrad.inference import predict_to_file

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from paragrad.engines.base import ROUND_TIMEOUT_S  # noqa: E402
from paragrad.engines.ray import PUT_BYTES, RayEngine  # noqa: E402


@pytest.fixture(scope="module")
def ray_engine():
    """Two actors on a local Ray instance, started once for this module and then stopped."""
    with RayEngine(workers=2) as engine:
        yield engine
    assert not ray.is_initialized()


def fit(engine, kind="logistic", strategy="gd", data=None, **options):
    settings = dict(workers=2, epochs=3, standardize=True, seed=3, tol=0)
    return pg.train(
        MODELS[kind](),
        data_for(kind) if data is None else data,
        strategy=STRATEGIES[strategy](),
        engine=engine,
        **(settings | options),
    )


# -- the same answers as the serial engine ----------------------------------------------------


def test_the_defaults_give_statsmodels_fit_on_ray_as_on_the_serial_engine(ray_engine):
    realdata = pytest.importorskip("realdata")
    pytest.importorskip("statsmodels")
    from test_exact import MODELS as EXACT_MODELS
    from test_exact import assert_matches

    for name in realdata.CASES:
        case = realdata.load(name)
        data = pg.Dataset(case.X, case.y)
        run = pg.train(EXACT_MODELS[case.kind](), data, engine=ray_engine, workers=2)
        serial = pg.train(EXACT_MODELS[case.kind](), data, engine="serial", workers=2)
        assert_matches(case, run.params)
        assert relative_error(run.params, serial.params) <= 1e-12


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", MODELS)
def test_ray_gives_the_serial_parameters(kind, strategy, ray_engine):
    on_ray, serial = fit(ray_engine, kind, strategy), fit("serial", kind, strategy)
    assert on_ray.engine == "ray" and on_ray.num_workers == 2
    assert relative_error(on_ray.params, serial.params) <= 1e-12


def test_ray_predicts_in_input_order(ray_engine):
    data = pg.make_classification(1001, 4, num_classes=3, seed=1)
    run = pg.train(pg.models.SoftmaxRegression(), data, engine="serial", workers=2, epochs=5, tol=0)
    expected = run.model.predict_proba(data.X)
    np.testing.assert_array_equal(pg.predict(run.model, data.X, engine=ray_engine, proba=True), expected)
    np.testing.assert_array_equal(
        pg.predict(run.model, data.X, engine=ray_engine), np.argmax(expected, axis=1)
    )


def test_shuffled_and_sparse_data_give_the_serial_parameters(ray_engine):
    shuffled = dict(strategy="sgd", shuffle=True)
    assert relative_error(fit(ray_engine, **shuffled).params, fit("serial", **shuffled).params) <= 1e-12
    sparse = pg.data.make_sparse_classification(400, 50, density=0.05, seed=2)
    assert sparse.sparse
    common = dict(data=sparse, standardize=False)
    assert relative_error(fit(ray_engine, **common).params, fit("serial", **common).params) <= 1e-12


# -- where the actors find their rows -----------------------------------------------------------


class ShardOrigin(Task):
    """Where a worker's features live: the type of the buffer under them, and whether
    the worker owns a copy."""

    def __call__(self, shard):
        base = shard.X
        while getattr(base, "base", None) is not None:
            base = base.base
        base = base.obj if isinstance(base, memoryview) else base
        return type(base).__name__, bool(shard.X.flags.owndata), bool(shard.X.flags.writeable)


def test_in_memory_shards_are_read_from_the_object_store_without_a_copy(tmp_path, ray_engine):
    data = pg.make_regression(200, 3, seed=0)
    pg.save_dataset(data, tmp_path / "d.csv")
    loaded = pg.load(tmp_path / "d.csv", target="y")  # in this machine's shared memory
    assert loaded.storage is not None
    for dataset in (data, loaded):
        ray_engine.start(dataset, plan_shards(200, 2))
        for origin, owns, writeable in ray_engine.run(ShardOrigin()):
            # a read-only view of the object store, not a file other nodes cannot see
            assert origin != "mmap" and not owns and not writeable, origin


def test_npy_features_are_mapped_by_each_actor_from_the_file(tmp_path, ray_engine):
    data = pg.make_regression(500, 4, seed=0)
    np.save(tmp_path / "X.npy", data.X)
    mapped = pg.Dataset(pg.load(tmp_path / "X.npy").X, data.y)
    ray_engine.start(mapped, plan_shards(500, 2))
    assert ray_engine.run(ShardOrigin()) == [("mmap", False, False)] * 2
    options = dict(strategy="sgd", standardize=False)
    assert (
        relative_error(
            fit(ray_engine, "linear", data=mapped, **options).params,
            fit("serial", "linear", data=data, **options).params,
        )
        <= 1e-12
    )


def test_a_lazy_parquet_file_is_read_by_the_actors_not_by_the_coordinator(tmp_path, ray_engine, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = data_for("logistic")
    columns = {f"f{j}": data.X[:, j] for j in range(data.num_features)}
    pq.write_table(pa.table({**columns, "y": data.y}), tmp_path / "d.parquet", row_group_size=16)
    lazy = pg.load(tmp_path / "d.parquet", target="y", lazy=True)
    references = {name: fit("serial", data=data, **options) for name, options in LAZY_RUNS.items()}

    def no_reading_here(self, rows=None):
        raise AssertionError("the coordinator read rows of the file")

    monkeypatch.setattr(pg.data.TableFile, "read", no_reading_here)  # this process only
    for name, options in LAZY_RUNS.items():
        on_ray = fit(ray_engine, data=lazy, **options)
        assert relative_error(on_ray.params, references[name].params) <= 1e-12
    expected = on_ray.model.predict(data.X)
    np.testing.assert_array_equal(
        pg.predict(on_ray.model, tmp_path / "d.parquet", engine=ray_engine), expected
    )
    out = tmp_path / "p.npy"
    rows = predict_to_file(on_ray.model, tmp_path / "d.parquet", out, engine=ray_engine, chunk_rows=37)
    assert rows == data.num_rows
    np.testing.assert_array_equal(np.load(out), expected)


LAZY_RUNS = {"gd": dict(strategy="gd"), "shuffled sgd": dict(strategy="sgd", shuffle=True)}


def test_a_bad_row_in_a_lazy_file_is_named_by_the_worker_that_read_it(tmp_path, ray_engine):
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = np.arange(40, dtype=np.float64)
    values[31] = np.inf
    pq.write_table(pa.table({"a": values, "y": np.arange(40) % 2}), tmp_path / "d.parquet", row_group_size=8)
    lazy = pg.load(tmp_path / "d.parquet", target="y", lazy=True)
    with pytest.raises(
        pg.DataError, match=r"worker 1: .*d.parquet: 1 NaN, .* first at row 32, 'a' \(infinite\)"
    ):
        pg.train(pg.models.LogisticRegression(), lazy, engine=ray_engine, workers=2)


# -- failures ---------------------------------------------------------------------------------


class KillingRayEngine(RayEngine):
    """Kills worker 1's actor (``ray.kill``) just before each round in ``at`` is sent."""

    def __init__(self, *args, at: tuple[int, ...], **options) -> None:
        super().__init__(*args, **options)
        self.at, self.rounds = at, 0

    def run(self, task, *args):
        self.rounds += 1
        if self.rounds in self.at:
            ray.kill(self.actors[1])
        return super().run(task, *args)


def sgd_training(engine, model=None):
    return pg.train(
        model or pg.models.LogisticRegression(l2=0.01),
        pg.make_classification(1000, 6, seed=4),
        strategy=pg.SGD(batch_size=8),
        engine=engine,
        workers=2,
        epochs=1,
        standardize=True,  # a shard change the new actor must replay
        tol=0,
    )


def test_a_killed_actor_is_recreated_and_the_result_is_undisturbed():
    with KillingRayEngine(2, max_restarts=1, at=(30,)) as engine:
        disturbed = sgd_training(engine)
        assert engine.restarts == 1 and engine.rounds > 30
    assert relative_error(disturbed.params, sgd_training("serial").params) <= 1e-12


def test_large_parameters_go_through_the_object_store_and_survive_a_restart():
    def wide_mlp():
        return pg.models.MLP(hidden=(1500,), activation="tanh")  # 10,502 parameters: 84 KB a round

    with KillingRayEngine(2, max_restarts=1, at=(20,)) as engine:
        disturbed = sgd_training(engine, wide_mlp())
        assert engine.restarts == 1
    assert disturbed.params.nbytes >= PUT_BYTES
    assert relative_error(disturbed.params, sgd_training("serial", wide_mlp()).params) <= 1e-12


def test_without_restarts_a_killed_actor_stops_training_naming_worker_and_round():
    with KillingRayEngine(2, at=(10,)) as engine:
        with pytest.raises(pg.errors.WorkerLost, match=r"round \d+: worker 1 died \(its actor was killed\)"):
            sgd_training(engine)
        assert engine.actors == []  # the engine let go of every actor


def test_restarts_run_out():
    with KillingRayEngine(2, max_restarts=1, at=(10, 20)) as engine:
        with pytest.raises(
            pg.errors.WorkerLost, match=r"worker 1 died \(its actor was killed\) after 1 restart"
        ):
            sgd_training(engine)


def test_a_stopped_actor_is_lost_after_the_round_timeout_and_replaced(ray_engine):
    stopped: list[int] = []
    pids: list[int] = []

    def stop_worker_1(record: dict) -> None:
        if record["round"] == 0:
            pids[:] = ray_engine.pids  # asked while the actors still answer
        elif record["round"] == 3:
            stopped.append(pids[1])
            os.kill(pids[1], signal.SIGSTOP)

    options = dict(engine=ray_engine, workers=2, round_timeout_s=2, callbacks=[stop_worker_1])
    ray_engine.max_restarts = 1
    try:
        run = pg.train(pg.models.LogisticRegression(), DATA_400, **SGD_OPTIONS, **options)
        assert ray_engine.restarts == 1
    finally:
        ray_engine.max_restarts, ray_engine.round_timeout_s = 0, ROUND_TIMEOUT_S
    reference = pg.train(pg.models.LogisticRegression(), DATA_400, engine="serial", workers=2, **SGD_OPTIONS)
    assert relative_error(run.params, reference.params) <= 1e-12
    time.sleep(0.5)
    assert not psutil.pid_exists(stopped[0]) or psutil.Process(stopped[0]).status() == psutil.STATUS_ZOMBIE


DATA_400 = pg.make_classification(400, 4, seed=1)
SGD_OPTIONS = dict(strategy=pg.SGD(batch_size=32), optimizer=pg.optim.Adam(lr=0.05), epochs=2, tol=0, seed=0)


class Sleep(Task):
    def __call__(self, shard, seconds):
        time.sleep(seconds)
        return shard.worker


def test_an_actor_killed_while_it_computes_is_replaced_and_its_call_run_again(ray_engine):
    ray_engine.start(pg.make_regression(50, 2, seed=0), plan_shards(50, 2))
    ray_engine.max_restarts, before = ray_engine.restarts + 1, ray_engine.restarts
    victim = ray_engine.actors[1]
    killer = threading.Timer(0.3, ray.kill, args=(victim,))
    killer.start()
    assert ray_engine.run(Sleep(), 1.0) == [0, 1]
    killer.join()
    assert ray_engine.restarts == before + 1 and ray_engine.actors[1] != victim


def test_an_actor_that_died_between_runs_is_replaced_at_the_next_start(ray_engine):
    ray_engine.start(pg.make_regression(50, 2, seed=0), plan_shards(50, 2))
    before = ray_engine.restarts
    ray.kill(ray_engine.actors[0])
    time.sleep(0.5)
    ray_engine.start(pg.make_regression(60, 2, seed=0), plan_shards(60, 2))
    assert ray_engine.run(row_count) == [30, 30] and ray_engine.restarts == before


def test_an_exception_in_an_actor_names_the_worker_and_keeps_the_engine_usable(ray_engine):
    ray_engine.start(pg.make_regression(50, 2, seed=0), plan_shards(50, 2))
    with pytest.raises(pg.errors.WorkerError, match="worker 1 raised .*ValueError: boom"):
        ray_engine.run(Boom())
    assert ray_engine.run(row_count) == [25, 25]


def test_a_task_the_actors_cannot_import_is_named_with_what_to_do(tmp_path, ray_engine, monkeypatch):
    (tmp_path / "vanishing_task.py").write_text(
        "from paragrad.engines import Task\n\n\n"
        "class Count(Task):\n    def __call__(self, shard):\n        return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from vanishing_task import Count

    (tmp_path / "vanishing_task.py").unlink()  # gone before any actor imports it
    ray_engine.start(pg.make_regression(50, 2, seed=0), plan_shards(50, 2))
    with pytest.raises(
        pg.errors.WorkerError,
        match=r"cannot load the task in worker 0 \(No module named "
        r"'vanishing_task'\): the classes a run uses must be importable on every node",
    ):
        ray_engine.run(Count())
    assert ray_engine.run(row_count) == [25, 25]


def test_a_data_file_an_actor_cannot_see_is_named(tmp_path, ray_engine):
    np.save(tmp_path / "X.npy", np.ones((40, 3)))
    mapped = pg.Dataset(pg.load(tmp_path / "X.npy").X, np.zeros(40))
    (tmp_path / "X.npy").unlink()  # still mapped here, as on a coordinator the nodes cannot see
    with pytest.raises(pg.DataError, match=r"worker 0: .*X.npy: not found where worker 0 runs; on a cluster"):
        ray_engine.start(mapped, plan_shards(40, 2))


def row_count(shard):
    return shard.num_rows


# -- the network: loopback only ----------------------------------------------------------------


def listeners(pids: set[int]) -> set[tuple[str, int]]:
    """The TCP addresses the given processes listen on."""
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    }


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def family(pid: int) -> set[int]:
    process = psutil.Process(pid)
    return {pid} | {child.pid for child in process.children(recursive=True)}


def test_the_local_instance_listens_on_loopback_only(ray_engine):
    ray_engine.start(pg.make_regression(50, 2, seed=0), plan_shards(50, 2))
    bound = listeners(family(os.getpid()))
    assert bound, "a running Ray instance listens somewhere"
    assert all(is_loopback(ip) for ip, _ in bound), bound


LOCAL_INSTANCE_SCRIPT = """
import json, os, time
import psutil, ray
import paragrad as pg
from paragrad.core.shards import plan_shards
from paragrad.engines.ray import RayEngine
from test_engines import BlasThreads

def listening():
    family = {os.getpid()} | {child.pid for child in psutil.Process().children(recursive=True)}
    return sorted({c.laddr.ip for c in psutil.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN and c.pid in family})

with RayEngine(cpus_per_worker=2) as engine:
    engine.start(pg.make_regression(40, 2, seed=0), plan_shards(40, engine.num_workers))
    report = {"workers": engine.num_workers, "threads": [sorted(t) for t in engine.run(BlasThreads())],
              "listening": listening()}
deadline = time.monotonic() + 30
while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
    time.sleep(0.2)
report["connected_after"] = ray.is_initialized()
report["processes_after"] = len(psutil.Process().children(recursive=True))
print(json.dumps(report))
"""


def test_a_local_instance_listens_on_loopback_even_without_the_setting_and_stops_after(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", LOCAL_INSTANCE_SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["workers"] == max(1, default_workers() // 2)  # as many as the instance's CPUs allow
    assert report["threads"] == [[2]] * report["workers"]  # CPUs per worker = its BLAS threads
    assert report["listening"] and all(is_loopback(ip) for ip in report["listening"]), report
    assert not report["connected_after"] and report["processes_after"] == 0


OWN_CONNECTION_SCRIPT = """
import ray
import paragrad as pg
ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
data = pg.make_regression(80, 2, seed=0)
run = pg.train(pg.models.LinearRegression(), data, engine="ray", workers=2)
print(len(run.history), ray.is_initialized())
try:
    pg.train(pg.models.LinearRegression(), data, engine="ray", address="127.0.0.1:9")
except pg.ConfigError as exc:
    print(exc)
ray.shutdown()
"""


KILLED_COORDINATOR_SCRIPT = """
import time
import paragrad as pg
from paragrad.engines.ray import RayEngine
from paragrad.core.shards import plan_shards

engine = RayEngine(1)
engine.start(pg.make_regression(40, 2, seed=0), plan_shards(40, 1))
print("started", flush=True)
time.sleep(300)
"""


def test_a_killed_coordinator_leaves_none_of_its_ray_instance_running():
    coordinator = subprocess.Popen(
        [sys.executable, "-c", KILLED_COORDINATOR_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert coordinator.stdout.readline().strip() == "started"
        ray_processes = psutil.Process(coordinator.pid).children(recursive=True)
        names = " ".join(_name(process) for process in ray_processes)
        assert "raylet" in names and "DashboardAgent" in names  # what used to linger
    finally:
        coordinator.kill()
        coordinator.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [process for process in ray_processes if _still_running(process)]
        if not left:
            break
        time.sleep(0.2)
    assert not left, [process.name() for process in left]


def _name(process: psutil.Process) -> str:
    """A process's name; nothing for one that has ended since it was listed."""
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return ""


def _still_running(process: psutil.Process) -> bool:
    """Whether a process runs (not a zombie); one that ends while it is asked has ended."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_connection_the_program_made_itself_is_used_and_left_open():
    result = subprocess.run(
        [sys.executable, "-c", OWN_CONNECTION_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    trained, error = result.stdout.strip().splitlines()[-2:]
    assert trained.endswith(" True") and int(trained.split()[0]) >= 1
    assert error.startswith("this process is already connected to the Ray cluster at 127.0.0.1:")
    assert error.endswith(", not 127.0.0.1:9: call ray.shutdown() first to join another")


# -- a cluster joined by its address, as a cluster user does ---------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """``ray start --head --block`` as a child on 127.0.0.1; stopped by its process id."""
    port = free_port()
    ray_command = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [
            ray_command,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            "--num-cpus=2",
            f"--object-store-memory={100 * 2**20}",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Ray head did not start") from None
                time.sleep(0.1)
        yield head, f"127.0.0.1:{port}"
    finally:
        started = family(head.pid) if head.poll() is None else set()
        head.send_signal(signal.SIGTERM)  # ray start --block stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        for pid in started - {head.pid}:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def test_training_through_a_cluster_address_matches_the_serial_engine(tmp_path, ray_head):
    head, address = ray_head
    data = pg.make_classification(600, 5, seed=7)
    pg.save_dataset(data, tmp_path / "train.parquet")
    common = ("--target", "y", "--model", "logistic", "--workers", 2, "--epochs", 20, "--tol", 0)
    result = run_cli(
        "train",
        tmp_path / "train.parquet",
        *common,
        "--engine",
        "ray",
        "--address",
        address,
        "--out",
        tmp_path / "ray.npz",
    )
    assert result.returncode == 0, result.stderr
    assert "on ray engine, 2 workers" in result.stdout
    serial = run_cli(
        "train", tmp_path / "train.parquet", *common, "--engine", "serial", "--out", tmp_path / "serial.npz"
    )
    assert serial.returncode == 0, serial.stderr
    on_ray, reference = pg.load_model(tmp_path / "ray.npz"), pg.load_model(tmp_path / "serial.npz")
    assert relative_error(on_ray.params, reference.params) <= 1e-12

    bound = listeners(family(head.pid))
    assert bound and all(is_loopback(ip) for ip, _ in bound), bound


def test_predicting_through_ray_address_from_the_environment_keeps_input_order(tmp_path, ray_head):
    _, address = ray_head
    data = pg.make_regression(900, 4, seed=8)
    np.save(tmp_path / "X.npy", data.X)
    run = pg.train(pg.models.LinearRegression(), data, engine="serial", workers=2)
    run.save(tmp_path / "m.npz")
    env = {"RAY_ADDRESS": address}
    result = run_cli(
        "predict",
        tmp_path / "m.npz",
        tmp_path / "X.npy",
        "--engine",
        "ray",
        "--workers",
        2,
        "--out",
        tmp_path / "p.npy",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), run.model.predict(data.X))


def failed_training(tmp_path, *options: str | int, env: dict | None = None, before: str = "") -> str:
    """``paragrad train`` of a small CSV with ``options``, which must fail: its last line.

    ``before`` is Python run first in the same process.
    """
    pg.save_dataset(pg.make_regression(50, 2, seed=0), tmp_path / "d.csv")
    args = ["train", str(tmp_path / "d.csv"), "--target", "y", "--model", "linear", *map(str, options)]
    code = f"{before}\nimport sys\nfrom paragrad.cli import main\nsys.exit(main({args!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_asking_a_cluster_for_more_cpus_than_it_has_is_a_clear_error(tmp_path, ray_head):
    _, address = ray_head
    assert failed_training(tmp_path, "--engine", "ray", "--address", address, "--workers", 3) == (
        "paragrad: error: 3 workers with 1 CPU(s) each need 3 CPUs, but the Ray cluster has 2"
    )


def test_joining_without_the_clusters_token_is_a_clear_error(tmp_path, ray_head):
    _, address = ray_head
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray's own retries: 2 s instead of 20
    assert failed_training(tmp_path, "--engine", "ray", "--address", address, env=env) == (
        f"paragrad: error: cannot connect to the Ray cluster at {address}: Failed to connect to Ray "
        f"cluster at {address} (a cluster that requires a token needs RAY_AUTH_MODE=token and its token here)"
    )


# -- set-up errors --------------------------------------------------------------------------------


def test_without_ray_installed_the_engine_says_how_to_install_it(tmp_path):
    not_installed = "import sys; sys.modules['ray'] = None"  # as if Ray were not installed
    assert failed_training(tmp_path, "--engine", "ray", before=not_installed) == (
        "paragrad: error: the ray engine needs Ray: pip install 'paragrad[ray]'"
    )


def test_an_address_where_nothing_listens_fails_at_once(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    assert failed_training(tmp_path, "--engine", "ray", "--address", address) == (
        f"paragrad: error: cannot connect to the Ray cluster at {address}: Connection refused"
    )


def test_an_address_for_another_engine_is_refused(tmp_path):
    assert failed_training(tmp_path, "--address", "10.0.0.1:6379") == (
        "paragrad: error: --address joins a Ray cluster: add --engine ray"
    )


def test_actors_report_their_cpu_time_for_the_energy_estimate(ray_engine, tmp_path, monkeypatch):
    from paragrad.training.energy import watts_per_core

    monkeypatch.setenv("PARAGRAD_POWERCAP_ROOT", str(tmp_path))  # no counters: the estimate
    data = pg.make_classification(20_000, 20, seed=0)
    own_start = time.process_time()
    run = pg.train(
        pg.models.LogisticRegression(), data, strategy=pg.SGD(batch_size=512), engine=ray_engine, tol=0
    )
    own_cpu_s = time.process_time() - own_start
    assert run.cpu_s - own_cpu_s > 0  # the actors' own CPU seconds came back with their steps
    assert run.energy_j == pytest.approx(run.cpu_s * watts_per_core())
