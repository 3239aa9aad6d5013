"""Compression of worker results: the codecs, accuracy with error feedback, invariance, resume."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import relative_error

import paragrad as pg
from paragrad.core.shards import plan_shards
from paragrad.training.compression import FP16, Int8, TopK, get_compressor

RNG = np.random.default_rng(0)


def test_topk_keeps_the_largest_entries_exactly_in_float32():
    vector = np.array([0.1, -5.0, 0.2, 3.0, -0.3])
    payload = TopK(0.4).encode(vector, RNG)
    np.testing.assert_array_equal(payload[0], [1, 3])
    np.testing.assert_array_equal(TopK(0.4).decode(payload, 5), [0.0, -5.0, 0.0, 3.0, 0.0])


def test_int8_rounding_is_unbiased_and_within_one_step():
    vector = np.random.default_rng(1).standard_normal(1000)
    codec = Int8()
    decoded = [codec.decode(codec.encode(vector, np.random.default_rng(seed)), 1000) for seed in range(400)]
    step = np.abs(vector).max() / 127  # blocks of 256 scale no coarser than this
    assert np.abs(decoded[0] - vector).max() <= step
    assert np.abs(np.mean(decoded, axis=0) - vector).max() <= 0.15 * step


def test_fp16_scales_so_large_sums_do_not_overflow():
    vector = np.array([1e9, -3e8, 2.0])
    decoded = FP16().decode(FP16().encode(vector, RNG), 3)
    np.testing.assert_allclose(decoded, vector, rtol=1e-3, atol=1e9 * 1e-3)


@pytest.mark.parametrize("spec", ["topk:0", "topk:2", "topk:x", "zip"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(pg.ConfigError, match="top-k needs a fraction|unknown compression"):
        get_compressor(spec)


def final_loss(data, compress, workers=2, engine="serial", epochs=5):
    steps = epochs * 79
    run = pg.train(
        pg.models.LogisticRegression(),
        data,
        strategy=pg.SGD(batch_size=64, compress=compress),
        optimizer=pg.optim.SGD(lr=pg.optim.Cosine(0.3, total_steps=steps)),
        engine=engine,
        workers=workers,
        epochs=epochs,
        tol=0,
    )
    return run.model.loss(data.X, data.y), run


@pytest.fixture(scope="module")
def logistic_data():
    return pg.make_classification(10_000, 100, seed=0)


def test_top_one_percent_with_error_feedback_and_int8_end_near_the_uncompressed_loss(logistic_data):
    reference, plain = final_loss(logistic_data, None)
    topk, topk_run = final_loss(logistic_data, "topk:0.01")
    int8, _ = final_loss(logistic_data, "int8")
    assert abs(topk / reference - 1) <= 0.01
    assert abs(int8 / reference - 1) <= 0.005
    # The gradients received, compressed, are under 5% of the plain ones; each result's
    # fixed fields (rows, loss, timings) are the same in both runs and are set aside.
    assert len(topk_run.history) == len(plain.history)
    results = sum(record["workers"] for record in plain.history)
    gradients = 8 * (logistic_data.num_features + 1) * results
    fixed = sum(record["bytes_received"] for record in plain.history) - gradients
    received = sum(record["bytes_received"] for record in topk_run.history) - fixed
    assert 0 < received < 0.05 * gradients


@pytest.mark.parametrize("compress", ["topk:0.05", "int8", "fp16"])
@pytest.mark.parametrize(
    "strategy",
    [lambda c: pg.SGD(32, compress=c), lambda c: pg.LocalSGD(4, 16, compress=c)],
    ids=["sgd", "local-sgd"],
)
def test_compression_keeps_engine_invariance(local_engine, strategy, compress):
    data = pg.make_classification(400, 30, seed=3)
    runs = [
        pg.train(
            pg.models.LogisticRegression(),
            data,
            strategy=strategy(compress),
            engine=engine,
            workers=2,
            epochs=2,
            tol=0,
        )
        for engine in ("serial", local_engine)
    ]
    assert relative_error(runs[1].params, runs[0].params) <= 1e-12


def test_the_local_engine_counts_the_compressed_bytes(local_engine):
    data = pg.make_classification(2000, 500, seed=3)
    received = {}
    for compress in (None, "topk:0.01"):
        run = pg.train(
            pg.models.LogisticRegression(),
            data,
            strategy=pg.SGD(64, compress=compress),
            engine=local_engine,
            epochs=1,
            tol=0,
        )
        received[compress] = sum(record["bytes_received"] for record in run.history)
    assert received["topk:0.01"] < 0.15 * received[None]


def test_error_feedback_state_is_checkpointed_so_resume_is_exact(tmp_path, local_engine):
    data = pg.make_classification(800, 40, seed=4)
    options = dict(strategy=pg.SGD(32, compress="topk:0.05"), engine=local_engine, epochs=3, tol=0)
    whole = pg.train(pg.models.LogisticRegression(), data, **options)
    pg.train(
        pg.models.LogisticRegression(),
        data,
        max_rounds=17,
        checkpoint_dir=tmp_path,
        checkpoint_every=5,
        **options,
    )
    resumed = pg.train(pg.models.LogisticRegression(), data, checkpoint_dir=tmp_path, resume=True, **options)
    np.testing.assert_array_equal(resumed.params, whole.params)


def test_a_run_resumed_on_other_workers_hands_the_residuals_to_the_rows_they_belong_to(tmp_path):
    """The error-feedback residuals follow the rows: on 3 workers instead of 2, each new
    worker gets the old ones' residuals in proportion to the rows it took over."""
    data = pg.make_classification(400, 10, seed=4)
    options = dict(strategy=pg.SGD(32, compress="topk:0.1"), engine="serial", epochs=1, tol=0)
    done = pg.train(pg.models.LogisticRegression(), data, workers=2, checkpoint_dir=tmp_path, **options)
    (saved,) = tmp_path.glob("checkpoint-*.npz")
    before = np.load(saved)["worker_state.residual"]
    again = pg.train(
        pg.models.LogisticRegression(), data, workers=3, checkpoint_dir=tmp_path, resume=True, **options
    )
    after = np.load(saved)["worker_state.residual"]
    np.testing.assert_array_equal(again.params, done.params)
    assert len(again.history) == len(done.history)
    old, new = plan_shards(400, 2).bounds, plan_shards(400, 3).bounds  # 200 | 200 -> 131 | 131 | 138
    overlap = [[max(0, min(b, d) - max(a, c)) / (b - a) for a, b in old] for c, d in new]
    np.testing.assert_allclose(after, np.array(overlap) @ before, rtol=1e-15, atol=1e-18)
    np.testing.assert_allclose(after.sum(axis=0), before.sum(axis=0), rtol=1e-12, atol=1e-15)


def test_summary_accounts_for_time_traffic_and_cost(binary_data):
    run = pg.train(
        pg.models.LogisticRegression(),
        binary_data,
        strategy=pg.SGD(32),
        engine="serial",
        workers=2,
        epochs=1,
        tol=0,
    )
    summary = run.summary()
    for phrase in ("samples/s", "waiting for the slowest", "communication", "worker-seconds", "stragglers"):
        assert phrase in summary
    assert sum(record["samples"] for record in run.history) == binary_data.num_rows


def test_full_batch_compression_picks_a_first_order_optimizer_and_lbfgs_refuses_it(binary_data):
    run = pg.train(
        pg.models.LogisticRegression(),
        binary_data,
        strategy=pg.GradientDescent(compress="int8"),
        engine="serial",
        epochs=5,
        tol=0,
    )
    assert len(run.history) == 5 and np.isfinite(run.params).all()
    with pytest.raises(pg.ConfigError, match="line search needs exact gradients"):
        pg.train(
            pg.models.LogisticRegression(),
            binary_data,
            strategy=pg.GradientDescent(compress="topk:0.1"),
            optimizer=pg.optim.LBFGS(),
            engine="serial",
        )


def test_codecs_never_send_more_than_the_plain_vector():
    for size in (1, 5, 300):
        vector = np.random.default_rng(size).standard_normal(size)
        for codec in (TopK(0.5), TopK(0.01), Int8(), FP16()):
            payload = codec.encode(vector, RNG)
            assert sum(part.nbytes for part in payload) <= vector.nbytes + 8, (codec, size)
            assert codec.decode(payload, size).shape == (size,)
