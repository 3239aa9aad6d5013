"""The three algorithms against closed forms, single-process references and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import relative_error

import paragrad as pg
from paragrad.core.shards import Shard, plan_shards
from paragrad.training.sampling import batch_rows, stream_rows
from paragrad.training.strategies import RoundPlan, weighted_mean


def reference_gd(X, y, kind: str, l2: float, lr: float, steps: int) -> np.ndarray:
    """Single-process full-batch gradient descent on the whole data, written out by hand."""
    m, d = X.shape
    w, b = np.zeros(d), 0.0
    for _ in range(steps):
        z = X @ w + b
        residual = z - y if kind == "linear" else 1.0 / (1.0 + np.exp(-z)) - y
        w, b = w - lr * (X.T @ residual / m + l2 * w), b - lr * residual.mean()
    return np.r_[w, b]


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
@pytest.mark.parametrize("kind", ["linear", "logistic"])
def test_gradient_descent_equals_single_process_full_batch(kind, workers):
    data = pg.make_regression(103, 4, seed=0) if kind == "linear" else pg.make_classification(103, 4, seed=0)
    model = pg.models.get_model(kind)(l2=0.01)
    run = pg.train(
        model,
        data,
        strategy=pg.GradientDescent(),
        optimizer=pg.optim.SGD(lr=0.1),
        engine="serial",
        workers=workers,
        epochs=50,
        tol=0,
    )
    assert len(run.history) == 50
    expected = reference_gd(data.X, data.y, kind, l2=0.01, lr=0.1, steps=50)
    assert relative_error(run.params, expected) <= 1e-12


def test_linear_regression_converges_to_least_squares():
    data = pg.make_regression(500, 8, noise=0.3, seed=4)
    run = pg.train(
        pg.models.LinearRegression(),
        data,
        optimizer=pg.optim.SGD(lr=0.5, momentum=0.5),
        engine="serial",
        workers=3,
        epochs=5000,
        tol=1e-12,
    )
    assert run.converged
    exact = np.linalg.lstsq(np.column_stack([data.X, np.ones(500)]), data.y, rcond=None)[0]
    assert np.linalg.norm(run.params - exact) / np.linalg.norm(exact) <= 1e-6


def sklearn_problem(name: str, C: float = 1.0):
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = (load_breast_cancer if name == "breast_cancer" else load_digits)(return_X_y=True)
    reference = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(StandardScaler().fit_transform(X), y)
    return X, y, reference


def train_to_optimum(model, X, y, workers=3):
    return pg.train(
        model,
        pg.Dataset(X, y),
        standardize=True,
        optimizer=pg.optim.SGD(lr=0.5, momentum=0.97, nesterov=True),
        engine="serial",
        workers=workers,
        epochs=20_000,
        tol=1e-10,
    )


def test_logistic_regression_matches_scikit_learn_on_breast_cancer():
    X, y, reference = sklearn_problem("breast_cancer")
    run = train_to_optimum(pg.models.LogisticRegression(l2=1.0 / len(X)), X, y)
    assert run.converged
    expected = np.r_[reference.coef_.ravel(), reference.intercept_]
    assert relative_error(run.params, expected) <= 1e-4


def test_softmax_regression_matches_scikit_learn_on_digits():
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    X, y, reference = sklearn_problem("digits")
    l2 = 1.0 / len(X)
    run = train_to_optimum(pg.models.SoftmaxRegression(l2=l2), X, y)
    assert run.converged
    W, _ = run.model.split(run.params)
    sk_proba = reference.predict_proba(StandardScaler().fit_transform(X))
    ours = log_loss(y, run.model.predict_proba(X)) + 0.5 * l2 * np.sum(W**2)
    theirs = log_loss(y, sk_proba) + 0.5 * l2 * np.sum(reference.coef_**2)
    assert abs(ours - theirs) <= 1e-6
    assert relative_error(W, reference.coef_.T) <= 1e-4


@pytest.mark.parametrize("kind", ["linear", "logistic"])
def test_local_sgd_with_one_whole_shard_step_equals_gradient_descent(kind):
    data = pg.make_regression(103, 4, seed=0) if kind == "linear" else pg.make_classification(103, 4, seed=0)
    common = dict(optimizer=pg.optim.SGD(lr=0.1), engine="serial", workers=3, epochs=30, tol=0)
    model = pg.models.get_model(kind)
    local = pg.train(model(l2=0.01), data, strategy=pg.LocalSGD(local_steps=1, batch_size=None), **common)
    full = pg.train(model(l2=0.01), data, strategy=pg.GradientDescent(), **common)
    assert relative_error(local.params, full.params) <= 1e-12


def test_local_sgd_on_four_workers_gets_within_one_percent_of_the_optimum():
    data = pg.make_regression(4000, 10, noise=1.0, seed=7)
    design = np.column_stack([data.X, np.ones(len(data.X))])
    exact = np.linalg.lstsq(design, data.y, rcond=None)[0]
    optimum = 0.5 * np.mean((design @ exact - data.y) ** 2)
    run = pg.train(
        pg.models.LinearRegression(),
        data,
        strategy=pg.LocalSGD(local_steps=8, batch_size=32),
        optimizer=pg.optim.SGD(lr=pg.optim.Cosine(0.05, total_steps=8 * 16 * 5, final_lr=0.001)),
        engine="serial",
        workers=4,
        epochs=5,
        tol=0,
    )
    final = 0.5 * np.mean((design @ run.params - data.y) ** 2)
    assert optimum <= final <= 1.01 * optimum


def test_one_shot_averaging_is_the_mean_of_independently_trained_shards():
    data = pg.make_regression(90, 3, seed=2)
    run = pg.train(
        pg.models.LinearRegression(),
        data,
        strategy=pg.LocalSGD(local_steps=None, batch_size=None),
        optimizer=pg.optim.SGD(lr=0.1),
        engine="serial",
        workers=3,
        epochs=20,
        tol=0,
    )
    assert len(run.history) == 1
    plan = plan_shards(90, 3)
    per_shard = [
        reference_gd(data.X[plan.rows(w)], data.y[plan.rows(w)], "linear", 0.0, 0.1, 20) for w in range(3)
    ]
    assert relative_error(run.params, np.average(per_shard, axis=0, weights=plan.sizes)) <= 1e-12


def test_sgd_with_a_batch_as_large_as_the_data_is_gradient_descent():
    data = pg.make_classification(90, 3, seed=1)
    common = dict(optimizer=pg.optim.Adam(lr=0.05), engine="serial", workers=3, epochs=20, tol=0)
    sgd = pg.train(pg.models.LogisticRegression(), data, strategy=pg.SGD(batch_size=90), **common)
    gd = pg.train(pg.models.LogisticRegression(), data, strategy=pg.GradientDescent(), **common)
    np.testing.assert_array_equal(sgd.params, gd.params)


def test_sgd_draws_a_global_batch_each_round_and_each_row_once_per_epoch():
    # 301 rows in batches of 150: rounds of 150, 150 and 1 rows, whichever worker holds them.
    data = pg.make_regression(301, 2, seed=0)
    run = pg.train(
        pg.models.LinearRegression(), data, strategy=pg.SGD(batch_size=150), engine="serial", workers=2, tol=0
    )
    assert len(run.history) == 30 and [r["samples"] for r in run.history[:6]] == [150, 150, 1] * 2
    plan = plan_shards(301, 2)
    shards = [
        Shard(data.X[plan.rows(w)], data.y[plan.rows(w)], w, 2, virtual=plan.virtual(w)) for w in range(2)
    ]
    round_plan = RoundPlan(seed=0, rounds_per_epoch=3, epochs=2)
    counts = [
        [pg.SGD(150).worker_step(s, run.model, None, run.params, r, round_plan).count for s in shards]
        for r in range(6)
    ]
    assert [sum(c) for c in counts] == [150, 150, 1] * 2 and all(min(c[:2]) > 50 for c in counts[::3])


def test_local_sgd_epochs_are_passes_over_the_data():
    data = pg.make_regression(300, 2, seed=0)
    strategy = pg.LocalSGD(local_steps=4, batch_size=16)
    run = pg.train(
        pg.models.LinearRegression(), data, strategy=strategy, engine="serial", workers=2, epochs=3, tol=0
    )
    # 150 rows a shard make 10 batches a pass: 3 passes are 30 local steps, 8 rounds of 4.
    assert len(run.history) == 8
    assert [record["epoch"] for record in run.history] == [0, 0, 0, 1, 1, 2, 2, 2]


def test_local_sgd_restarts_adam_each_round_so_every_first_step_has_size_lr():
    data = pg.make_regression(200, 3, seed=0)
    run = pg.train(
        pg.models.LinearRegression(),
        data,
        strategy=pg.LocalSGD(local_steps=1, batch_size=None),
        optimizer=pg.optim.Adam(lr=0.01),
        engine="serial",
        workers=1,
        epochs=12,
        tol=0,
    )
    # A fresh Adam's first step is lr * g / (|g| + eps): a sign-descent step of size lr.
    params = np.zeros(4)
    for _ in range(12):
        params = params - 0.01 * np.sign(run.model.loss_grad(params, data.X, data.y)[1])
    np.testing.assert_allclose(run.params, params, rtol=1e-6)


def test_sgd_batches_cover_every_row_once_per_epoch_and_differ_between_epochs_and_workers():
    shard = Shard(np.zeros((10, 1)), np.zeros(10), worker=1, num_workers=2)
    epoch0 = np.concatenate([batch_rows(shard, 5, 0, position, 4) for position in range(3)])
    epoch1 = np.concatenate([batch_rows(shard, 5, 1, position, 4) for position in range(3)])
    assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
    assert not np.array_equal(epoch0, epoch1)
    other_worker = Shard(np.zeros((10, 1)), np.zeros(10), worker=0, num_workers=2)
    assert not np.array_equal(
        epoch0, np.concatenate([batch_rows(other_worker, 5, 0, p, 4) for p in range(3)])
    )


def stream_by_definition(num_rows: int, num_virtual: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's global stream of rows, written out from its definition: the j-th row of
    virtual shard v's permutation at position j V + rank(v); the rows of the shards one row
    larger than the rest after every full lap, in lap order."""
    starts = [v * num_rows // num_virtual for v in range(num_virtual + 1)]
    lap = np.random.default_rng([seed, epoch]).permutation(num_virtual)
    base, stream, tails = num_rows // num_virtual, np.full(num_rows, -1), []
    for rank, v in enumerate(lap):
        rows = starts[v] + np.random.default_rng([seed, v, epoch, 1]).permutation(starts[v + 1] - starts[v])
        stream[rank : base * num_virtual : num_virtual] = rows[:base]
        tails += list(rows[base:])
    stream[base * num_virtual :] = tails
    return stream


@pytest.mark.parametrize(("num_rows", "workers"), [(5000, 2), (3001, 3), (5, 2)])
def test_sgd_batches_are_the_stream_of_its_definition(num_rows, workers):
    plan = plan_shards(num_rows, workers)
    for epoch in range(2):
        stream = stream_by_definition(num_rows, plan.num_virtual, 7, epoch)
        for start, stop in [(0, 64), (64, 128), (2990, 3001), (4090, 4200), (3, 4)]:
            batch = []
            for worker in range(workers):
                first, end = plan.bounds[worker]
                shard = Shard(np.zeros((end - first, 1)), None, worker, workers, virtual=plan.virtual(worker))
                batch += list(first + np.arange(end - first)[stream_rows(shard, 7, epoch, start, stop)])
            assert sorted(batch) == sorted(stream[start:stop])


@pytest.mark.parametrize(
    "strategy", [pg.SGD(batch_size=16), pg.LocalSGD(local_steps=3, batch_size=8)], ids=["sgd", "local-sgd"]
)
def test_same_seed_same_parameters_other_seed_other_parameters(strategy, multiclass_data):
    def fit(seed):
        return pg.train(
            pg.models.MLP(hidden=(8,)),
            multiclass_data,
            strategy=strategy,
            engine="serial",
            workers=3,
            epochs=2,
            seed=seed,
            tol=0,
        ).params

    np.testing.assert_array_equal(fit(0), fit(0))
    assert not np.array_equal(fit(0), fit(1))


def test_mlp_reaches_95_percent_on_held_out_digits(local_engine):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    run = pg.train(
        pg.models.MLP(hidden=(64,)),
        pg.Dataset(X_train, y_train),
        strategy=pg.SGD(batch_size=32),
        optimizer=pg.optim.Adam(lr=0.01),
        engine=local_engine,
        epochs=30,
        standardize=True,
        tol=0,
    )
    assert run.num_workers == 2
    assert np.mean(run.model.predict(X_test) == y_test) >= 0.95


def test_weighted_mean_weights_by_count():
    vectors = [np.array([1.0, 0.0]), np.array([4.0, 3.0])]
    np.testing.assert_allclose(weighted_mean(vectors, [1, 2]), [3.0, 2.0])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pg.SGD(batch_size=0), "batch_size must be a positive integer, got 0"),
        (lambda: pg.LocalSGD(local_steps=0), "local_steps must be a positive integer or None"),
        (lambda: pg.LocalSGD(server_lr=0), "server_lr must be in"),
    ],
)
def test_bad_strategy_settings_are_refused(make, message):
    with pytest.raises(pg.ConfigError, match=message):
        make()


# -- L-BFGS -------------------------------------------------------------------------------


def test_lbfgs_is_the_default_for_full_batch_linear_models_and_matches_scikit_learn():
    X, y, reference = sklearn_problem("breast_cancer")
    run = pg.train(
        pg.models.LogisticRegression(l2=1.0 / len(X)),
        pg.Dataset(X, y),
        standardize=True,
        engine="serial",
        workers=3,
        epochs=500,
        tol=1e-9,
    )
    assert run.converged and len(run.history) < 200
    expected = np.r_[reference.coef_.ravel(), reference.intercept_]
    assert relative_error(run.params, expected) <= 1e-4


def test_lbfgs_reaches_least_squares_in_few_rounds_and_repeats_exactly_on_every_engine(local_engine):
    data = pg.make_regression(500, 8, noise=0.3, seed=4)
    common = dict(optimizer=pg.optim.LBFGS(), workers=2, epochs=100, tol=1e-10)
    run = pg.train(pg.models.LinearRegression(), data, engine="serial", **common)
    exact = np.linalg.lstsq(np.column_stack([data.X, np.ones(500)]), data.y, rcond=None)[0]
    assert run.converged and len(run.history) <= 30
    assert np.linalg.norm(run.params - exact) / np.linalg.norm(exact) <= 1e-8
    local = pg.train(pg.models.LinearRegression(), data, engine=local_engine, **common)
    np.testing.assert_array_equal(local.params, run.params)
    assert sum(r["bytes_sent"] for r in local.history) > len(local.history) * 2 * 8 * 9  # extra passes


def test_lbfgs_needs_gradient_descent(binary_data):
    with pytest.raises(pg.ConfigError, match="lbfgs needs full-batch training"):
        pg.train(pg.models.LogisticRegression(), binary_data, strategy=pg.SGD(8), optimizer=pg.optim.LBFGS())


def test_lbfgs_two_loop_direction_is_newtons_on_a_quadratic():
    # After d A-conjugate steps on f(x) = x'Ax/2, BFGS's pairs pin down the inverse Hessian.
    A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
    steps = []
    for e in np.eye(3):
        steps.append(e - sum((e @ A @ s) / (s @ A @ s) * s for s in steps))
    optimizer = pg.optim.LBFGS(memory=3)
    state = optimizer.init(np.zeros(3))
    for s in steps:
        state = optimizer._remember(state, s, A @ s, 0.0, np.zeros(3))
    grad = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(optimizer.direction(grad, state), -np.linalg.solve(A, grad), rtol=1e-10)


def test_lbfgs_stops_with_a_warning_when_its_line_search_stalls():
    # A trial step of 1e6 and a single evaluation cannot lower the loss after the first step.
    data = pg.make_regression(200, 3, noise=0.5, seed=1)
    optimizer = pg.optim.LBFGS(lr=1e6, max_line_search=1)
    with pytest.warns(pg.optim.LineSearchStalled, match="found no acceptable step in 1 evaluations"):
        run = pg.train(
            pg.models.LinearRegression(),
            data,
            optimizer=optimizer,
            engine="serial",
            workers=2,
            epochs=50,
            tol=0,
        )
    assert len(run.history) < 50 and not run.converged
    with pytest.raises(pg.ConfigError, match="max_line_search must be a positive integer"):
        pg.optim.LBFGS(max_line_search=0)
