"""PyTorch modules trained by paragrad: same batches as one process, digits accuracy, saving."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import paragrad as pg
from paragrad.shards import Shard, plan_shards
from paragrad.strategies import batch_rows

torch = pytest.importorskip("torch")


def small_net(d: int, k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, k))


def test_sgd_on_two_local_workers_equals_one_process_on_the_same_global_batches(local_engine):
    data = pg.make_classification(300, 6, num_classes=3, seed=0)
    net = small_net(6, 3)
    strategy = pg.SGD(batch_size=20)
    run = pg.train(
        pg.models.Torch(net),
        data,
        strategy=strategy,
        optimizer=pg.optim.SGD(lr=0.2),
        engine=local_engine,
        epochs=2,
        tol=0,
    )
    # The same rounds in one process: each round's global batch is the union of the
    # workers' batches, and the step is plain SGD on its mean loss.
    plan = plan_shards(300, 2)
    shards = [Shard(data.X[plan.rows(w)], data.y[plan.rows(w)], w, 2) for w in range(2)]
    rounds_per_epoch = strategy.rounds_per_epoch(plan.sizes)
    reference = copy.deepcopy(net)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.2)
    X, y = torch.from_numpy(data.X).float(), torch.from_numpy(data.y).long()
    for round_index in range(len(run.history)):
        epoch, position = divmod(round_index, rounds_per_epoch)
        rows = np.concatenate(
            [
                plan.bounds[w][0] + np.arange(s.num_rows)[batch_rows(s, 0, epoch, position, 20)]
                for w, s in enumerate(shards)
            ]
        )
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(X[rows]), y[rows], reduction="sum") / len(rows)
        loss.backward()
        optimizer.step()
    expected = torch.nn.utils.parameters_to_vector(reference.parameters()).detach().double().numpy()
    np.testing.assert_allclose(run.params, expected, rtol=1e-4, atol=1e-6)


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
    with pytest.raises(pg.ConfigError, match="loss must be one of cross_entropy, mse"):
        pg.models.Torch(torch.nn.Linear(2, 2), loss="hinge")


def test_the_loss_picks_a_regressor_or_a_classifier_class():
    regressor = pg.models.Torch(torch.nn.Linear(2, 1), loss="mse")
    classifier = pg.models.Torch(torch.nn.Linear(2, 3))
    assert type(regressor) is pg.models.Torch and not isinstance(regressor, pg.models.Classifier)
    assert type(classifier) is pg.models.TorchClassifier and isinstance(classifier, pg.models.Torch)
    for model in (regressor, classifier):
        assert type(copy.deepcopy(model)) is type(model)
    with pytest.raises(pg.ConfigError, match="TorchClassifier has loss 'cross_entropy'"):
        pg.models.TorchClassifier(torch.nn.Linear(2, 1), loss="mse")


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
    with pytest.raises(pg.ModelFileError, match="load them with pg.models.Torch.load"):
        pg.load_model(tmp_path / "net.npz")
    loaded = pg.models.Torch.load(tmp_path / "net.npz", torch.nn.Linear(64, 10))
    np.testing.assert_array_equal(loaded.predict(X), run.model.predict(X))
