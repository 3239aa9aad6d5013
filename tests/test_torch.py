"""PyTorch modules trained by paragrad: same batches as one process, digits accuracy, saving."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import paragrad as pg
from paragrad.core.shards import Shard, plan_shards
from paragrad.training.sampling import stream_rows

torch = pytest.importorskip("torch")


def small_net(d: int, k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, k))


def quartic_loss(out, y):
    """A hand-written loss: importable, so that worker processes can unpickle it."""
    return ((out - y) ** 4).sum()


def mean_quartic_loss(out, y):
    return ((out - y) ** 4).mean()


def same_rounds_in_one_process(net, data, strategy, lr, num_rounds, loss_sum, target) -> np.ndarray:
    """Plain torch SGD on each round's global batch: the union of the workers' batches."""
    plan = plan_shards(data.num_rows, 2)
    shards = [
        Shard(data.X[plan.rows(w)], data.y[plan.rows(w)], w, 2, virtual=plan.virtual(w)) for w in range(2)
    ]
    rounds_per_epoch = strategy.rounds_per_epoch(plan.sizes)
    reference = copy.deepcopy(net)
    optimizer = torch.optim.SGD(reference.parameters(), lr=lr)
    X, y = torch.from_numpy(data.X).float(), target(torch.from_numpy(data.y))
    for round_index in range(num_rounds):
        epoch, position = divmod(round_index, rounds_per_epoch)
        start, stop = position * strategy.batch_size, (position + 1) * strategy.batch_size
        rows = np.concatenate(
            [
                plan.bounds[w][0] + np.arange(s.num_rows)[stream_rows(s, 0, epoch, start, stop)]
                for w, s in enumerate(shards)
            ]
        )
        optimizer.zero_grad()
        loss = loss_sum(reference(X[rows]), y[rows]) / len(rows)
        loss.backward()
        optimizer.step()
    return torch.nn.utils.parameters_to_vector(reference.parameters()).detach().double().numpy()


def cross_entropy_sum(out, y):
    return torch.nn.functional.cross_entropy(out, y, reduction="sum")


def huber_sum(out, y):
    return torch.nn.functional.huber_loss(out.squeeze(-1), y, reduction="sum")


def quartic_sum(out, y):
    return quartic_loss(out.squeeze(-1), y)


CLASSIFICATION = (3, cross_entropy_sum, lambda y: y.long(), 0.2)
CASES = {
    "cross_entropy": ("cross_entropy", *CLASSIFICATION),
    "CrossEntropyLoss": (torch.nn.CrossEntropyLoss(), *CLASSIFICATION),
    "HuberLoss": (torch.nn.HuberLoss(), 1, huber_sum, lambda y: y.float(), 0.2),
    "function": (quartic_loss, 1, quartic_sum, lambda y: y.float(), 0.02),
}


@pytest.mark.parametrize("case", CASES)
def test_sgd_on_two_local_workers_equals_one_process_on_the_same_global_batches(local_engine, case):
    loss, num_outputs, loss_sum, target, lr = CASES[case]
    if num_outputs > 1:
        data = pg.make_classification(300, 6, num_classes=num_outputs, seed=0)
    else:
        regression = pg.make_regression(300, 6, seed=0)
        data = pg.Dataset(regression.X, regression.y / 4)  # keeps the quartic's steps small
    net = small_net(6, num_outputs)
    strategy = pg.SGD(batch_size=20)
    run = pg.train(
        pg.models.Torch(net, loss=loss),
        data,
        strategy=strategy,
        optimizer=pg.optim.SGD(lr=lr),
        engine=local_engine,
        epochs=2,
        tol=0,
    )
    expected = same_rounds_in_one_process(net, data, strategy, lr, len(run.history), loss_sum, target)
    np.testing.assert_allclose(run.params, expected, rtol=1e-4, atol=1e-6)


@pytest.fixture
def torch_threads():
    """Torch with two threads, as in the caller's process on two cores, then as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_in_process_sgd_with_torch_on_two_threads_equals_one_process(torch_threads):
    """In the caller's process torch gathers each batch's rows on its threads: the same
    rows in the same order as the workers' numpy gather, so the same path."""
    loss, num_outputs, loss_sum, target, lr = CASES["cross_entropy"]
    data = pg.make_classification(300, 6, num_classes=num_outputs, seed=0)
    net, strategy = small_net(6, num_outputs), pg.SGD(batch_size=20)
    model = pg.models.Torch(net, loss=loss)
    run = pg.train(
        model, data, strategy=strategy, optimizer=pg.optim.SGD(lr=lr), engine="serial", workers=2, tol=0
    )
    expected = same_rounds_in_one_process(net, data, strategy, lr, len(run.history), loss_sum, target)
    np.testing.assert_allclose(run.params, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_batch_gathered_by_torch_holds_numpys_rows(torch_threads, dtype):
    """Torch's gather (several threads) and numpy's (one thread, a Fortran-ordered array)
    give the rows bit for bit, from read-only shared rows without a warning (numpy's from
    rows torch cannot read, big-endian ones, and for row numbers other than a batch's); a
    slice is a view."""
    model = pg.models.Torch(small_net(6, 2), loss="cross_entropy")
    X = np.random.default_rng(0).standard_normal((500, 6)).astype(dtype)
    X.flags.writeable = False
    rows = np.sort(np.random.default_rng(1).choice(500, 64, replace=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gathered = model.take_rows(X, rows)
    assert gathered.dtype == dtype and gathered.flags.writeable
    np.testing.assert_array_equal(gathered, np.take(X, rows, axis=0))
    np.testing.assert_array_equal(model.take_rows(np.asfortranarray(X), rows), X[rows])
    np.testing.assert_array_equal(model.take_rows(X.astype(X.dtype.newbyteorder()), rows), X[rows])
    assert np.shares_memory(model.take_rows(X, slice(5, 9)), X)
    # Row numbers as numpy reads them: negative, reversed, 32-bit, none, a list, a 0-d array.
    for odd in (np.array([-1, 3]), rows[::-1], rows.astype(np.int32), rows[:0], [4, 2], np.array(3)):
        np.testing.assert_array_equal(model.take_rows(X, odd), np.take(X, odd, axis=0))
    one_row = X[::-1][:1]  # C-contiguous by numpy's account, with a negative stride
    twice = np.array([0, 0])
    np.testing.assert_array_equal(model.take_rows(one_row, twice), np.take(one_row, twice, axis=0))
    torch.set_num_threads(1)
    np.testing.assert_array_equal(model.take_rows(X, rows), X[rows])


def test_a_mean_reduction_trains_as_its_sum_and_the_loss_is_given_again_on_loading(tmp_path):
    data = pg.make_regression(200, 4, seed=1)
    net = small_net(4, 1)

    def train(loss):
        model = pg.models.Torch(net, loss=loss)
        strategy = pg.SGD(batch_size=16)
        return pg.train(model, data, strategy=strategy, engine="serial", workers=2, epochs=2, tol=0)

    summed = train(torch.nn.HuberLoss(reduction="sum"))
    for loss in (torch.nn.HuberLoss(), torch.nn.functional.huber_loss):
        np.testing.assert_array_equal(train(loss).params, summed.params)
    summed.save(tmp_path / "net.npz")
    loaded = pg.models.Torch.load(tmp_path / "net.npz", small_net(4, 1), loss=torch.nn.HuberLoss())
    np.testing.assert_array_equal(loaded.predict(data.X), summed.model.predict(data.X))


def test_a_lambda_trains_in_one_process_and_is_refused_with_a_hint_by_worker_processes(local_engine):
    data = pg.make_regression(50, 4, seed=1)
    model = pg.models.Torch(small_net(4, 1), loss=lambda out, y: ((out - y) ** 4).sum())
    assert np.all(np.isfinite(pg.train(model, data, engine="serial", workers=2, epochs=1).params))
    with pytest.raises(pg.ConfigError, match="define functions you pass .* with def at a module's top level"):
        pg.train(model, data, engine=local_engine, epochs=1)


def test_a_function_that_returns_a_mean_is_refused_before_training():
    data = pg.make_regression(50, 4, seed=1)
    with pytest.raises(pg.ConfigError, match="loss=mean_quartic_loss must return the sum over the rows"):
        pg.train(pg.models.Torch(small_net(4, 1), loss=mean_quartic_loss), data, engine="serial", epochs=1)


def test_a_small_torch_mlp_reaches_95_percent_on_held_out_digits(local_engine):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    run = pg.train(
        pg.models.Torch(small_net(64, 10)),
        pg.Dataset(X_train, y_train),
        strategy=pg.SGD(batch_size=32),
        optimizer=pg.optim.Adam(lr=0.01),
        engine=local_engine,
        epochs=30,
        tol=0,
    )
    assert np.mean(run.model.predict(X_test) == y_test) >= 0.95
    assert np.mean(pg.predict(run.model, X_test, engine=local_engine) == y_test) >= 0.95


def test_regression_and_saving_the_parameters(tmp_path):
    data = pg.make_regression(200, 4, seed=1)
    torch.manual_seed(1)
    net = torch.nn.Linear(4, 1).double()
    run = pg.train(
        pg.models.Torch(net, loss="mse"),
        data,
        optimizer=pg.optim.SGD(lr=0.5),
        engine="serial",
        workers=2,
        epochs=200,
        tol=0,
    )
    exact = np.linalg.lstsq(np.column_stack([data.X, np.ones(200)]), data.y, rcond=None)[0]
    np.testing.assert_allclose(run.params, exact, rtol=1e-6)
    run.save(tmp_path / "net.npz")
    loaded = pg.models.Torch.load(tmp_path / "net.npz", torch.nn.Linear(4, 1).double(), loss="mse")
    np.testing.assert_array_equal(loaded.predict(data.X), run.model.predict(data.X))
    with pytest.raises(pg.ModelFileError, match="parameters stored, but the module has"):
        pg.models.Torch.load(tmp_path / "net.npz", torch.nn.Linear(5, 1), loss="mse")


def test_bad_arguments_are_refused():
    with pytest.raises(pg.ConfigError, match="module must be a torch.nn.Module"):
        pg.models.Torch("not a module")
    with pytest.raises(pg.ConfigError, match="loss= must be one of cross_entropy, mse or a callable"):
        pg.models.Torch(torch.nn.Linear(2, 2), loss="hinge")
    with pytest.raises(pg.ConfigError, match="^loss= must be .* a torch.nn loss module .* got int$"):
        pg.models.Torch(torch.nn.Linear(2, 2), loss=3)
    with pytest.raises(pg.ConfigError, match="task= must be one of classification, regression"):
        pg.models.Torch(torch.nn.Linear(2, 2), loss=quartic_loss, task="ranking")


def test_the_loss_picks_a_regressor_or_a_classifier_class():
    regressor = pg.models.Torch(torch.nn.Linear(2, 1), loss="mse")
    classifier = pg.models.Torch(torch.nn.Linear(2, 3))
    assert type(regressor) is pg.models.Torch and not isinstance(regressor, pg.models.Classifier)
    assert type(classifier) is pg.models.TorchClassifier and isinstance(classifier, pg.models.Torch)
    for model in (regressor, classifier):
        assert type(copy.deepcopy(model)) is type(model)
    with pytest.raises(pg.ConfigError, match="TorchClassifier is for classification, but loss='mse'"):
        pg.models.TorchClassifier(torch.nn.Linear(2, 1), loss="mse")


def test_cross_entropy_and_nll_modules_or_the_task_keyword_make_a_classifier():
    net = torch.nn.Linear(2, 3)
    for loss in (torch.nn.CrossEntropyLoss(), torch.nn.NLLLoss()):
        assert type(pg.models.Torch(net, loss=loss)) is pg.models.TorchClassifier
    assert type(pg.models.Torch(net, loss=torch.nn.L1Loss())) is pg.models.Torch
    model = pg.models.Torch(net, loss=quartic_loss, task="classification")
    assert type(model) is pg.models.TorchClassifier
    assert type(copy.deepcopy(model)) is pg.models.TorchClassifier


def test_standardised_training_predicts_and_reloads_with_the_same_scaling(tmp_path):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:400], y[:400]
    torch.manual_seed(0)
    net = torch.nn.Linear(64, 10)
    run = pg.train(
        pg.models.Torch(net), pg.Dataset(X, y), engine="serial", workers=2, epochs=60, standardize=True, tol=0
    )
    scaled = run.model.standardizer_.transform(X)
    np.testing.assert_array_equal(
        run.model.predict(X), np.argmax(run.model.decision_function(run.params, scaled), axis=1)
    )
    run.save(tmp_path / "net.npz")
    loaded = pg.models.Torch.load(tmp_path / "net.npz", torch.nn.Linear(64, 10))
    np.testing.assert_array_equal(loaded.predict(X), run.model.predict(X))
    # the module's graph kept in the file predicts the same without the module's code
    np.testing.assert_array_equal(pg.load_model(tmp_path / "net.npz").predict(X), run.model.predict(X))


def test_a_classifier_of_text_labels_reloads_with_and_without_its_module(tmp_path):
    # Before: Torch.load turned the stored classes into floats, which text labels are not
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 4))
    y = np.where(X[:, 0] - X[:, 2] > 0, "yes", "no")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    run = pg.train(pg.models.Torch(net), pg.Dataset(X, y), engine="serial", epochs=3, tol=0)
    run.save(tmp_path / "net.npz")
    loaded = pg.models.Torch.load(tmp_path / "net.npz", net)
    assert loaded.classes_.tolist() == ["no", "yes"]
    np.testing.assert_array_equal(loaded.predict(X), run.model.predict(X))
    graph = pg.load_model(tmp_path / "net.npz")
    np.testing.assert_array_equal(graph.predict(X), run.model.predict(X))
    np.testing.assert_allclose(graph.predict_proba(X), run.model.predict_proba(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(pg.ConfigError, match="only predicts"):
        graph.loss(X, y)


def test_threads_that_would_share_a_modules_parameters_are_refused():
    """A Torch model sets its parameters into its module on every step: workers on threads
    would overwrite each other's, so the threads engine refuses it, in training and
    predicting, naming the engines that work."""
    from paragrad.engines.threads import ThreadEngine

    data = pg.make_classification(200, 4, seed=0)
    expected = "keeps its parameters in its module, which workers on threads cannot share: use engine='local'"
    with pytest.raises(pg.ConfigError, match=expected):
        pg.train(pg.models.Torch(small_net(4, 2)), data, engine="threads", workers=2)
    run = pg.train(pg.models.Torch(small_net(4, 2)), data, engine="serial", workers=2, epochs=1)
    with ThreadEngine(2) as engine, pytest.raises(pg.ConfigError, match=expected):
        pg.predict(run.model, data.X, engine=engine)
