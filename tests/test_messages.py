"""Every message in the caller's terms: the command line names flags, never Python
keywords or classes; Python names keywords and classes, never flags."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import run_cli

import paragrad as pg

# A Python keyword as a fix (``target=``, ``l2=0.1``) or a class a command-line user never sees.
PYTHON_TERMS = re.compile(
    r"(?<![-\w])[a-z][a-z0-9_]*=(?!=)|\b(?:GradientDescent|LocalSGD|SGD\(|LinearRegression|LogisticRegression"
    r"|SoftmaxRegression|MLP\(|pg\.|Dataset\()"
)
FLAGS = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = X @ [1.0, -2.0] + 0.1 * rng.normal(size=60)
    rows = "\n".join(f"{a!r},{b!r},{t!r}" for (a, b), t in zip(X.tolist(), y.tolist(), strict=True))
    (root / "reg.csv").write_text("a,b,y\n" + rows + "\n")
    labels = "\n".join(
        f"{a!r},{b!r},{'yes' if t > 0 else 'no'}" for (a, b), t in zip(X.tolist(), y.tolist(), strict=True)
    )
    (root / "cls.csv").write_text("a,b,y\n" + labels + "\n")
    (root / "text.csv").write_text("a,city,y\n" + "\n".join(f"{i},c{i % 3},{i}" for i in range(30)) + "\n")
    (root / "ids.csv").write_text("a,name,y\n" + "\n".join(f"{i},n{i},{i % 7}" for i in range(30)) + "\n")
    (root / "dc.csv").write_text("a,y\n" + "\n".join(f'"{i},5",{i}' for i in range(30)) + "\n")
    np.save(root / "X.npy", X)
    np.save(root / "y.npy", y)
    trained = run_cli(
        "train", root / "reg.csv", "--target", "y", "--out", root / "m.npz", "--engine", "serial"
    )
    assert trained.returncode == 0, trained.stderr
    np.savez(root / "arrays.npz", X=X, y=y)
    return root


CLI_ERRORS = [
    ("train", "{root}/reg.csv", "--target", "y", "--model", "logistic"),
    ("train", "{root}/cls.csv", "--target", "y", "--model", "linear"),
    ("train", "{root}/reg.csv", "--target", "y", "--optimizer", "newton", "--strategy", "sgd"),
    ("train", "{root}/reg.csv", "--target", "y", "--optimizer", "qr", "--model", "mlp"),
    ("train", "{root}/reg.csv", "--target", "y", "--optimizer", "newton", "--model", "mlp"),
    ("train", "{root}/reg.csv"),
    ("train", "{root}/reg.csv", "--target", "nope"),
    ("train", "{root}/reg.csv", "--target", "y", "--resume"),
    ("train", "{root}/reg.csv", "--target", "y", "--checkpoint-every", "2"),
    ("train", "{root}/reg.csv", "--target", "y", "--out", "{root}/m.csv"),
    ("train", "{root}/reg.csv", "--target", "y", "--drop", "zzz"),
    ("train", "{root}/text.csv", "--target", "y"),
    ("train", "{root}/ids.csv", "--target", "y", "--one-hot", "name"),
    ("train", "{root}/dc.csv", "--target", "y"),
    ("train", "{root}/X.npy"),
    ("train", "{root}/reg.csv", "--target", "y", "--decimal", ",", "--delimiter", ";"),
    ("train", "{root}/reg.csv", "--target", "y", "--encoding", "no-such-codec"),
    ("train", "{root}/reg.csv", "--target", "y", "--model", "softmax"),
    ("train", "{root}/reg.csv", "--target", "y", "--lr", "0.1"),
    ("train", "{root}/reg.csv", "--target", "y", "--address", "127.0.0.1:1"),
    ("train", "{root}/reg.csv", "--target", "y", "--engine", "local", "--address", "127.0.0.1:1"),
    ("evaluate", "{root}/m.npz", "{root}/X.npy"),
    ("evaluate", "{root}/m.npz", "{root}/cls.csv"),
    ("predict", "{root}/m.npz", "{root}/text.csv", "--out", "{root}/p.csv"),
    ("predict", "{root}/m.npz", "{root}/reg.csv", "--out", "{root}/p.txt"),
    ("predict", "{root}/nope.npz", "{root}/reg.csv", "--out", "{root}/p.csv"),
]


@pytest.mark.parametrize("args", CLI_ERRORS, ids=[" ".join(a[:1] + a[2:]) for a in CLI_ERRORS])
def test_command_line_errors_name_flags_not_python(files, args):
    result = run_cli(*(arg.format(root=files) for arg in args))
    assert result.returncode != 0, result.stdout
    assert result.stderr.startswith("paragrad: error: ") and "Traceback" not in result.stderr, result.stderr
    message = result.stderr.replace(str(files), "ROOT")
    assert not PYTHON_TERMS.search(message), message


def python_errors(root):
    reg = pg.load(root / "reg.csv", target="y")
    cls = pg.load(root / "cls.csv", target="y")
    return [
        lambda: pg.train(pg.models.LinearRegression(), cls, engine="serial"),
        lambda: pg.train(pg.models.MLP(task="regression"), reg, optimizer=pg.optim.Newton(), engine="serial"),
        lambda: pg.train(
            pg.models.LinearRegression(), reg, strategy=pg.SGD(8), optimizer=pg.optim.LBFGS(), engine="serial"
        ),
        lambda: pg.train(pg.models.LinearRegression(), reg, resume=True, engine="serial"),
        lambda: pg.train(pg.models.SoftmaxRegression(), reg, engine="serial"),
        lambda: pg.train(None, pg.Dataset(reg.X), engine="serial"),
        lambda: pg.load(root / "text.csv", target="y"),
        lambda: pg.load(root / "ids.csv", target="y", one_hot=["name"]),
        lambda: pg.load(root / "dc.csv", target="y"),
        lambda: pg.load(root / "reg.csv", target="y", encoding="no-such-codec"),
        lambda: pg.evaluate(root / "m.npz", root / "X.npy"),
        lambda: pg.Dataset(__import__("pandas").DataFrame({"a": ["x", "y"]})),
    ]


def test_python_errors_name_keywords_not_flags(files):
    for call in python_errors(files):
        with pytest.raises(pg.ParagradError) as caught:
            call()
        message = str(caught.value).replace(str(files), "ROOT")
        assert not FLAGS.search(message), message
