"""`paragrad serve` as clients meet it: a real server in a child process on 127.0.0.1,
real HTTP requests, every answer checked against ``load_model(...).predict`` on the same rows."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serving import Server, outputs, port_from, running, stop, v2_body

import paragrad as pg

NUM_FEATURES = 5


def _save(model, path: Path, labels=None, seed: int = 0, names=None, num_features=NUM_FEATURES) -> Path:
    """``model`` set up for ``num_features`` features with random parameters and a standardisation."""
    rng = np.random.default_rng(seed)
    model.setup(num_features, labels, feature_names=names)
    model.params_ = 0.5 * rng.standard_normal(model.num_params)
    model.standardizer_ = pg.data.Standardizer(
        rng.standard_normal(num_features), rng.uniform(0.5, 2, num_features)
    )
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    names = tuple(f"f{i}" for i in range(NUM_FEATURES))
    return {
        "linear": _save(pg.models.LinearRegression(), folder / "linear.npz", names=names),
        "logistic": _save(pg.models.LogisticRegression(), folder / "logistic.npz", np.array(["no", "yes"])),
        "softmax": _save(pg.models.SoftmaxRegression(), folder / "softmax.npz", np.array([-1, 3, 7])),
        "mlp": _save(pg.models.MLP(hidden=(64,), task="regression"), folder / "mlp.npz"),
        "mlp_classifier": _save(pg.models.MLP(hidden=(40, 48)), folder / "mlp_classifier.npz", np.arange(4)),
        # the serving guide's example: `make demo`'s 20 features, two classes
        "model": _save(pg.models.LogisticRegression(), folder / "model.npz", np.arange(2), num_features=20),
    }


@pytest.fixture(scope="module")
def server(model_files) -> Iterator[Server]:
    specs = [f"{name}={path}" for name, path in model_files.items()]
    with running(*specs, "--max-rows", "1000", "--max-body-mb", "1", "--max-wait-ms", "20") as running_server:
        yield running_server


def file_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.mark.parametrize("name", ["linear", "logistic", "softmax", "mlp", "mlp_classifier"])
def test_every_family_answers_exactly_what_predict_gives(server, model_files, name):
    model = pg.load_model(model_files[name])
    X = np.random.default_rng(1).standard_normal((37, NUM_FEATURES)) * 3
    answer = server.infer(name, X, id="request-7", parameters={"note": "kept"})
    assert answer["model_name"] == name and answer["id"] == "request-7"
    assert answer["model_version"] == file_version(model_files[name])
    got = outputs(answer)
    np.testing.assert_array_equal(got["predict"], model.predict(X))
    assert got["predict"].dtype.kind == model.predict(X).dtype.kind  # labels in their own type
    if model.is_classifier:
        np.testing.assert_array_equal(got["proba"], model.predict_proba(X))
    # FP32 is the client's float32 rounding of its numbers, predicted as such
    rounded = X.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(outputs(server.infer(name, X, "FP32"))["predict"], model.predict(rounded))


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(tmp_path):
    # A model slow enough that requests arrive while a batch is predicted: they must share
    # the next batch, and each must still get exactly its own rows' predictions.
    path = _slow_model(tmp_path / "slow.npz")
    model = pg.load_model(path)
    rng = np.random.default_rng(2)
    requests = [rng.standard_normal((int(rng.integers(1, 9)), NUM_FEATURES)) for _ in range(120)]
    with running(str(path)) as server, ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda X: outputs(server.infer("slow", X)), requests))
        batches, rows = _batches(server, "slow")
    for X, got in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(got["predict"], model.predict(X))
        np.testing.assert_array_equal(got["proba"], model.predict_proba(X))
    assert rows == sum(len(X) for X in requests)
    assert batches < len(requests) / 2  # requests shared batches


def _batches(server: Server, model: str) -> tuple[float, float]:
    """How many batches the model has predicted, and their rows, from the metrics."""
    _, _, text = server.call("GET", "/metrics")
    values = {}
    for line in text.splitlines():
        for kind in ("count", "sum"):
            if line.startswith(f'paragrad_batch_rows_{kind}{{model="{model}"}}'):
                values[kind] = float(line.rsplit(" ", 1)[1])
    return values.get("count", 0.0), values.get("sum", 0.0)


def test_one_tensor_per_named_feature_and_the_v1_form_answer_the_same(server, model_files):
    model = pg.load_model(model_files["linear"])
    X = np.random.default_rng(3).standard_normal((4, NUM_FEATURES))
    columns = [
        {"name": f"f{i}", "shape": [4, 1], "datatype": "FP64", "data": X[:, i].tolist()}
        for i in reversed(range(NUM_FEATURES))
    ]
    status, _, answer = server.call("POST", "/v2/models/linear/infer", {"inputs": columns})
    assert status == 200, answer
    np.testing.assert_array_equal(outputs(answer)["predict"], model.predict(X))
    status, headers, answer = server.call("POST", "/v1/models/logistic:predict", {"instances": X.tolist()})
    assert status == 200, answer
    assert answer["predictions"] == pg.load_model(model_files["logistic"]).predict(X).tolist()
    assert headers["x-model-version"] == answer["model_version"] == file_version(model_files["logistic"])


def test_health_metadata_and_readiness(server, model_files):
    assert server.call("GET", "/v2/health/live")[2] == {"live": True}
    assert server.call("GET", "/v2/health/ready")[:1] == (200,)
    version = file_version(model_files["softmax"])
    for path in ("/v2/models/softmax", f"/v2/models/softmax/versions/{version}"):
        status, _, metadata = server.call("GET", path)
        assert status == 200
        assert metadata["name"] == "softmax" and metadata["versions"] == [version]
        assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, NUM_FEATURES]}]
        assert metadata["outputs"] == [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "proba", "datatype": "FP64", "shape": [-1, 3]},
        ]
        assert metadata["parameters"]["classes"] == [-1, 3, 7] and metadata["parameters"]["encoding"] is None
    assert server.call("GET", "/v2/models/softmax/ready")[2] == {"name": "softmax", "ready": True}
    assert server.call("GET", "/v2/models/logistic")[2]["outputs"][0]["datatype"] == "BYTES"
    assert server.call("GET", "/v2")[2]["name"] == "paragrad"
    names = [m["name"] for m in server.call("GET", "/v2/models")[2]["models"]]
    assert names == list(model_files)


def _tensor(shape, data, datatype="FP64", name="input-0") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def _per_feature(*names: str) -> dict:
    """One tensor per named feature, each holding the value 1."""
    return {"inputs": [{"name": name, "shape": [1], "datatype": "FP64", "data": [1]} for name in names]}


ROW = [0.5] * NUM_FEATURES
BAD_REQUESTS = [
    ("/v2/models/linear/infer", b"{not json", 400, "not valid JSON"),
    ("/v2/models/linear/infer", {"inputs": []}, 400, "'inputs'"),
    ("/v2/models/linear/infer", _tensor([1, 3], [1, 2, 3]), 400, "has 3 features, but the model takes 5"),
    ("/v2/models/linear/infer", _tensor([2, 5], ROW), 400, "needs 10 values, got 5"),
    (
        "/v2/models/linear/infer",
        b'{"inputs":[{"name":"x","shape":[1,5],"datatype":"FP64","data":[1,2,NaN,4,5]}]}',
        400,
        "NaN",
    ),
    (
        "/v2/models/linear/infer",
        b'{"inputs":[{"name":"x","shape":[1,5],"datatype":"FP64","data":[1,2,1e999,4,5]}]}',
        400,
        "infinity",
    ),
    ("/v2/models/linear/infer", _tensor([1, 5], ROW, "BYTES"), 400, "datatype 'BYTES' is not a number type"),
    (
        "/v2/models/linear/infer",
        _tensor([1, 5], ["a", 1, 2, 3, 4]),
        400,
        "not numbers (text, true/false or null)",
    ),
    ("/v2/models/linear/infer", _tensor([1], [1.0], name="f9") | {}, 400, "input 'f9' has 1 features"),
    (
        "/v2/models/linear/infer",
        _per_feature("f0", "f9"),
        400,
        "'f9' is not a feature",
    ),
    (
        "/v2/models/linear/infer",
        _per_feature("f0", "f1"),
        400,
        "features missing from the request: f2, f3, f4",
    ),
    (
        "/v2/models/mlp/infer",
        _tensor([2, 5], ROW * 2) | {"outputs": [{"name": "proba"}]},
        400,
        "output 'proba' is not one the model gives",
    ),
    ("/v2/models/linear/infer", _tensor([1001, 5], ROW * 1001), 413, "at most 1000"),
    ("/v2/models/linear/infer", b"[" + b"1," * 600_000 + b"1]", 413, "bytes"),
    ("/v2/models/nope/infer", _tensor([1, 5], ROW), 404, "no model named 'nope'"),
    ("/v2/models/linear/versions/0123/infer", _tensor([1, 5], ROW), 404, "no version '0123'"),
    ("/v1/models/linear:predict", {"instances": [[1, 2]]}, 400, "have 2 features, but the model takes 5"),
    ("/v2/nothing/here", {}, 404, "no such endpoint"),
    ("/v2/models/linear/infer", _tensor([1, 5], [1, 2, 3, True, 5]), 400, "holds true or false"),
    ("/v1/models/linear:predict", {"instances": [[1, 2, 3, 4, False]]}, 400, "holds true or false"),
    (  # found past many letters of the words' own (a true after 40 'u' and 'l')
        "/v2/models/linear/infer",
        {"id": "ul" * 20} | _tensor([1, 5], [1, 2, 3, True, 5]),
        400,
        "holds true or false",
    ),
    (
        "/v2/models/linear/infer",
        _tensor([True, 5], ROW),
        400,
        "'shape' must be a list of non-negative integers",
    ),
    ("/v2/models/linear/infer", _tensor([1, 5], ROW, ["FP64"]), 400, "is not a number type"),
    ("/v2/models/linear/infer", _tensor([1, 5], [None, 1, 2, 3, 4]), 400, "not numbers"),
    ("/v2/models/linear/infer", _tensor([1, 5], "5"), 400, "'data' must be a list of numbers"),
    ("/v2/models/linear/infer", _tensor([1, 5], [1.5, 1, 2, 3, 4], "INT64"), 400, "not int64 integers"),
    (
        "/v2/models/linear/infer",
        _tensor([1, 5], [1e300, 1, 2, 3, 4], "FP32"),
        400,
        "beyond the range of float32",
    ),
    ("/v2/models/linear/infer", _tensor([1, 5], [[1, 2], [3, 4, 5]]), 400, "nested unevenly"),
    (
        "/v2/models/linear/infer",
        _tensor([1, 6], [[1, 2, 3], [4, 5, 6]]),
        400,
        "nested as [2, 3], but its shape is [1, 6]",
    ),
    (
        "/v2/models/linear/infer",
        _tensor([1, 5], [1e308, -1e308, 1e308, 0, 0]),
        400,
        "not finite for these rows",
    ),
    (
        "/v2/models/linear/infer",
        _tensor([1, 5], ROW) | {"outputs": []},
        400,
        "'outputs' must name each output",
    ),
    (
        "/v2/models/linear/infer",
        _per_feature("f0", "f0", "f1"),
        400,
        "input 'f0' is given twice",
    ),
    ("/v2/models/" + "x" * 5000 + "/infer", _tensor([1, 5], ROW), 404, "x" * 80 + "...'"),
]


@pytest.mark.parametrize(("path", "body", "status", "reason"), BAD_REQUESTS)
def test_bad_requests_get_one_line_reasons_and_the_server_keeps_serving(server, path, body, status, reason):
    got_status, _, answer = server.call("POST", path, body)
    assert got_status == status, answer
    assert set(answer) == {"error"} and reason in answer["error"] and "\n" not in answer["error"]
    assert server.call("GET", "/v2/health/live")[0] == 200
    server.infer("linear", np.ones((1, NUM_FEATURES)))


def test_metrics_count_requests_by_code_and_report_versions(server, model_files):
    server.call("POST", "/v2/models/nope/infer", {})
    _, headers, text = server.call("GET", "/metrics")
    assert headers["content-type"].startswith("text/plain")
    assert 'paragrad_requests_total{code="404",endpoint="infer",model="-"}' in text
    assert 'paragrad_model_reloads_total{model="linear",outcome="failed"} 0.0' in text
    assert (
        f'paragrad_model_version{{model="linear",version="{file_version(model_files["linear"])}"}} 1.0'
        in text
    )
    for name in (
        "paragrad_request_seconds_bucket",
        "paragrad_queue_seconds_bucket",
        "paragrad_batch_rows_bucket",
    ):
        assert name in text


def test_a_replaced_model_file_is_served_without_failing_a_request(tmp_path):
    path = _save(pg.models.SoftmaxRegression(), tmp_path / "m.npz", np.arange(3), seed=1)
    first = pg.load_model(path), file_version(path)
    X = np.random.default_rng(4).standard_normal((3, NUM_FEATURES))
    answers: list[dict] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            answers.append(server.infer("m", X))

    with running(f"{path}", "--reload-interval", "0.05") as server:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            path.touch()  # the same model: looked at, not served again
            time.sleep(0.3)
            _save(pg.models.SoftmaxRegression(), path, np.arange(3), seed=2)  # written atomically
            second = pg.load_model(path), file_version(path)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (not answers or answers[-1]["model_version"] != second[1]):
                time.sleep(0.05)
            time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        reloads = 'paragrad_model_reloads_total{model="m",outcome="loaded"} 1.0'
        assert reloads in server.call("GET", "/metrics")[2]  # the touch did not count
    models = dict([reversed(first), reversed(second)])
    seen = [answer["model_version"] for answer in answers]
    assert seen[0] == first[1] and seen[-1] == second[1]
    for answer in answers:  # each answer is exactly the version it names
        np.testing.assert_array_equal(
            outputs(answer)["proba"], models[answer["model_version"]].predict_proba(X)
        )


def _slow_model(path: Path) -> Path:
    """An MLP that takes a noticeable time per row, for queues and draining."""
    return _save(pg.models.MLP(hidden=(1024, 1024)), path, np.arange(2))


def test_an_overfull_queue_answers_503_with_retry_after(tmp_path):
    path = _slow_model(tmp_path / "slow.npz")
    X = np.random.default_rng(5).standard_normal((1500, NUM_FEATURES))
    with running(str(path), "--max-queue", "1", "--max-batch", "1500") as server:
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(lambda _: server.call("POST", "/v2/models/slow/infer", v2_body(X)), range(8))
            )
    statuses = sorted(status for status, _, _ in replies)
    assert 503 in statuses and 200 in statuses, statuses
    for status, headers, answer in replies:
        if status == 503:
            assert headers["retry-after"] == "1" and "busy" in answer["error"]


def test_sigterm_drains_requests_in_flight_and_exits_0(tmp_path):
    path = _slow_model(tmp_path / "slow.npz")
    model = pg.load_model(path)
    X = np.random.default_rng(6).standard_normal((1500, NUM_FEATURES))
    with running(str(path), "--grace", "30", "--max-batch", "1500") as server:
        with ThreadPoolExecutor(4) as pool:
            replies = [
                pool.submit(server.call, "POST", "/v2/models/slow/infer", v2_body(X)) for _ in range(4)
            ]
            time.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            answers = [reply.result() for reply in replies]
        assert server.wait() == 0
        with pytest.raises(ConnectionError):
            server.call("GET", "/v2/health/live")
    for status, _, answer in answers:
        assert status == 200, answer
        np.testing.assert_array_equal(outputs(answer)["predict"], model.predict(X))


def test_a_token_is_required_when_given(model_files):
    token = "s3cret-token"
    with running(str(model_files["linear"]), env={"PARAGRAD_SERVE_TOKEN": token}) as server:
        body = v2_body(np.ones((1, NUM_FEATURES)))
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": token},
            {"Authorization": "Basic x"},
        ):
            status, reply_headers, answer = server.call("POST", "/v2/models/linear/infer", body, headers)
            assert (
                status == 401 and reply_headers["www-authenticate"] == "Bearer" and "token" in answer["error"]
            )
        assert server.call("GET", "/metrics")[0] == 401
        assert server.call("GET", "/v2/health/ready")[0] == 200  # probes need no token
        for scheme in ("Bearer", "bearer"):  # the scheme's case does not matter (RFC 7235)
            good = {"Authorization": f"{scheme} {token}"}
            assert server.call("POST", "/v2/models/linear/infer", body, good)[0] == 200


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "paragrad", "serve", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, "PARAGRAD_SERVE_TOKEN": ""}
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["{linear}", "--host", "0.0.0.0"],
            "binding 0.0.0.0 lets other machines reach the models: give --token",
        ),
        (["missing.npz"], "missing.npz: model file not found"),
        (["a={linear}", "a={logistic}"], "two models are named 'a'"),
        (["{linear}", "--max-wait-ms", "-1"], "--max-wait-ms must be a non-negative number"),
        (["{linear}", "--max-body-mb", "0"], "--max-body-mb must be above 0"),
        (["{data}"], "not a paragrad model file"),
        (["{linear}", "--cors", "evil.example"], "--cors takes an origin such as https://"),
    ],
)
def test_serve_refuses_bad_settings_with_one_line_before_binding(model_files, tmp_path, args, message):
    data = tmp_path / "data.npz"
    np.savez(data, X=np.ones(3))
    files = {name: str(path) for name, path in model_files.items()} | {"data": str(data)}
    result = _cli(*(arg.format(**files) for arg in args))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"paragrad: error: {result.stderr.split('error: ', 1)[1].strip()}"
    ]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "listening" not in result.stdout


def test_pg_serve_runs_the_same_server_from_python(model_files):
    code = (
        "import sys, paragrad as pg; "
        f"pg.serve({{'model': {str(model_files['softmax'])!r}}}, port=0, max_batch=8, access_log=False)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        server = Server(process, port_from(process))
        X = np.eye(NUM_FEATURES)
        got = outputs(server.infer("model", X))["predict"]
        np.testing.assert_array_equal(got, pg.load_model(model_files["softmax"]).predict(X))
        process.send_signal(signal.SIGINT)
        assert server.wait() == 0
        assert server.stderr == []  # no access log asked, nothing else to say
    finally:
        stop(process)


def test_every_request_gets_a_json_line_in_the_access_log(server, model_files):
    server.infer("softmax", np.ones((3, NUM_FEATURES)), id="logged")
    server.call("GET", "/v2/models/nope")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in list(server.stderr) if line.startswith("{")]
        infers = [r for r in records if r["path"] == "/v2/models/softmax/infer" and r["rows"] == 3]
        missing = [r for r in records if r["path"] == "/v2/models/nope"]
        if infers and missing:
            break
        time.sleep(0.05)
    assert set(infers[-1]) == {"time", "client", "method", "path", "status", "ms", "model", "version", "rows"}
    assert infers[-1]["status"] == 200 and infers[-1]["model"] == "softmax"
    assert infers[-1]["version"] == file_version(model_files["softmax"]) and infers[-1]["ms"] > 0
    assert infers[-1]["client"].startswith("127.0.0.1:")
    assert missing[-1]["status"] == 404 and missing[-1]["model"] is None


def test_the_serving_guides_curl_example_is_answered_as_shown(server, model_files):
    readme = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "serving.md").read_text()
    command = readme[readme.index("curl -s localhost:8000/v2/models/model/infer") :]
    body = json.loads(command.split("-d '", 1)[1].split("'", 1)[0])
    header = command.split("-H '", 1)[1].split("'", 1)[0]  # curl's own type would be a form's: 415
    name, _, value = header.partition(": ")
    status, _, answer = server.call("POST", "/v2/models/model/infer", body, {name: value})
    assert status == 200, answer
    assert answer["id"] == body["id"] and [o["name"] for o in answer["outputs"]] == ["predict", "proba"]
    X = np.array(body["inputs"][0]["data"]).reshape(body["inputs"][0]["shape"])
    np.testing.assert_array_equal(outputs(answer)["predict"], pg.load_model(model_files["model"]).predict(X))


def test_a_wrong_method_is_405_naming_the_methods(server):
    status, headers, answer = server.call("GET", "/v2/models/linear/infer")
    assert status == 405 and headers["allow"] == "POST" and "takes POST, not GET" in answer["error"]
    status, headers, answer = server.call("GET", "/v1/models/linear:predict")
    assert status == 405 and headers["allow"] == "POST"
    status, _, answer = server.call("OPTIONS", "/")
    assert status == 405 and "error" in answer


def test_a_stalled_upload_holds_back_no_reload(tmp_path):
    import socket

    first = _save(pg.models.LinearRegression(), tmp_path / "a.npz", seed=1)
    second = _save(pg.models.LinearRegression(), tmp_path / "b.npz", seed=2)
    with running(str(first), str(second), "--reload-interval", "0.05") as server:
        stalled = socket.create_connection(("127.0.0.1", server.port))
        try:  # a request to a whose body never finishes arriving
            stalled.sendall(
                b"POST /v2/models/a/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{"
            )
            time.sleep(0.2)
            _save(pg.models.LinearRegression(), first, seed=3)
            _save(pg.models.LinearRegression(), second, seed=4)
            wanted = {"a": file_version(first), "b": file_version(second)}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                got = {name: server.call("GET", f"/v2/models/{name}")[2]["versions"][0] for name in wanted}
                if got == wanted:
                    break
                time.sleep(0.05)
            assert got == wanted
        finally:
            stalled.close()


def test_only_inference_is_timed_and_every_request_is_counted_by_endpoint(server):
    def count(text: str, series: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(series + " ")]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    timed = 'paragrad_request_seconds_count{model="mlp"}'
    metadata = 'paragrad_requests_total{code="200",endpoint="model_metadata",model="mlp"}'
    before = server.call("GET", "/metrics")[2]
    for _ in range(3):  # readiness probes and metadata reads are not inference
        server.call("GET", "/v2/models/mlp")
        server.call("GET", "/v2/models/mlp/ready")
    server.infer("mlp", np.ones((2, NUM_FEATURES)))
    after = server.call("GET", "/metrics")[2]
    assert count(after, timed) - count(before, timed) == 1
    assert count(after, metadata) - count(before, metadata) == 3
    assert 'paragrad_request_seconds_count{model="-"}' not in after


def _metric(text: str, series: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def _until(condition, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_an_unreadable_model_file_is_logged_counted_and_watching_goes_on(tmp_path):
    import shutil

    path = _save(pg.models.LinearRegression(), tmp_path / "m.npz", seed=1)
    first = file_version(path)
    new = _save(pg.models.LinearRegression(), tmp_path / "new.npz", seed=2)
    failed = 'paragrad_model_reloads_total{model="m",outcome="failed"}'
    with running(str(path), "--reload-interval", "0.05") as server:
        path.unlink()
        path.mkdir()  # a folder where the file was: reading it is an OS error
        assert _until(lambda: _metric(server.call("GET", "/metrics")[2], failed) >= 1)
        assert server.infer("m", np.ones((1, NUM_FEATURES)))["model_version"] == first
        assert server.call("GET", "/v2/health/ready")[0] == 200
        path.rmdir()
        shutil.copy(new, path)
        assert _until(lambda: server.call("GET", "/v2/models/m")[2]["versions"] == [file_version(new)])
        X = np.random.default_rng(9).standard_normal((3, NUM_FEATURES))
        np.testing.assert_array_equal(outputs(server.infer("m", X))["predict"], pg.load_model(new).predict(X))
        assert _until(lambda: any("m.npz: cannot read it" in line for line in list(server.stderr)))


class SlowUploader:
    """A connection that sends a request's headers, then its body one byte a second."""

    def __init__(self, port: int, path: str) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
        )
        self.sock.sendall(b"Content-Length: 100000\r\n\r\n{")
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        while not self.stopped.wait(1.0):
            self.sock.sendall(b" ")

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


def _one_row_p50(port: int, body: bytes, count: int) -> float:
    """The median latency of ``count`` one-row requests, one after another on one connection."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            connection.request("POST", "/v2/models/m/infer", body, headers)
            response = connection.getresponse()
            response.read()
            times.append(time.perf_counter() - started)
            assert response.status == 200
    finally:
        connection.close()
    return float(np.median(times))


def test_a_slow_uploader_slows_no_one_else(tmp_path):
    # Before: the batcher counted the slow request from its headers on, and every batch
    # waited the whole --max-wait-ms for a body one byte a second (p50 up 5-10x).
    path = _save(pg.models.LinearRegression(), tmp_path / "m.npz")
    body = json.dumps(v2_body(np.ones((1, NUM_FEATURES)))).encode()
    ratios = []
    with running(str(path), "--max-wait-ms", "5", "--no-access-log") as server:
        _one_row_p50(server.port, body, 50)  # warm up
        for _ in range(5):
            alone = _one_row_p50(server.port, body, 100)
            slow = SlowUploader(server.port, "/v2/models/m/infer")
            try:
                time.sleep(0.05)
                ratios.append(_one_row_p50(server.port, body, 100) / alone)
            finally:
                slow.close()
    assert float(np.median(ratios)) < 1.5, ratios


def test_a_log_pipe_nobody_reads_stops_nothing(tmp_path):
    # Before: the access log was written on the event loop; once the pipe was full (after
    # some 600 requests) every request hung, health probes included.
    import http.client

    path = _save(pg.models.LinearRegression(), tmp_path / "m.npz")
    command = [sys.executable, "-m", "paragrad", "serve", str(path), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = port_from(process)
        body = json.dumps(v2_body(np.ones((1, NUM_FEATURES)))).encode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        statuses = []
        for _ in range(3000):
            connection.request("POST", "/v2/models/m/infer", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.request("GET", "/v2/health/ready")
        assert connection.getresponse().status == 200
        connection.close()
        assert statuses == [200] * 3000
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()


def _raw_answer(sock, timeout: float = 10) -> tuple[int, dict]:
    """The status and JSON body of the one answer read from ``sock`` until it closes."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_request_cut_off_at_grace_is_answered_503_in_json(tmp_path):
    import socket

    path = _save(pg.models.LinearRegression(), tmp_path / "m.npz")
    with running(str(path), "--grace", "0.3") as server:
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.sendall(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{"
        )
        time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        status, answer = _raw_answer(stalled)
        stalled.close()
        assert status == 503 and "stopped before this request was answered" in answer["error"]
        assert server.wait() == 0
    assert not any("Traceback" in line for line in server.stderr)


def test_headers_have_a_deadline_and_connections_a_cap(tmp_path):
    import socket

    path = _save(pg.models.LinearRegression(), tmp_path / "m.npz")
    options = ["--header-timeout", "0.3", "--body-timeout", "0.5", "--max-connections", "3"]
    with running(str(path), *options) as server:
        silent = socket.create_connection(("127.0.0.1", server.port))
        silent.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 12")  # and nothing more
        status, answer = _raw_answer(silent)
        assert status == 408 and "headers did not arrive within 0.3 s" in answer["error"]
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50\r\n\r\n{")
        status, answer = _raw_answer(slow)
        slow.close()
        assert status == 408 and "body did not arrive within 0.5 s" in answer["error"]
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        time.sleep(0.1)
        refused = socket.create_connection(("127.0.0.1", server.port))
        status, answer = _raw_answer(refused)
        assert status == 503 and "most connections (3)" in answer["error"]
        for sock in [refused, silent, *held]:
            sock.close()
        assert _until(lambda: server.call("GET", "/v2/health/live")[0] == 200, 5)


def test_deadlines_restart_with_each_request_on_a_kept_connection(tmp_path):
    import http.client

    path = _save(pg.models.LinearRegression(), tmp_path / "m.npz")
    with running(str(path), "--header-timeout", "0.3", "--body-timeout", "0.3") as server:
        kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # past both deadlines three times over
            kept.request("GET", "/v2/health/live")
            assert kept.getresponse().read() == b'{"live":true}'
            time.sleep(0.05)
        kept.sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 12")  # and nothing more
        status, answer = _raw_answer(kept.sock)
        kept.close()
        assert status == 408 and "headers did not arrive within 0.3 s" in answer["error"]


def test_answers_without_a_body_and_after_100_continue_arrive_whole(server):
    import socket

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # a head alone
    head = _read_until(sock, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 13" in head.lower()
    body = json.dumps(v2_body(np.zeros((1, NUM_FEATURES)))).encode()
    sock.sendall(
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    assert _read_until(sock, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(body)
    answer = _read_until(sock, b"\r\n\r\n")
    length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    answer += _read_exactly(sock, length - len(answer.partition(b"\r\n\r\n")[2]))
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200") and json.loads(answer.partition(b"\r\n\r\n")[2])["outputs"]


def _read_until(sock, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = sock.recv(1)  # one byte at a time: nothing past ``end`` is taken
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    return data


def _read_exactly(sock, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the connection closed early"
        data += chunk
    return data


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_compressed_request_bodies_are_inflated(server, model_files, encoding):
    import zlib

    X = np.random.default_rng(10).standard_normal((6, NUM_FEATURES))
    body = json.dumps(v2_body(X)).encode()
    wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}[encoding]
    packer = zlib.compressobj(wbits=wbits)
    packed = packer.compress(body) + packer.flush()
    headers = {"Content-Encoding": encoding.removeprefix("raw-"), "Content-Type": "application/json"}
    status, _, answer = server.call("POST", "/v2/models/linear/infer", packed, headers)
    assert status == 200, answer
    np.testing.assert_array_equal(outputs(answer)["predict"], pg.load_model(model_files["linear"]).predict(X))


def test_bad_or_oversized_compressed_bodies_are_refused(server):
    import gzip

    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    status, _, answer = server.call("POST", "/v2/models/linear/infer", b"not gzip", headers)
    assert status == 400 and "not valid gzip data" in answer["error"]
    bomb = gzip.compress(b" " * (3 * 1024 * 1024))  # 3 MiB of blanks, past the 1 MiB limit
    status, _, answer = server.call("POST", "/v2/models/linear/infer", bomb, headers)
    assert status == 413 and "inflates past" in answer["error"]
    headers["Content-Encoding"] = "br"
    status, _, answer = server.call("POST", "/v2/models/linear/infer", b"{}", headers)
    assert status == 415 and "'br' is not supported" in answer["error"]


def test_large_bodies_are_parsed_aside_and_answered_exactly(tmp_path):
    path = _save(pg.models.LinearRegression(), tmp_path / "m.npz")
    X = np.random.default_rng(11).standard_normal((60_000, NUM_FEATURES))
    body = json.dumps(v2_body(X)).encode()
    assert len(body) > 4 * 1024 * 1024  # parsed in the parsing process
    with running(str(path), "--no-access-log") as server:
        status, _, answer = server.call(
            "POST", "/v2/models/m/infer", body, {"Content-Type": "application/json"}
        )
        assert status == 200, answer
        np.testing.assert_array_equal(outputs(answer)["predict"], pg.load_model(path).predict(X))
        wrong = body.replace(b'"shape": [60000, 5]', b'"shape": [60000, 4]')
        status, _, answer = server.call("POST", "/v2/models/m/infer", wrong)
        assert status == 400 and "needs 240000 values, got 300000" in answer["error"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_inference_takes_only_json_so_no_form_can_run_one(server, content_type):
    # Before: without a token, a cross-site text/plain POST (no preflight) ran an inference.
    body = json.dumps(v2_body(np.ones((1, NUM_FEATURES))))
    status, _, answer = server.call("POST", "/v2/models/linear/infer", body, {"Content-Type": content_type})
    assert status == 415 and "send 'Content-Type: application/json'" in answer["error"]
    for kind in ("application/json", "application/json; charset=utf-8"):
        assert server.call("POST", "/v2/models/linear/infer", body, {"Content-Type": kind})[0] == 200


def test_a_foreign_host_or_origin_is_refused_without_a_token(server):
    body = json.dumps(v2_body(np.ones((1, NUM_FEATURES))))
    json_type = {"Content-Type": "application/json"}
    # DNS rebinding: a name the attacker points at 127.0.0.1
    status, _, answer = server.call(
        "POST", "/v2/models/linear/infer", body, json_type | {"Host": "evil.example:80"}
    )
    assert status == 403 and "does not name this server" in answer["error"]
    assert server.call("GET", "/v2/health/ready", headers={"Host": "evil.example"})[0] == 403
    for host in ("localhost:8000", "127.0.0.1", f"127.0.0.1:{server.port}"):
        assert server.call("POST", "/v2/models/linear/infer", body, json_type | {"Host": host})[0] == 200
    # a page of another site, even with a type no form can send
    foreign = json_type | {"Origin": "https://evil.example"}
    status, headers, answer = server.call("POST", "/v2/models/linear/infer", body, foreign)
    assert status == 403 and "--cors ORIGIN" in answer["error"]
    assert "access-control-allow-origin" not in headers
    own = json_type | {"Origin": f"http://127.0.0.1:{server.port}"}  # the page the server serves
    assert server.call("POST", "/v2/models/linear/infer", body, own)[0] == 200


def test_cors_and_extra_host_names_only_when_given(model_files):
    body = json.dumps(v2_body(np.ones((1, NUM_FEATURES))))
    origin = "https://app.example"
    with running(str(model_files["linear"]), "--cors", origin, "--allow-host", "models.lan") as server:
        status, headers, _ = server.call(
            "OPTIONS",
            "/v2/models/linear/infer",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        assert status == 204 and headers["access-control-allow-origin"] == origin
        assert "POST" in headers["access-control-allow-methods"]
        assert "content-type" in headers["access-control-allow-headers"]
        request = {"Content-Type": "application/json", "Origin": origin, "Host": "models.lan:8000"}
        status, headers, _ = server.call("POST", "/v2/models/linear/infer", body, request)
        assert status == 200 and headers["access-control-allow-origin"] == origin
        request["Origin"] = "https://other.example"
        assert server.call("POST", "/v2/models/linear/infer", body, request)[0] == 403


def test_kserve_v1_readiness(server):
    # KServe's V1 clients check GET /v1/models/NAME before predicting; it was 404
    assert server.call("GET", "/v1/models/softmax")[:3:2] == (200, {"name": "softmax", "ready": True})
    status, _, answer = server.call("GET", "/v1/models/nope")
    assert status == 404 and "no model named 'nope'" in answer["error"]


def test_answers_are_compressed_when_the_client_asks(server, model_files):
    import gzip
    import http.client
    import zlib

    X = np.random.default_rng(12).standard_normal((200, NUM_FEATURES))
    body = json.dumps(v2_body(X))
    expected = pg.load_model(model_files["linear"]).predict(X)
    for accepted, unpack in (("gzip", gzip.decompress), ("deflate;q=1, gzip;q=0", zlib.decompress)):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        headers = {"Content-Type": "application/json", "Accept-Encoding": accepted}
        connection.request("POST", "/v2/models/linear/infer", body, headers)
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-encoding") == accepted[:7].rstrip(";")
        answer = json.loads(unpack(response.read()))
        connection.close()
        np.testing.assert_array_equal(outputs(answer)["predict"], expected)
    _, headers, _ = server.call("POST", "/v2/models/linear/infer", body, {"Accept-Encoding": "br"})
    assert "content-encoding" not in headers


@pytest.mark.parametrize("name", ["linear", "logistic", "softmax"])
def test_tritons_http_client_works_with_its_defaults(server, model_files, name):
    # Before: binary_data=True (the default) was refused 400
    httpclient = pytest.importorskip("tritonclient.http")
    model = pg.load_model(model_files[name])
    X = np.random.default_rng(13).standard_normal((7, NUM_FEATURES))
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
        assert client.get_model_metadata(name)["name"] == name
        for kind, values in (("FP64", X), ("FP32", X.astype(np.float32))):
            tensor = httpclient.InferInput("input-0", list(X.shape), kind)
            tensor.set_data_from_numpy(values)  # binary_data=True
            result = client.infer(name, [tensor])  # every output as binary data
            expected = model.predict(values.astype(np.float64))
            got = result.as_numpy("predict")
            if got.dtype == object:  # BYTES: text labels
                got = got.astype(str)
            np.testing.assert_array_equal(got, expected)
            if model.is_classifier:
                np.testing.assert_array_equal(
                    result.as_numpy("proba"), model.predict_proba(values.astype(np.float64))
                )
        # JSON both ways, and compressed both ways, still answer the same
        tensor = httpclient.InferInput("input-0", list(X.shape), "FP64")
        tensor.set_data_from_numpy(X, binary_data=False)
        asked = [httpclient.InferRequestedOutput("predict", binary_data=False)]
        result = client.infer(name, [tensor], outputs=asked)
        assert result.as_numpy("predict").tolist() == model.predict(X).tolist()
        tensor.set_data_from_numpy(X)
        result = client.infer(
            name, [tensor], request_compression_algorithm="gzip", response_compression_algorithm="deflate"
        )
        assert result.as_numpy("predict").astype(model.predict(X).dtype).tolist() == model.predict(X).tolist()
    finally:
        client.close()


def test_bad_binary_tensors_get_one_line_reasons(server):
    X = np.ones((2, NUM_FEATURES))
    header = {
        "inputs": [{"name": "x", "shape": [2, 5], "datatype": "FP64", "parameters": {"binary_data_size": 80}}]
    }
    head = json.dumps(header).encode()
    cases = [
        (head + X.tobytes()[:40], "runs past the binary data"),
        (head + X.tobytes() + b"extra", "5 bytes of binary data no input claims"),
        (head + np.array([np.nan] * 10).tobytes(), "NaN or infinity"),
    ]
    for body, reason in cases:
        headers = {
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream",
        }
        status, _, answer = server.call("POST", "/v2/models/linear/infer", body, headers)
        assert status == 400 and reason in answer["error"], answer
    status, _, answer = server.call(
        "POST", "/v2/models/linear/infer", head, {"Inference-Header-Content-Length": "x"}
    )
    assert status == 400 and "must be a byte count" in answer["error"]


@pytest.fixture(scope="module")
def grpc_server(model_files) -> Iterator[tuple[Server, int]]:
    specs = [f"{name}={model_files[name]}" for name in ("linear", "logistic", "softmax")]
    with running(*specs, "--grpc-port", "0") as server:
        port = None
        for line in server.stdout_lines(10):
            if "gRPC on" in line:
                port = int(line.rsplit(":", 1)[1])
        assert port is not None
        yield server, port


@pytest.mark.parametrize("name", ["linear", "logistic", "softmax"])
def test_tritons_grpc_client_works_with_its_defaults(grpc_server, model_files, name):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    server, port = grpc_server
    model = pg.load_model(model_files[name])
    X = np.random.default_rng(14).standard_normal((9, NUM_FEATURES))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
        metadata = client.get_model_metadata(name)
        assert metadata.name == name and list(metadata.inputs[0].shape) == [-1, NUM_FEATURES]
        for kind, values in (("FP64", X), ("FP32", X.astype(np.float32))):
            tensor = grpcclient.InferInput("input-0", list(X.shape), kind)
            tensor.set_data_from_numpy(values)  # raw_input_contents, the client's default
            result = client.infer(name, [tensor])
            got = result.as_numpy("predict")
            expected = model.predict(values.astype(np.float64))
            np.testing.assert_array_equal(got.astype(str) if got.dtype == object else got, expected)
            if model.is_classifier:
                np.testing.assert_array_equal(
                    result.as_numpy("proba"), model.predict_proba(values.astype(np.float64))
                )
        result = client.infer(name, [tensor], outputs=[grpcclient.InferRequestedOutput("predict")])
        assert result.as_numpy("proba") is None
        with pytest.raises(Exception, match="has 4 features, but the model takes 5"):
            narrow = grpcclient.InferInput("input-0", [2, 4], "FP64")
            narrow.set_data_from_numpy(np.ones((2, 4)))
            client.infer(name, [narrow])
        with pytest.raises(Exception, match="no model named 'nope'"):
            client.infer("nope", [tensor])
    finally:
        client.close()
    server.infer(name, X)  # HTTP still answers beside it


def test_a_torch_model_is_served_with_its_own_answers(tmp_path):
    # Before: a Torch model's file could not be served (no module to predict with)
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(15)
    X = rng.standard_normal((150, NUM_FEATURES))
    y = np.array(["low", "mid", "high"])[np.digitize(X[:, 0] + X[:, 1], [-0.5, 0.5])]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(NUM_FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    run = pg.train(pg.models.Torch(net), pg.Dataset(X, y), engine="serial", epochs=3, tol=0, standardize=True)
    path = tmp_path / "net.npz"
    run.save(path)
    with running(str(path)) as server:
        answer = outputs(server.infer("net", X[:20]))
        assert server.call("GET", "/v2/models/net")[2]["parameters"]["classes"] == ["high", "low", "mid"]
    np.testing.assert_array_equal(answer["predict"], run.model.predict(X[:20]))
    np.testing.assert_allclose(answer["proba"], run.model.predict_proba(X[:20]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_server_predicts_with_the_blas_threads_it_is_given_and_gives_them_back(model_files, threads):
    """A second BLAS thread spins while it waits, on the core the event loop and the
    clients need: the server predicts with --blas-threads (1 by default) while it runs."""
    import asyncio
    import io

    from threadpoolctl import threadpool_info

    from paragrad.serving.app import build_app
    from paragrad.serving.config import ServeConfig
    from paragrad.serving.metrics import Metrics
    from paragrad.serving.models import ServedModels, load_all

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    async def inside_lifespan(app) -> list[int]:
        incoming: asyncio.Queue = asyncio.Queue()
        started = asyncio.Event()

        async def send(message):
            if message["type"] == "lifespan.startup.complete":
                started.set()

        await incoming.put({"type": "lifespan.startup"})
        running_app = asyncio.create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, incoming.get, send)
        )
        await asyncio.wait_for(started.wait(), 30)
        seen = blas_threads()
        await incoming.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(running_app, 30)
        return seen

    before = blas_threads()
    config = ServeConfig(blas_threads=threads, reload_interval=0)
    served = ServedModels(load_all({"mlp": model_files["mlp"]}), config, Metrics())
    seen = asyncio.run(inside_lifespan(build_app(served, config, Metrics(), io.StringIO())))
    assert seen == [threads] * len(before) and blas_threads() == before
    with pytest.raises(pg.ConfigError, match="blas_threads must be a positive integer"):
        ServeConfig(blas_threads=0)
