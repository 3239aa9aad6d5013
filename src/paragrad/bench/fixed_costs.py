"""Rows of the ``e2e`` suite where fixed costs decide, not the arithmetic.

Small data in one process against statsmodels (the tool for data of this size), a grid
search of paragrad's estimator against the same search of scikit-learn's, serial and on
every core, and a minibatch run that writes a checkpoint every round against the same run
without. Each is a whole call as a user times it, the best of ``repeats``, interleaved with
its baseline in the same run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from paragrad.bench.common import Row, interleaved_best, ratio_row
from paragrad.data import Dataset, make_classification
from paragrad.engines.kept import release_kept_engine
from paragrad.errors import ConvergenceWarning
from paragrad.models import LinearRegression, LogisticRegression
from paragrad.training.strategies import SGD
from paragrad.training.trainer import train


def _small_data() -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name, family, X, y): generated 500 x 5, and data sets that ship with statsmodels."""
    from statsmodels import datasets

    generated = make_classification(500, 5, seed=0)
    spector = datasets.spector.load_pandas()
    longley = datasets.longley.load_pandas()
    return [
        ("logistic 500 x 5", "logit", generated.X, generated.y),
        ("logistic, spector (32 x 3)", "logit", spector.exog.to_numpy(float), spector.endog.to_numpy(float)),
        (
            "least squares, longley (16 x 6)",
            "ols",
            longley.exog.to_numpy(float),
            longley.endog.to_numpy(float),
        ),
    ]


def small_rows(repeats: int) -> list[Row]:
    """``pg.train`` in one process (the default engine) against statsmodels' fit (<= 1.0x)."""
    if importlib.util.find_spec("statsmodels") is None:
        return [{"benchmark": "e2e", "row": "small data", "skipped": "statsmodels is not installed"}]
    return [_small_row(name, family, X, y, repeats) for name, family, X, y in _small_data()]


def _small_row(name: str, family: str, X: np.ndarray, y: np.ndarray, repeats: int) -> Row:
    import statsmodels.api as sm

    X, y = np.ascontiguousarray(X), np.ascontiguousarray(y)
    model, exog = LogisticRegression if family == "logit" else LinearRegression, sm.add_constant(X)
    fitted: dict[str, Any] = {}

    def ours() -> None:
        fitted["ours"] = train(model(), Dataset(X, y), progress=False)

    def theirs() -> None:
        if family == "logit":
            fitted["theirs"] = sm.Logit(y, exog).fit(disp=0)
        else:
            fitted["theirs"] = sm.OLS(y, exog).fit()

    best = interleaved_best({"ours": ours, "theirs": theirs}, 20 * repeats)
    ours_s, theirs_s = best["ours"], best["theirs"]
    reference = np.r_[fitted["theirs"].params[1:], fitted["theirs"].params[0]]  # intercept last
    gap = float(np.abs(fitted["ours"].params - reference).max() / np.abs(reference).max())
    baseline = "statsmodels Logit.fit" if family == "logit" else "statsmodels OLS.fit"
    return ratio_row(f"pg.train {name}", ours_s, baseline, theirs_s, 1.0, params_relative_gap=gap)


def grid_search_rows(repeats: int) -> list[Row]:
    """``GridSearchCV`` over 4 penalties x 5 folds on breast_cancer: ParagradClassifier
    against LogisticRegression with the same penalties, with n_jobs None and -1 (<= 1.0x).
    scikit-learn's estimator keeps its defaults, as the search is usually written: its
    lbfgs stops at 100 iterations on these unscaled features, short of the optimum that
    paragrad's Newton reaches."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression as SklearnLogistic
    from sklearn.model_selection import GridSearchCV

    from paragrad.sklearn import ParagradClassifier

    X, y = load_breast_cancer(return_X_y=True)
    penalties = [1e-4, 1e-3, 1e-2, 1e-1]
    fold_rows = len(y) * 4 // 5  # l2 = 1 / (C * rows): the same objective
    rows = []
    for jobs in (None, -1):

        def ours(jobs: int | None = jobs) -> None:
            GridSearchCV(ParagradClassifier(), {"l2": penalties}, cv=5, n_jobs=jobs).fit(X, y)

        def theirs(jobs: int | None = jobs) -> None:
            grid = {"C": [1 / (l2 * fold_rows) for l2 in penalties]}
            GridSearchCV(SklearnLogistic(), grid, cv=5, n_jobs=jobs).fit(X, y)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A first turn starts joblib's worker processes, which both then use: not counted.
            best = interleaved_best({"ours": ours, "theirs": theirs}, repeats, warmup=1)
        rows.append(
            ratio_row(
                f"GridSearchCV 4 x 5 fits, breast_cancer, n_jobs={jobs}",
                best["ours"],
                "LogisticRegression",
                best["theirs"],
                1.0,
            )
        )
    return rows


def checkpoint_row(num_rows: int, repeats: int) -> Row:
    """Minibatch SGD on 2 local workers (the kept engine), one epoch of batches of 4096,
    with a checkpoint every round against the same run without (<= 1.1x)."""
    data = make_classification(num_rows, 100, seed=2)
    folder = tempfile.mkdtemp(prefix="paragrad-bench-checkpoints-")
    runs: dict[str, Any] = {}

    def fit(every: int | None) -> Callable[[], None]:
        def step() -> None:
            shutil.rmtree(folder, ignore_errors=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                runs[str(every)] = train(
                    LogisticRegression(),
                    data,
                    strategy=SGD(batch_size=4096),
                    engine="local",
                    workers=2,
                    epochs=1,
                    seed=0,
                    checkpoint_dir=None if every is None else folder,
                    checkpoint_every=every,
                    progress=False,
                )

        return step

    try:
        fit(None)()  # the kept engine started, for both
        best = interleaved_best({"with": fit(1), "without": fit(None)}, repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        release_kept_engine()
    checkpointed = runs["1"]
    return ratio_row(
        f"SGD {num_rows:.0e} x 100, a checkpoint every round ({len(checkpointed.history)} rounds)",
        best["with"],
        "the same run without checkpoints",
        best["without"],
        1.1,
        checkpoint_s=checkpointed.checkpoint_s,
        checkpoints=checkpointed.checkpoints_written,
        same_params=bool(np.array_equal(checkpointed.params, runs["None"].params)),
    )


# One fit in a fresh process, the data made first: only the fit is timed, as a script times
# its one call. The timing comes back as the last line printed.
_FIRST_FIT = """
import json, sys, time
import numpy as np
from paragrad.data import make_classification
data = make_classification({rows}, 100, seed=0)
X, y = np.ascontiguousarray(data.X), np.ascontiguousarray(data.y)
if sys.argv[1] == "ours":
    import paragrad as pg
    start = time.perf_counter()
    pg.train(pg.models.LogisticRegression(), pg.Dataset(X, y))
else:
    from sklearn.linear_model import LogisticRegression
    start = time.perf_counter()
    LogisticRegression().fit(X, y)
print(json.dumps(time.perf_counter() - start))
"""


def fresh_process_row(num_rows: int, repeats: int) -> Row:
    """The first ``pg.train`` of a fresh process against scikit-learn's first lbfgs fit in
    one, processes of each taking turns, best of ``repeats``: what a script pays for its one
    fit, imports past ``import paragrad`` (and scikit-learn's own import) included."""
    code = _FIRST_FIT.format(rows=num_rows)
    times: dict[str, list[float]] = {"ours": [], "sklearn": []}
    for _ in range(repeats):
        for who, taken in times.items():
            done = subprocess.run(
                [sys.executable, "-c", code, who], capture_output=True, text=True, check=True
            )
            taken.append(float(json.loads(done.stdout.splitlines()[-1])))
    return ratio_row(
        f"pg.train logistic {num_rows:.0e} x 100, first call of a fresh process",
        min(times["ours"]),
        "sklearn lbfgs, first fit of a fresh process",
        min(times["sklearn"]),
        0.6 if num_rows >= 1_000_000 else 1.0,
        ours_runs=times["ours"],
        baseline_runs=times["sklearn"],
    )
