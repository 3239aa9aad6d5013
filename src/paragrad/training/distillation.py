"""Knowledge transfer: a small student trained on a teacher's outputs at a temperature.

The teacher predicts on the workers that hold the rows, once, before the first round
(:class:`SoftTargets`, a task that changes the shard): its outputs are kept with the shard
beside the labels and never cross the coordinator. The student then trains with any
strategy on

    alpha * T^2 * KL(teacher at T || student at T) + (1 - alpha) * (loss on the labels)

for classifiers (the outputs softened by a softmax of the scores divided by T; T^2 keeps
the gradients of both parts on one scale), and for regression on the mix
``alpha * teacher's prediction + (1 - alpha) * target`` under the squared loss.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from paragrad.core.shards import Shard, Task
from paragrad.data import Dataset
from paragrad.errors import ConfigError, DataError
from paragrad.models import MLP, LogisticRegression, Model, SoftmaxRegression, get_model
from paragrad.models.base import Classifier
from paragrad.models.crossentropy import softmax
from paragrad.models.mlp import MLPClassifier
from paragrad.training.run import Run


def soft_loss(Z: np.ndarray, soft: np.ndarray, temperature: float) -> tuple[float, np.ndarray]:
    """KL(soft || softmax(Z / T)) summed over rows, and its derivative dKL/dZ.

    One output column is a binary model's logit ``z``: its classes' scores are ``(0, z)``.
    """
    binary = Z.shape[1] == 1
    logits = np.column_stack([np.zeros(len(Z)), Z[:, 0]]) if binary else Z
    shifted = logits / temperature
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    entropy_part = np.where(soft > 0, soft * np.log(np.where(soft > 0, soft, 1.0)), 0.0)
    loss = float((entropy_part - soft * log_q).sum(dtype=np.float64))
    d_logits = (np.exp(log_q) - soft) / temperature
    return loss, d_logits[:, 1:2] if binary else d_logits


class _Distilled:
    """The distillation loss over a classifier family's own: labels in ``y[:, 0]``, the
    teacher's softened probabilities in ``y[:, 1:]`` (put there by :class:`SoftTargets`)."""

    temperature: float = 2.0
    alpha: float = 0.5

    def output_loss(self, Z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        hard, d_hard = super().output_loss(Z, y[:, 0])  # type: ignore[misc]
        soft, d_soft = soft_loss(Z, y[:, 1:], self.temperature)
        weight = self.alpha * self.temperature**2
        return weight * soft + (1.0 - self.alpha) * hard, weight * d_soft + (1.0 - self.alpha) * d_hard


class DistilledLogisticRegression(_Distilled, LogisticRegression):
    """LogisticRegression trained on the distillation loss."""


class DistilledSoftmaxRegression(_Distilled, SoftmaxRegression):
    """SoftmaxRegression trained on the distillation loss."""


class DistilledMLPClassifier(_Distilled, MLPClassifier):
    """An MLP classifier trained on the distillation loss."""


DISTILLED: dict[type[Model], type[Model]] = {
    LogisticRegression: DistilledLogisticRegression,
    SoftmaxRegression: DistilledSoftmaxRegression,
    MLPClassifier: DistilledMLPClassifier,
}


@dataclass(frozen=True)
class SoftTargets(Task):
    """The teacher's outputs on the shard's rows, kept with the shard as its targets.

    Classifiers: the labels become ``[code, p_1, ..., p_k]`` with ``p`` the teacher's
    probabilities at ``temperature``, in the student's class order (``order`` maps the
    student's classes to the teacher's columns). Regression: the target becomes
    ``alpha * teacher + (1 - alpha) * target``. It changes the shard, so an engine replays
    it on a worker it restarts.
    """

    teacher: Model
    temperature: float
    alpha: float
    order: tuple[int, ...] | None
    mutates_shard: ClassVar[bool] = True

    def __call__(self, shard: Shard) -> None:
        teacher, y = self.teacher, shard.labels
        X = teacher.prepare(shard.X)
        scores = teacher.decision_function(teacher.params, X)
        if self.order is None:
            shard.y = (self.alpha * scores + (1.0 - self.alpha) * y).astype(y.dtype)
            return
        if scores.ndim == 1:  # a binary teacher's logit: its classes' scores are (0, z)
            scores = np.column_stack([np.zeros(len(scores)), scores])
        soft = softmax(scores / self.temperature)[:, list(self.order)]
        shard.y = np.column_stack([y, soft]).astype(np.float64)


def student_model(name: str, hidden: tuple[int, ...], teacher: Model) -> Model:
    """A student of family ``name`` (``mlp`` with ``hidden`` layers) for ``teacher``'s task."""
    if name == "mlp":
        return MLP(hidden=hidden or (16,), task="classification" if teacher.is_classifier else "regression")
    return get_model(name)()


@dataclass
class Standing:
    """One model's figures in a comparison, measured in the same process."""

    name: str
    metric: float
    fidelity: float  # agreement with the teacher: same labels, or R^2 against its predictions
    size_bytes: int
    predict_s: float


@dataclass
class DistillationRun(Run):
    """A student's run, with how it stands against its teacher and against the same student
    trained on the labels alone (``baseline``), on ``measured_on``."""

    standings: list[Standing] = dataclasses.field(default_factory=list)
    measured_on: str = ""
    temperature: float = 2.0
    alpha: float = 0.5

    def summary(self) -> str:
        is_classifier = self.model.is_classifier
        metric, agreement = ("accuracy", "agreement") if is_classifier else ("R^2", "R^2 vs teacher")
        lines = [
            super().summary(),
            f"distilled     T={self.temperature:g}, alpha={self.alpha:g}; measured on {self.measured_on}",
            f"{'':22}{metric:>10}{agreement:>16}{'size':>12}{'predict':>12}",
        ]
        for standing in self.standings:
            lines.append(
                f"  {standing.name:20}{standing.metric:>10.4f}{standing.fidelity:>16.4f}"
                f"{standing.size_bytes / 1024:>8.1f} KiB{standing.predict_s * 1e3:>9.2f} ms"
            )
        return "\n".join(lines)


def teacher_model(teacher: Model | str | os.PathLike) -> Model:
    """A teacher as given: a model, a paragrad model file, or an ``.onnx`` file (run by
    onnxruntime, see :mod:`paragrad.models.onnx_model`)."""
    if isinstance(teacher, Model):
        return teacher
    if str(teacher).lower().endswith(".onnx"):
        from paragrad.models.onnx_model import load_onnx

        return load_onnx(teacher)
    from paragrad.training.checkpoint import load_model

    return load_model(teacher)


def distill(
    teacher: Model | str | os.PathLike,
    student: Model,
    data: Dataset,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    test: Dataset | None = None,
    baseline: bool = True,
    **train_options: Any,
) -> DistillationRun:
    """Train ``student`` on ``teacher``'s outputs and the labels of ``data``.

    Parameters
    ----------
    teacher : Model or path
        A trained paragrad model (numpy or Torch), its file, or an ONNX file with a
        ``proba`` output (classifiers; as ``paragrad export`` writes), for the same
        features and classes.
    student : Model
        An untrained model: ``LogisticRegression``, ``SoftmaxRegression``, ``MLP`` for
        classes; ``LinearRegression`` or ``MLP(task="regression")`` for a quantity. It
        is left as it is: the trained student is ``run.model``.
    data : Dataset
        Labelled training rows.
    temperature : float
        ``T > 0``: the softmax of ``scores / T`` softens both models' outputs (classifiers).
    alpha : float in [0, 1]
        Weight of the teacher's part; ``0`` trains on the labels alone.
    test : Dataset, optional
        Held-out labelled rows for the comparison (default: ``data``).
    baseline : bool
        Also train the same student on the labels alone, with the same settings, to
        compare against (``run.standings``).
    **train_options
        As for :func:`paragrad.train`; default ``SGD(batch_size=64)`` with ``Adam(lr=0.01)``
        for 20 epochs. The optimizer must work from gradients alone (not Newton or QR).

    Returns
    -------
    DistillationRun
        The student's run; ``summary()`` adds the student's metric, agreement with the
        teacher, file size and prediction time against the teacher's and the baseline's.
    """
    from paragrad.optim import Adam
    from paragrad.training.strategies import SGD
    from paragrad.training.trainer import train

    teacher = teacher_model(teacher)
    order = _check(teacher, student, data, temperature, alpha, train_options)
    settings: dict[str, Any] = {
        "strategy": SGD(batch_size=64),
        "optimizer": Adam(lr=0.01),
        "epochs": 20,
        "tol": 0.0,
        **train_options,
    }
    fresh = copy.deepcopy(student)
    targets = SoftTargets(teacher, float(temperature), float(alpha), order)
    trained = _distilled_copy(student, temperature, alpha)
    run = train(trained, data, shard_tasks=(targets,), **settings)
    run.model = _plain(run.model, type(student))
    standings = []
    test = data if test is None else test
    if baseline:
        labels_only = train(fresh, data, **settings).model
        standings = compare(
            {"teacher": teacher, "student": run.model, "student on labels": labels_only}, test
        )
    fields = {field.name: getattr(run, field.name) for field in dataclasses.fields(Run)}
    return DistillationRun(
        **fields,
        standings=standings,
        measured_on=f"{test.source} ({test.num_rows} rows)",
        temperature=float(temperature),
        alpha=float(alpha),
    )


def _check(
    teacher: Model, student: Model, data: Dataset, temperature: float, alpha: float, options: dict[str, Any]
) -> tuple[int, ...] | None:
    """Refuse what cannot be distilled; the map from the student's classes to the teacher's."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha must be a number from 0 to 1, got {alpha!r}")
    teacher._check_trained()
    if student.params_ is not None:
        raise ConfigError("the student must be an untrained model: it learns from the teacher")
    if teacher.is_classifier != student.is_classifier:
        kinds = {True: "a classifier", False: "a regression model"}
        raise ConfigError(
            f"the teacher is {kinds[teacher.is_classifier]}, the student {kinds[student.is_classifier]}"
        )
    if teacher.is_classifier and type(student) not in DISTILLED:
        raise ConfigError(f"cannot distill into a {type(student).__name__}")
    if teacher.num_features_ != data.num_features:
        raise DataError(
            f"the teacher takes {teacher.num_features_} features, the data has {data.num_features}"
        )
    if options.get("standardize"):
        raise ConfigError("distill takes the rows as the teacher reads them: standardize them beforehand")
    optimizer = options.get("optimizer")
    if optimizer is not None and optimizer.needs != "gradient":
        raise ConfigError(
            f"distill trains on gradients (optimizers sgd, adam, lbfgs), not with {optimizer.name}"
        )
    if data.labels is None:
        raise DataError(f"{data.source}: no labels to train the student on")
    if not teacher.is_classifier:
        return None
    labels = np.unique(data.labels) if data.classes is None else np.asarray(data.classes)
    if len(labels) != teacher.num_classes:
        raise DataError(
            f"the teacher knows {teacher.num_classes} classes, the data has {len(labels)}: "
            "the student would not learn the same classes"
        )
    return tuple(int(code) for code in teacher.codes_of(labels))  # names a label it does not know


def _distilled_copy(student: Model, temperature: float, alpha: float) -> Model:
    """The student as its distilled class, with the loss's settings."""
    if not student.is_classifier:
        return copy.deepcopy(student)
    distilled = DISTILLED[type(student)](**student.get_config())
    distilled.__dict__.update(copy.deepcopy(student.__dict__))
    distilled.temperature, distilled.alpha = float(temperature), float(alpha)  # type: ignore[attr-defined]
    return distilled


def _plain(model: Model, family: type[Model]) -> Model:
    """The trained student as a model of its own family (what it saves and predicts as)."""
    if type(model) is family:
        return model
    plain = family(**model.get_config())
    plain.__dict__.update({k: v for k, v in model.__dict__.items() if k not in ("temperature", "alpha")})
    return plain


def compare(models: dict[str, Model], data: Dataset, repeats: int = 7) -> list[Standing]:
    """Metric, agreement with the first model (the teacher), file size and best prediction
    time of ``repeats`` on ``data``'s rows, for each model; the models take turns."""
    from paragrad.training.model_compression import measure

    footprints = measure(list(models.values()), data, repeats=repeats)
    reference = next(iter(models.values())).predict(data.X)
    standings = []
    for (name, model), footprint in zip(models.items(), footprints, strict=True):
        standings.append(
            Standing(
                name,
                footprint.metric,
                agreement(model, reference, data),
                footprint.size_bytes,
                footprint.predict_s,
            )
        )
    return standings


def agreement(model: Model, reference: np.ndarray, data: Dataset) -> float:
    """Same labels as ``reference`` (a fraction), or R^2 of the predictions against it."""
    predictions = model.predict(data.X)
    if isinstance(model, Classifier):
        return float(np.mean(predictions.astype(str) == reference.astype(str)))
    residual = predictions - reference
    spread = float(np.sum((reference - reference.mean()) ** 2))
    return 1.0 - float(residual @ residual) / spread if spread > 0 else math.nan
