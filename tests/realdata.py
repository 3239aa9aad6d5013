"""Real data sets bundled with statsmodels and scikit-learn, with statsmodels' exact fits.

Each :class:`Case` holds a design ``X`` (no constant column: paragrad fits the intercept),
a target ``y`` and the reference optimum of the unregularised problem in paragrad's
parameter layout, with the mean loss there in paragrad's definition:

* ``linear``: ``1/(2m) ||X w + b - y||^2``, params ``[w, b]`` (statsmodels ``OLS``, checked
  against ``numpy.linalg.lstsq``; the one with the smaller normal-equation residual is kept);
* ``logistic``: mean log-loss, params ``[w, b]`` (statsmodels ``Logit``, Newton);
* ``softmax``: mean cross-entropy, params ``[W.ravel(), b]`` with W of shape (d, k)
  (statsmodels ``MNLogit``, Newton). MNLogit fixes the first class's coefficients at 0;
  paragrad's softmax is over-parameterised (``W + c 1^T`` gives the same probabilities),
  so softmax parameters are compared through :func:`comparable`, the differences
  ``W[:, c] - W[:, 0]`` and ``b[c] - b[0]``, and otherwise through probabilities and loss.

The data sets need no network: statsmodels and scikit-learn ship them. Which problem each
one is follows its documented target:

``spector``
    Logistic: ``GRADE`` (grade improved) on GPA, TUCE and PSI; 32 rows.
``fair``
    Logistic: ``affairs > 0`` (any time spent in extramarital affairs) on the eight survey
    variables. ``affairs`` itself is a non-negative rate with two thirds zeros.
``longley``
    Linear: ``TOTEMP`` on six macro series; 16 rows, a classic ill-conditioned design
    (NIST StRD certifies its least-squares solution).
``star98``
    Linear: the share of pupils above the national median in maths,
    ``NABOVE / (NABOVE + NBELOW)``, on the 20 school-district variables, by least squares.
``randhie``
    Linear: ``mdvis`` (visits to a doctor) on the nine insurance and health variables.
``anes96``
    Softmax: the 7-level party identification ``PID`` on logpopul, selfLR, age, educ and
    income (statsmodels' own MNLogit example; Newton converges in a few steps).
``modechoice``
    Softmax: the chosen mode of 210 travellers (air, train, bus, car as 0..3) on each
    traveller's attributes of every mode, one row per traveller: ``ttme_j`` (terminal
    waiting time; ``ttme_4`` is 0 for car and is left out), ``invc_j``, ``invt_j``,
    ``gc_j`` for the four modes, and the household's ``hinc`` and ``psize``.
``diabetes``
    Linear: scikit-learn's ``load_diabetes()`` (its default, mean-centred and scaled
    features), disease progression on ten baseline variables.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

LINEAR, LOGISTIC, SOFTMAX = "linear", "logistic", "softmax"


@dataclass(frozen=True, eq=False)
class Case:
    """A real data set with the reference optimum of its unregularised problem."""

    name: str
    kind: str  # "linear" | "logistic" | "softmax"
    X: np.ndarray  # (n, d) float64, no constant column
    y: np.ndarray  # (n,) float64; classes 0..k-1 for classification
    feature_names: tuple[str, ...]
    params: np.ndarray  # the reference optimum in paragrad's layout
    loss: float  # mean loss at the optimum in paragrad's definition
    target_name: str = "y"
    method: str = ""  # where params come from
    info: dict = field(default_factory=dict)  # e.g. the OLS / lstsq agreement

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if self.kind != LINEAR else 0

    @property
    def num_outputs(self) -> int:
        """Columns of W in paragrad's layout: k for softmax, else 1."""
        return self.num_classes if self.kind == SOFTMAX else 1

    @property
    def model_name(self) -> str:
        """The paragrad model for this case (``--model`` on the command line)."""
        return self.kind


def _design(X: np.ndarray) -> np.ndarray:
    return np.column_stack([X, np.ones(len(X))])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _linear_reference(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, str, dict]:
    """OLS by statsmodels (QR), checked against lstsq on ``[X, 1]``; the better one is kept."""
    import statsmodels.api as sm

    fit = sm.OLS(y, sm.add_constant(X, has_constant="add")).fit(method="qr")
    sm_params = np.r_[fit.params[1:], fit.params[0]]  # statsmodels puts the constant first
    A = _design(X)
    ls_params = np.linalg.lstsq(A, y, rcond=None)[0]

    def normal_residual(p: np.ndarray) -> float:
        return float(np.linalg.norm(A.T @ (A @ p - y)) / np.linalg.norm(A.T @ y))

    candidates = {"statsmodels OLS (qr)": sm_params, "numpy lstsq": ls_params}
    method = min(candidates, key=lambda k: normal_residual(candidates[k]))
    params = candidates[method]
    residual = A @ params - y
    info = {
        "ols_vs_lstsq": _rel(sm_params, ls_params),
        "normal_residual": {k: normal_residual(p) for k, p in candidates.items()},
    }
    return params, 0.5 * float(residual @ residual) / len(y), method, info


def _logistic_reference(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, str, dict]:
    import statsmodels.api as sm

    fit = sm.Logit(y, sm.add_constant(X, has_constant="add")).fit(
        method="newton", tol=1e-12, maxiter=100, disp=0
    )
    if not fit.mle_retvals["converged"]:
        raise RuntimeError("statsmodels Logit did not converge")
    params = np.r_[fit.params[1:], fit.params[0]]
    info = {"iterations": fit.mle_retvals["iterations"]}
    return params, -float(fit.llf) / len(y), "statsmodels Logit (newton)", info


def _softmax_reference(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, str, dict]:
    """MNLogit's fit laid out as ``[W.ravel(), b]`` with class 0's column and intercept 0."""
    import statsmodels.api as sm

    fit = sm.MNLogit(y, sm.add_constant(X, has_constant="add")).fit(
        method="newton", tol=1e-12, maxiter=100, disp=0
    )
    if not fit.mle_retvals["converged"]:
        raise RuntimeError("statsmodels MNLogit did not converge")
    P = np.asarray(fit.params)  # (d + 1, k - 1): the constant's row first, class 0 left out
    d, k = X.shape[1], P.shape[1] + 1
    W = np.zeros((d, k))
    b = np.zeros(k)
    W[:, 1:] = P[1:]
    b[1:] = P[0]
    info = {"iterations": fit.mle_retvals["iterations"]}
    return np.r_[W.ravel(), b], -float(fit.llf) / len(y), "statsmodels MNLogit (newton)", info


REFERENCES: dict[str, Callable] = {
    LINEAR: _linear_reference,
    LOGISTIC: _logistic_reference,
    SOFTMAX: _softmax_reference,
}


def _frame_case(name: str, kind: str, frame, features: list[str], y: np.ndarray) -> Case:
    X = np.ascontiguousarray(frame[features].to_numpy(dtype=np.float64))
    y = np.ascontiguousarray(y, dtype=np.float64)
    params, loss, method, info = REFERENCES[kind](X, y)
    return Case(name, kind, X, y, tuple(features), params, loss, method=method, info=info)


def _statsmodels_data(name: str):
    import statsmodels.api as sm

    return getattr(sm.datasets, name).load_pandas()


def _spector() -> Case:
    data = _statsmodels_data("spector")
    return _frame_case("spector", LOGISTIC, data.exog, list(data.exog.columns), data.endog.to_numpy())


def _fair() -> Case:
    data = _statsmodels_data("fair")
    y = (data.endog.to_numpy() > 0).astype(np.float64)
    return _frame_case("fair", LOGISTIC, data.exog, list(data.exog.columns), y)


def _longley() -> Case:
    data = _statsmodels_data("longley")
    return _frame_case("longley", LINEAR, data.exog, list(data.exog.columns), data.endog.to_numpy())


def _star98() -> Case:
    data = _statsmodels_data("star98")
    above, below = data.endog["NABOVE"].to_numpy(), data.endog["NBELOW"].to_numpy()
    return _frame_case("star98", LINEAR, data.exog, list(data.exog.columns), above / (above + below))


def _randhie() -> Case:
    data = _statsmodels_data("randhie")
    return _frame_case("randhie", LINEAR, data.exog, list(data.exog.columns), data.endog.to_numpy())


def _anes96() -> Case:
    data = _statsmodels_data("anes96")
    features = ["logpopul", "selfLR", "age", "educ", "income"]
    return _frame_case("anes96", SOFTMAX, data.data, features, data.data["PID"].to_numpy())


def _modechoice() -> Case:
    frame = _statsmodels_data("modechoice").data
    wide = frame.pivot(index="individual", columns="mode", values=["ttme", "invc", "invt", "gc"])
    wide.columns = [f"{var}_{int(mode)}" for var, mode in wide.columns]
    wide = wide.drop(columns=["ttme_4"])  # always 0 (no terminal for car)
    per_person = frame.groupby("individual")[["hinc", "psize"]].first()
    table = wide.join(per_person)
    chosen = frame[frame["choice"] == 1].set_index("individual")["mode"]
    y = chosen.loc[table.index].to_numpy() - 1  # modes 1..4 as classes 0..3
    return _frame_case("modechoice", SOFTMAX, table, list(table.columns), y)


def _diabetes() -> Case:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True)
    return _frame_case("diabetes", LINEAR, data.data, list(data.data.columns), data.target.to_numpy())


LOADERS: dict[str, Callable[[], Case]] = {
    "spector": _spector,
    "fair": _fair,
    "longley": _longley,
    "star98": _star98,
    "randhie": _randhie,
    "anes96": _anes96,
    "modechoice": _modechoice,
    "diabetes": _diabetes,
}
CASES: tuple[str, ...] = tuple(LOADERS)
KINDS: dict[str, str] = {
    "spector": LOGISTIC,
    "fair": LOGISTIC,
    "longley": LINEAR,
    "star98": LINEAR,
    "randhie": LINEAR,
    "anes96": SOFTMAX,
    "modechoice": SOFTMAX,
    "diabetes": LINEAR,
}


def cases_of(kind: str) -> tuple[str, ...]:
    """The names of the cases of one kind, without loading them."""
    return tuple(name for name in CASES if KINDS[name] == kind)


@functools.cache
def load(name: str) -> Case:
    """The case ``name`` (one of :data:`CASES`), built once per process."""
    try:
        loader = LOADERS[name]
    except KeyError:
        raise KeyError(f"unknown case {name!r}; choose one of {', '.join(CASES)}") from None
    return loader()


def comparable(case: Case, params: np.ndarray) -> np.ndarray:
    """paragrad's flat parameters as the vector compared with the reference.

    The parameters themselves for linear and logistic models; for softmax, the
    identifiable part: ``[(W[:, 1:] - W[:, :1]).ravel(), b[1:] - b[0]]``.
    """
    params = np.asarray(params, dtype=np.float64)
    if case.kind != SOFTMAX:
        return params
    d, k = case.d, case.num_outputs
    W = params[: d * k].reshape(d, k)
    b = params[d * k :]
    return np.r_[(W[:, 1:] - W[:, :1]).ravel(), b[1:] - b[0]]


def reference_vector(case: Case) -> np.ndarray:
    """The reference optimum in the form :func:`comparable` gives."""
    return comparable(case, case.params)


def mean_loss(case: Case, params: np.ndarray) -> float:
    """The case's mean loss (paragrad's definition, no penalty) at ``params``, by numpy alone."""
    d, k = case.d, case.num_outputs
    Z = case.X @ params[: d * k].reshape(d, k) + params[d * k :]
    if case.kind == LINEAR:
        r = Z[:, 0] - case.y
        return 0.5 * float(r @ r) / case.n
    if case.kind == LOGISTIC:
        z = Z[:, 0]
        return float(np.mean(np.logaddexp(0.0, z) - case.y * z))
    top = Z.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(Z - top).sum(axis=1))
    return float(np.mean(lse - Z[np.arange(case.n), case.y.astype(np.intp)]))


def condition_number(case: Case) -> float:
    """2-norm condition number of the design ``[X, 1]``."""
    return float(np.linalg.cond(_design(case.X)))


def write_csv(case: Case, path: str | os.PathLike, target: str = "y") -> None:
    """The case as a CSV file: the feature columns, then ``target``; exact round trip."""
    if target in case.feature_names:
        raise ValueError(f"target name {target!r} is also a feature of {case.name}")
    labels = case.y.astype(np.int64) if case.kind != LINEAR else case.y
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*case.feature_names, target])
        for row, label in zip(case.X.tolist(), labels.tolist(), strict=True):
            writer.writerow([*map(repr, row), repr(label)])
