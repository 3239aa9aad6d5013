"""Newton's method for full-batch training with exact Hessian sums from the workers.

Each round every worker returns its loss, gradient and Hessian sums; the coordinator
solves ``H d = -g`` and searches along ``d`` from the full step, which is accepted near
the optimum, where convergence is quadratic: a handful of rounds reach machine precision.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, NamedTuple

import numpy as np

from paragrad.errors import ConfigError, caller_stacklevel, check_positive_int
from paragrad.optim.base import Evaluate, Evaluation, Needs, Optimizer, OptimizerStep, positive
from paragrad.optim.least_squares import RankDeficient
from paragrad.optim.line_search import LineSearchStalled, sufficient_decrease


class NewtonState(NamedTuple):
    step: np.ndarray
    loss: np.ndarray  # NaN until a point is evaluated; then that point's objective ...
    grad: np.ndarray
    hessian: np.ndarray


# The rounds on a sample (``Newton(start_sample=)``) end after a step of this measure: the
# sample's optimum is only within the sample's error of the data's (about 1/sqrt(its rows
# a parameter): 7% at 200), nearer than which more rounds on it cannot come.
START_UNTIL = 1e-2

# A Hessian whose Cholesky factor, with its diagonal scaled to ones, has a pivot below this
# (squared) is taken as singular: the columns it stands for are dependent to within round-off
# (a constant feature beside the intercept, a repeated column), though round-off may let
# the factorisation through.
SINGULAR_PIVOT = 1e-12
# The same for a Hessian summed in float32, whose round-off leaves dependent columns a
# pivot of about 1e-7 (squared): below this its round is taken again with the exact one.
FLOAT32_SINGULAR_PIVOT = 1e-5


def newton_direction(
    hessian: np.ndarray, grad: np.ndarray, singular_pivot: float = SINGULAR_PIVOT
) -> tuple[np.ndarray, bool]:
    """``-H^-1 g`` by Cholesky, and whether H is singular (a pivot below ``singular_pivot``,
    :data:`SINGULAR_PIVOT` by default): then the least-squares direction of smallest norm
    instead; where H is not finite (values too large for the data's float type), the
    gradient's. H is symmetric, as the sums make it (the factor reads its lower triangle)."""
    direction = _cholesky_solve(hessian, grad, singular_pivot)  # None for H not finite
    if direction is not None and np.isfinite(direction).all():
        return -direction, False
    if not (np.isfinite(hessian).all() and np.isfinite(grad).all()):
        return -grad, False
    return -_smallest_norm_solution(hessian, grad), True


def _smallest_norm_solution(hessian: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """The least-squares solution of ``H x = g`` of smallest norm for a symmetric H, as
    ``np.linalg.lstsq(H, g, rcond=None)`` gives it (eigenvalues below round-off of the
    largest taken as zero), from H's eigenvectors: less time than lstsq's SVD (0.7-0.8 ms
    against 1.1-1.4 at 101 parameters), paid every round once the features are dependent."""
    values, vectors = np.linalg.eigh(hessian)
    magnitudes = np.abs(values)
    scale = magnitudes.max(initial=0.0)  # all relative to it: no overflow near 1e-308 or 1e308
    kept = magnitudes > np.finfo(np.float64).eps * len(values) * scale
    inverse = np.divide(scale, values, out=np.zeros_like(values), where=kept)
    return vectors @ (inverse * ((vectors.T @ grad) / scale)) if scale > 0 else np.zeros_like(grad)


# Systems up to this size are solved with numpy's LAPACK, called as numpy's own linear
# algebra calls it: a little more than scipy's Cholesky solves (4 us against 1.7 at 6 x 6,
# 0.13 ms against 0.06 at 101 x 101, 1.7 against 0.65 at 257; np.linalg's wrappers take
# 7.6 us at 6 x 6), and no import of scipy's linear algebra (0.15-0.2 s: the largest part
# of a first fit in a fresh process, small or as large as 1e6 x 100). Larger systems take
# scipy's, where its solves save milliseconds a round (30 ms at 1024 x 1024).
SMALL_SYSTEM = 256


def _cholesky_solve(
    hessian: np.ndarray, grad: np.ndarray, singular_pivot: float = SINGULAR_PIVOT
) -> np.ndarray | None:
    """``H^-1 g`` for H positive definite, checked through the Cholesky factor of H scaled
    to a unit diagonal; None where it is not, to within round-off (a squared pivot below
    ``singular_pivot``), or not finite. A diagonal entry that is not positive, or not
    finite, makes NaN pivots (the square root of a negative, 0 / 0), which are refused."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        scale = np.sqrt(hessian.diagonal())
        scaled, scaled_grad = hessian / (scale[:, None] * scale), grad / scale
        lapack = _scipy_lapack() if len(scaled) > SMALL_SYSTEM else None
        if lapack is None:
            factor = _cholesky(scaled)
        else:
            factor, info = lapack.dpotrf(scaled, lower=1)
            factor = None if info != 0 else factor
        if factor is None or not factor.diagonal().min() ** 2 >= singular_pivot:
            return None
        if lapack is None:
            return _solve(scaled, scaled_grad) / scale
        solution, info = lapack.dpotrs(factor, scaled_grad, lower=1)
        return solution / scale if info == 0 else None


def _scipy_lapack() -> Any:
    """scipy's LAPACK functions, or None without scipy (the ``sparse`` extra)."""
    try:
        from scipy.linalg import lapack
    except ImportError:
        return None
    return lapack


def _cholesky(matrix: np.ndarray) -> np.ndarray | None:
    """The lower Cholesky factor of a float64 matrix; None or NaNs where it is not
    positive definite (NaNs within the caller's ``np.errstate(invalid="ignore")``)."""
    if _GUFUNCS is None:
        try:
            return np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            return None
    return _GUFUNCS.cholesky_lo(matrix, signature="d->d")  # not positive definite: NaNs


def _solve(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix^-1 vector`` for a regular float64 matrix."""
    if _GUFUNCS is None:
        return np.linalg.solve(matrix, vector)
    return _GUFUNCS.solve1(matrix, vector, signature="dd->d")


def _numpy_gufuncs() -> Any:
    """numpy's LAPACK functions as ``np.linalg`` calls them, without its checks and error
    state (most of its time on small systems); None where this numpy has them otherwise."""
    try:
        from numpy.linalg import _umath_linalg as gufuncs

        matrix, vector = np.array([[4.0, 2.0], [2.0, 3.0]]), np.array([2.0, 1.0])
        factor = gufuncs.cholesky_lo(matrix, signature="d->d")
        solution = gufuncs.solve1(matrix, vector, signature="dd->d")
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    if np.allclose(factor, np.linalg.cholesky(matrix)) and np.allclose(solution, [0.5, 0.0]):
        return gufuncs
    return None


_GUFUNCS = _numpy_gufuncs()


class EstimateSingular(Exception):
    """A Newton step found its estimate of the Hessian (a sample's, or summed in float32)
    singular, or not finite: some direction has no curvature in the sample (a feature that
    is zero on all its rows, say), or float32 cannot hold it. The round is taken again with
    the exact Hessian (:meth:`Newton.exact`), which tells the estimate's fault (the run goes
    on with the exact Hessian) from features that are dependent in all the rows (the run
    goes back to the estimate, :meth:`Newton.accepting_singular`)."""


class Newton(Optimizer):
    """Newton's method with a backtracking line search (from the full step).

    Its convergence measure is the Newton step's largest entry relative to the
    parameters' (at least 1): when it falls to ``tol``, the step just taken leaves an
    error of about its square.

    Parameters
    ----------
    c1 : float
        Sufficient-decrease constant of the line search.
    max_line_search : int
        Halvings of the step before giving up.
    loss_noise : float
        Relative round-off of the loss, within which the slope decides (see L-BFGS).
    hessian_sample : float
        The share of the rows whose curvature makes the Hessian, in blocks spread over all
        the rows (1: all of them). Below 1, each pass costs a fraction of the Hessian's
        products while the gradient stays exact, so the optimum is the same; the steps are
        Newton's to within the sample's error and converge linearly at a fast rate (a
        sub-sampled Newton method, as in Byrd et al. 2011 and Roosta-Khorasani and
        Mahoney 2019).
    hessian_float32 : bool
        Sum the Hessian's products in float32, about twice as fast as float64's: its steps
        are Newton's to within float32's round-off relative to the curvature (about 1e-6
        times the features' condition number).
    exact_below : float or None
        Estimate the Hessian (sampled, or in float32) only while the run is far from the
        optimum: sum it exactly from the pass after a step whose measure is at most this,
        and never end a run on a step that took an estimate (one that meets ``tol`` has its
        point evaluated again), so that the last steps, and the optimum, are exact
        Newton's. None: the estimate throughout.
    start_sample : float or None
        Start on a share of the rows alone (their loss, gradient and Hessian), in blocks
        spread over all the rows as the Hessian's sample is (and among them, where both are
        given), until a step's measure is at most :data:`START_UNTIL`; then go on over all
        the rows from there. A sample's optimum lies within the sample's error of the
        data's (a few percent at a few hundred rows a parameter): its rounds cost a
        fraction of a pass each, and the passes over all the rows, which decide the
        optimum, start near it. None: all the rows from the first round.
    """

    name = "newton"
    line_search: ClassVar[bool] = True
    needs: ClassVar[Needs] = "hessian"

    def __init__(
        self,
        c1: float = 1e-4,
        max_line_search: int = 30,
        loss_noise: float = 1e-6,
        hessian_sample: float = 1.0,
        hessian_float32: bool = False,
        exact_below: float | None = None,
        start_sample: float | None = None,
    ) -> None:
        super().__init__(1.0)
        if not 0.0 < c1 < 1.0:
            raise ConfigError(f"c1 must be in (0, 1), got {c1}")
        check_positive_int("max_line_search", max_line_search)
        if not 0.0 < hessian_sample <= 1.0:
            raise ConfigError(f"hessian_sample must be in (0, 1], got {hessian_sample}")
        self.c1, self.max_line_search = float(c1), int(max_line_search)
        self.loss_noise = positive("loss_noise", loss_noise)
        self.hessian_sample = float(hessian_sample)
        if not isinstance(hessian_float32, bool):
            raise ConfigError(f"hessian_float32 must be True or False, got {hessian_float32!r}")
        self.hessian_float32 = hessian_float32
        self.exact_below = None if exact_below is None else positive("exact_below", exact_below)
        if start_sample is not None and not 0.0 < start_sample < 1.0:
            raise ConfigError(f"start_sample must be in (0, 1) or None, got {start_sample}")
        if start_sample is not None and start_sample > hessian_sample:
            raise ConfigError(
                f"start_sample ({start_sample}) must be at most hessian_sample ({hessian_sample}): "
                "the start's rows are among the Hessian's"
            )
        self.start_sample = None if start_sample is None else float(start_sample)
        self.stop_below = 0.0  # a step this small is the run's last (see stopping_at)
        self.singular_known = False  # the data's features are dependent (see accepting_singular)

    @property
    def hessian_every(self) -> int:
        """The Hessian is summed over one block of rows in this many (all of them, the
        default, asked every pass and round without a division)."""
        return 1 if self.hessian_sample == 1.0 else max(1, round(1.0 / self.hessian_sample))

    @property
    def estimated(self) -> bool:
        """Whether its Hessian is an estimate of the data's: a sample's, or summed in float32
        (or its steps are a sample's alone)."""
        return self.hessian_every > 1 or self.hessian_float32 or self.on_sample

    @property
    def on_sample(self) -> bool:
        """Whether its steps are a sample's alone (see ``start_sample``)."""
        return self.start_sample is not None

    @property
    def start_every(self) -> int:
        """The rounds on a sample take one block of rows in this many: a multiple of
        :attr:`hessian_every`, so that their rows are among the Hessian's."""
        assert self.start_sample is not None
        within = max(1, round(self.hessian_sample / self.start_sample))
        return self.hessian_every * within

    def estimate(self) -> str:
        """The Hessian's estimate in words ("" for the exact Hessian)."""
        sample = f" over {1 / self.hessian_every:.1%} of the rows" if self.hessian_every > 1 else ""
        return sample + (" in float32" if self.hessian_float32 else "")

    def label(self) -> str:
        estimate = self.estimate()
        if not estimate:
            return self.name
        until = "" if self.exact_below is None else " until near the optimum"
        return f"{self.name} (the Hessian{estimate}{until})"

    def exact(self) -> Newton:
        """This optimizer with the Hessian summed over all the rows, its products in the
        data's float type."""
        return self._with(hessian_sample=1.0, hessian_float32=False, start_sample=None)

    def in_float64(self) -> Newton:
        """This optimizer with its Hessian's products in the data's float type (its sample
        as it was)."""
        return self._with(hessian_float32=False)

    def all_rows(self) -> Newton:
        """This optimizer with its loss and gradient over all the rows (its Hessian as it was)."""
        return self._with(start_sample=None)

    def accepting_singular(self) -> Newton:
        """This optimizer on data whose features are dependent over all the rows: a singular
        sampled Hessian is then the data's, not the sample's, and its step is taken. Not in
        float32, whose round-off would put a part along the dependent directions into every
        step: the least-squares step of smallest norm would be lost."""
        return self._with(singular_known=True, hessian_float32=False)

    def stopping_at(self, tol: float) -> Newton:
        """This optimizer in a run that converges once a step's measure is at most ``tol``:
        such a step is the run's last, and it is taken in full without a pass to check it
        (the pass would only confirm a decrease of the order of ``tol^2``)."""
        return self._with(stop_below=float(tol))

    def _with(self, **settings: Any) -> Newton:
        """A copy of this optimizer with ``settings`` changed."""
        changed = object.__new__(type(self))  # copy.copy's result, without its protocol's cost
        vars(changed).update(vars(self), **settings)
        return changed

    def init(self, params: np.ndarray) -> NewtonState:
        d = len(params)
        return NewtonState(np.array(0, dtype=np.int64), np.array(np.nan), np.zeros(d), np.zeros((d, d)))

    def config(self) -> dict[str, Any]:
        # The Hessian's estimate, and a start on a sample, change the steps, not the optimum,
        # which the exact gradient decides: not settings that tell one run from another (a
        # checkpoint of either resumes with the other, as one made before a default changed).
        return {"name": self.name, "c1": self.c1, "max_line_search": self.max_line_search}

    def minimize(self, evaluate: Evaluate, params: np.ndarray, state: NewtonState) -> OptimizerStep:
        """One Newton step; the point it reaches is evaluated once, for the next step too."""
        here = (
            evaluate(params)
            if math.isnan(state.loss)
            else Evaluation(float(state.loss), state.grad, state.hessian)
        )
        assert here.hessian is not None
        pivot = FLOAT32_SINGULAR_PIVOT if self.hessian_float32 else SINGULAR_PIVOT
        direction, singular = newton_direction(here.hessian, here.grad, pivot)
        if self.estimated and not self.singular_known:
            if singular or (self.hessian_float32 and not np.isfinite(here.hessian).all()):
                raise EstimateSingular
        if singular and int(state.step) == 0:
            # At the start every row weighs the same: only the features can make H singular.
            # Later, rows whose probabilities reached 0 or 1 can (separable classes), which
            # the round loop tells apart by this first step.
            warnings.warn(
                "the Hessian is singular: the features are linearly dependent (a column repeats others "
                "or is constant), and the solution of smallest norm is taken",
                RankDeficient,
                stacklevel=caller_stacklevel(),
            )
        slope = float(here.grad @ direction)
        if not slope < 0:  # no descent along it (H numerically indefinite): the gradient's way
            direction, slope = -here.grad, -float(here.grad @ here.grad)
        criterion = float(np.abs(direction).max() / max(1.0, float(np.abs(params).max())))
        if criterion <= self.stop_below:  # converged once taken: no pass to check it
            done = NewtonState(state.step + 1, np.array(np.nan), np.zeros_like(here.grad), here.hessian)
            return OptimizerStep(
                params + direction, done, here.loss, here.grad, criterion=criterion, singular=singular
            )
        step = 1.0
        for _ in range(self.max_line_search):
            candidate = params + step * direction
            there = evaluate(candidate)
            new_slope = float(there.grad @ direction)
            if sufficient_decrease(here.loss, slope, step, there.loss, new_slope, self.c1, self.loss_noise):
                assert there.hessian is not None
                reached = NewtonState(state.step + 1, np.array(there.loss), there.grad, there.hessian)
                return OptimizerStep(
                    candidate, reached, here.loss, here.grad, criterion=criterion, singular=singular
                )
            step *= 0.5
        warnings.warn(
            f"Newton's line search found no lower loss in {self.max_line_search} halvings; stopping here",
            LineSearchStalled,
            stacklevel=caller_stacklevel(),
        )
        kept = NewtonState(state.step, np.array(here.loss), here.grad, here.hessian)
        return OptimizerStep(
            params, kept, here.loss, here.grad, stalled=True, criterion=criterion, singular=singular
        )
