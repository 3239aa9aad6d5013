"""Model files and training checkpoints: ``.npz`` files of plain arrays plus JSON metadata.

Both are written atomically (temporary file, flush, fsync, rename). No pickle anywhere:
files are read with ``allow_pickle=False``, so loading one cannot run code. A model file
names the family and its hyperparameters, the feature count and names, the target's name
and the classes; the standardisation travels as arrays. A checkpoint adds the optimizer
state, the round, the history and a checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.core.model_file import FORMAT, STORAGE, STORED_PREFIXES, VERSIONS, decode_params
from paragrad.core.npz import npz_bytes
from paragrad.data import Standardizer
from paragrad.data.encoding import Encoding
from paragrad.errors import (
    ConfigError,
    ModelFileError,
    ParagradError,
    caller_stacklevel,
)
from paragrad.models import Model, get_model
from paragrad.training.checkpoint_log import (
    WORKER_STATE,
    history_records,
    opt_state_of,
    remove_checkpoint,
    with_log,
    worker_state_of,
    write_checkpoint_file,
)
from paragrad.training.convergence import ConvergenceCheck


class TorchModelFileError(ModelFileError):
    """The file holds a Torch model's parameters, which need the module to be a model."""


def save_model(model: Model, path: str | os.PathLike) -> None:
    """Write a trained model to ``path`` (any suffix; ``.npz`` is customary)."""
    model.save(path)  # which refuses an untrained model


def load_model(path: str | os.PathLike, content: bytes | None = None) -> Model:
    """Read a model written by :func:`save_model` (or ``run.save``), refusing anything else.

    ``content`` is the file's bytes when the caller has read them already (a server that
    must know which version it loaded).
    """
    path = Path(path)
    if content is None and not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    from paragrad.data.files import open_numpy  # not on import: a run without files needs none

    opened = open_numpy(path, "npz", what="a paragrad model file", error=ModelFileError, content=content)
    with opened as archive:
        if "meta" not in archive.files and "num_features" in archive.files:
            if "graph" not in archive.files:
                raise TorchModelFileError(
                    f"{path}: a Torch model's parameters without its graph (saved without the onnx "
                    "package): load them with pg.models.Torch.load(path, module)"
                )
            return _torch_graph(archive)
        if "meta" not in archive.files:
            raise ModelFileError(f"{path}: not a paragrad model file (no model metadata)")
        try:
            meta = json.loads(str(archive["meta"]))
        except json.JSONDecodeError:
            raise ModelFileError(f"{path}: damaged model metadata (not JSON)") from None
        stored = isinstance(meta, dict) and meta.get("storage") is not None
        if not stored and "params" not in archive.files:
            raise ModelFileError(f"{path}: not a paragrad model file (no model metadata)")
        # Small stored parameters are read as they are and decoded once the model is known.
        params = {name: archive[name] for name in archive.files} if stored else archive["params"]
        standardizer = None
        if "standardizer_mean" in archive.files:
            standardizer = Standardizer(archive["standardizer_mean"], archive["standardizer_scale"])
    return _rebuild(path, meta, params, standardizer)


def _torch_graph(archive: Any) -> Model:
    """A Torch model file with its module's ONNX graph, read to predict without the module."""
    from paragrad.models.torch_graph import TorchGraph, TorchGraphClassifier

    classes = archive["classes"]
    model: TorchGraph = (TorchGraphClassifier if len(classes) else TorchGraph)(archive["graph"].tobytes())
    model.setup(int(archive["num_features"]), classes if len(classes) else None)
    model.params_ = archive["params"]
    if "standardizer_mean" in archive.files:
        model.standardizer_ = Standardizer(archive["standardizer_mean"], archive["standardizer_scale"])
    return model


def _rebuild(
    path: Path, meta: Any, params: np.ndarray | dict[str, np.ndarray], standardizer: Standardizer | None
) -> Model:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a paragrad model file (unknown format)")
    version = format_version(meta.get("version"))  # by value: 1, 1.0 and "1" alike
    if version not in VERSIONS:
        newer = " (written by a newer paragrad)" if version is not None and version > VERSIONS[-1] else ""
        raise ModelFileError(
            f"{path}: model file version {meta.get('version')!r} is not supported{newer}; this "
            f"paragrad reads versions {', '.join(map(str, VERSIONS))}"
        )
    try:
        model = get_model(meta["family"])(**meta["config"])
        num_features = meta["num_features"]
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features {num_features!r}")
        classes = meta["classes"]
        labels = None if classes is None else np.asarray(classes)
        if labels is not None and (labels.ndim != 1 or labels.dtype.kind not in "biufU"):
            raise ValueError(f"classes {classes!r}")
        names = meta["feature_names"]
        if names is not None and len(names) != num_features:
            raise ValueError(f"{len(names)} feature names for {num_features} features")
        model.setup(
            num_features,
            labels,
            feature_names=None if names is None else tuple(map(str, names)),
            target_name=meta["target_name"],
        )
        encoding = Encoding.from_json(meta["encoding"]) if "encoding" in meta else None
        read_options = _read_options(meta.get("read_options"))
        if standardizer is not None and (
            standardizer.mean.shape != (num_features,) or standardizer.scale.shape != (num_features,)
        ):
            raise ValueError("standardisation arrays do not match the feature count")
        storage, stored = meta.get("storage"), None
        if isinstance(params, dict):
            if storage not in STORAGE:
                raise ValueError(f"storage {storage!r}")
            stored = {name: params[name] for name in params if name.startswith(STORED_PREFIXES[storage])}
            matrices = model.weight_matrices() if storage == "int8" else []
            params = decode_params(stored, storage, model.num_params, matrices)
    except (KeyError, TypeError, ValueError, ParagradError) as exc:
        raise ModelFileError(f"{path}: damaged model metadata ({exc})") from None
    if params.shape != (model.num_params,) or not np.issubdtype(params.dtype, np.floating):
        raise ModelFileError(
            f"{path}: {params.size} parameters stored, but the model needs {model.num_params}"
        )
    model.params_ = params
    model.storage_, model.stored_ = storage, stored
    model.standardizer_ = standardizer
    model.encoding_ = encoding
    model.read_options_ = read_options
    return model


READ_OPTIONS = {"decimal": str, "encoding": str, "comment": str, "na_values": list}


def _read_options(stored: Any) -> dict[str, Any] | None:
    """The reading options a model file keeps (decimal mark, encoding, ...), checked."""
    if stored is None:
        return None
    if not isinstance(stored, dict) or not all(
        isinstance(stored[key], READ_OPTIONS.get(key, type(None))) for key in stored
    ):
        raise ValueError(f"read options {stored!r}")
    return dict(stored)


# -- training checkpoints -------------------------------------------------------------------

CHECKPOINT_FORMAT = "paragrad-checkpoint"
# 2: typed run configuration, worker state by declared field; 3: SGD's sample stream over
# virtual shards, the worker count of every round in the history; 4: the run's identity
# and the data's fingerprint; 5: SGD's convergence state counts the epoch's losses, which
# the history holds, where 4 kept the losses themselves (both resume)
CHECKPOINT_VERSION = 5
READABLE_VERSIONS = (4, 5)
CHECKPOINT_PATTERN = "checkpoint-*.npz"


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older one."""


@dataclass
class TrainingState:
    """Everything a run needs to go on exactly where it stopped.

    ``round`` is the next round to run; the sampling position follows from it, since every
    random draw comes from (seed, worker, epoch). ``config`` describes the run for the
    check that a resumed run is the same run. ``worker_state`` holds each declared
    per-worker array, one row per worker. ``run_id`` names the run the checkpoint belongs
    to (a resumed run keeps it), ``fingerprint`` the data it was trained on.
    """

    round: int
    params: np.ndarray
    opt_state: Any
    history: list[dict[str, Any]]
    convergence: dict[str, Any]
    standardizer: Standardizer | None
    config: dict[str, Any]
    worker_state: dict[str, np.ndarray] = field(default_factory=dict)
    run_id: str = ""
    fingerprint: str = ""
    path: Path | None = None  # the file it was read from


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def format_version(value: Any) -> int | None:
    """A stored format version by value: ``4``, ``4.0`` and ``"4"`` alike; None for
    anything that is not a whole number."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def checkpoint_name(round_index: int) -> str:
    """The file name of the checkpoint taken before round ``round_index``."""
    return f"checkpoint-{round_index:09d}.npz"


def save_checkpoint(
    directory: str | os.PathLike, state: TrainingState, history_keys: tuple[str, ...], keep: int = 3
) -> Path:
    """Write ``state`` atomically as ``checkpoint-<round>.npz`` and keep the newest ``keep``
    of its run's checkpoints (another run's files, and files this version cannot read,
    are never removed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(state.round)
    write_checkpoint_file(path, CheckpointEncoder(history_keys).encode(state))
    prune_checkpoints(directory, state.run_id, keep)
    return path


class CheckpointEncoder:
    """The bytes of a run's checkpoint files, with little work per file: the metadata's
    fixed part (format, run, data, configuration) is serialised once, and each history
    record is turned into its row once, in a table that grows with the run."""

    def __init__(self, history_keys: tuple[str, ...]) -> None:
        self.history_keys = history_keys
        self._fixed: tuple[tuple[Any, ...], str, str, str] | None = None  # what, and its JSON
        self._history: list[dict[str, Any]] | None = None  # the list whose rows are kept
        self._rows = np.empty((0, len(history_keys)))
        self._count = 0  # the records turned into rows

    def encode(self, state: TrainingState) -> bytes:
        """The ``.npz`` file of ``state`` (read back by :func:`load_latest_checkpoint`)."""
        return sealed_npz(self.arrays(state))

    def arrays(self, state: TrainingState) -> dict[str, np.ndarray]:
        """The file's arrays but its checksum: copies, or rows the encoder never changes,
        so that the rounds may go on while :func:`sealed_npz` turns them into bytes."""
        arrays = {name: np.array(array) for name, array in self.changing_arrays(state).items()}
        arrays["history"] = self.history_rows(state.history)
        arrays["meta"] = np.array(self.meta_text(state))
        if state.standardizer is not None:
            arrays["standardizer_mean"] = state.standardizer.mean
            arrays["standardizer_scale"] = state.standardizer.scale
        return arrays

    @staticmethod
    def changing_arrays(state: TrainingState) -> dict[str, np.ndarray]:
        """The arrays that change from one checkpoint to the next (parameters, the
        optimizer's and the workers' state), as they are: not copies."""
        arrays = {"params": np.asarray(state.params, dtype=np.float64)}
        arrays.update({f"opt_{name}": np.asarray(value) for name, value in state.opt_state._asdict().items()})
        arrays.update({WORKER_STATE + name: np.asarray(rows) for name, rows in state.worker_state.items()})
        return arrays

    @staticmethod
    def fixed_part(state: TrainingState) -> tuple[Any, ...]:
        """What a file's metadata holds that stays as it is through a run."""
        return (state.run_id, state.fingerprint, state.opt_state._fields, state.config)

    def meta_text(self, state: TrainingState) -> str:
        """The metadata as JSON, its fixed part serialised again only when it changes."""
        what = self.fixed_part(state)
        if self._fixed is None or self._fixed[0] != what:
            head = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
            head |= {"run": state.run_id, "data": state.fingerprint}
            fields = json.dumps(list(state.opt_state._fields))
            self._fixed = (what, json.dumps(head)[:-1], json.dumps(state.config), fields)
        _, start, config, opt_fields = self._fixed
        convergence = json.dumps(state.convergence)
        return (
            f'{start}, "round": {json.dumps(state.round)}, "config": {config}, '
            f'"convergence": {convergence}, "opt_fields": {opt_fields}}}'
        )

    def history_rows(self, history: list[dict[str, Any]]) -> np.ndarray:
        """The history as a table, a row per record; rows already made are kept."""
        if history is not self._history or len(history) < self._count:  # rows handed out stay
            self._history, self._count = history, 0
            self._rows = np.empty((len(history), len(self.history_keys)))
        if len(history) > len(self._rows):
            grown = np.empty((max(len(history), 2 * len(self._rows)), len(self.history_keys)))
            grown[: self._count] = self._rows[: self._count]
            self._rows = grown
        for index in range(self._count, len(history)):
            record = history[index]
            self._rows[index] = [record[key] for key in self.history_keys]
        self._count = len(history)
        return self._rows[: self._count]


def sealed_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """The ``.npz`` bytes of a checkpoint's ``arrays``, its checksum added. Most of the work
    (hashing, copying the bytes) lets other threads run."""
    return npz_bytes({**arrays, "checksum": np.array(_checksum(arrays))})


# Checkpoint files are never changed once renamed into place, so their metadata is read
# once per file (known by device, inode, size and time): pruning after every write of a run
# that checkpoints every round would otherwise open every kept file each time.
_METAS: dict[tuple[int, ...], dict[str, Any] | None] = {}


def meta_of(path: Path) -> dict[str, Any] | None:
    """The metadata of a checkpoint file, or None when it cannot be read."""
    try:
        info = path.stat()
    except OSError:
        return None
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _METAS:
        if len(_METAS) > 1024:
            _METAS.clear()
        _METAS[key] = _read_meta(path)
    return _METAS[key]


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return meta if isinstance(meta, dict) else None


def _owned_by(meta: dict[str, Any] | None, run_id: str) -> bool:
    return (
        meta is not None
        and meta.get("format") == CHECKPOINT_FORMAT
        and format_version(meta.get("version")) in READABLE_VERSIONS
        and meta.get("run") == run_id
    )


def owned_checkpoints(directory: Path, run_id: str) -> list[tuple[int, Path]]:
    """The checkpoints of run ``run_id`` in ``directory`` by round, oldest first."""
    owned = []
    for path in directory.glob(CHECKPOINT_PATTERN):
        meta = meta_of(path)
        if _owned_by(meta, run_id):
            assert meta is not None
            owned.append((int(meta["round"]), path))
    return sorted(owned)


def prune_checkpoints(directory: Path, run_id: str, keep: int) -> None:
    """Remove the run's checkpoints but its ``keep`` newest (by round), oldest first."""
    for _, old in owned_checkpoints(directory, run_id)[:-keep]:
        remove_checkpoint(old)


def load_latest_checkpoint(
    directory: str | os.PathLike, history_keys: tuple[str, ...], opt_state_type: type[Any]
) -> TrainingState | None:
    """The newest checkpoint in ``directory`` that reads back intact, or None.

    A damaged newest checkpoint (truncated, corrupt, checksum mismatch) is skipped with a
    :class:`CheckpointWarning` and the one before it is used. One of another format
    version, or of a run with another optimizer (whose state this one cannot take up), is
    refused by name (:class:`ConfigError`), never skipped.
    """
    for path in sorted(Path(directory).glob(CHECKPOINT_PATTERN), reverse=True):
        try:
            state = _read_checkpoint(path, history_keys, opt_state_type)
        except ConfigError:
            raise
        except (ModelFileError, KeyError, TypeError, ValueError) as exc:
            message = f"{path}: skipped a damaged checkpoint ({str(exc).removeprefix(f'{path}: ')})"
            warnings.warn(message, CheckpointWarning, stacklevel=caller_stacklevel())
            continue
        state, problem = with_log(state, history_keys, opt_state_type)
        if problem is not None:
            warnings.warn(problem, CheckpointWarning, stacklevel=caller_stacklevel())
        return state
    return None


def _refuse_other_version(path: Path, meta: Any) -> None:
    """Refuse, by name, a checkpoint of another format version than this one's."""
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        return
    version = format_version(meta.get("version"))
    if version is None or version in READABLE_VERSIONS:
        return
    which = "an earlier" if version < CHECKPOINT_VERSION else "a newer"
    raise ConfigError(
        f"{path}: a checkpoint of {which} paragrad (format {version}; this one reads "
        f"{READABLE_VERSIONS[0]} to {CHECKPOINT_VERSION}), which this one cannot resume: finish the run "
        "with that version, or start afresh in another directory"
    )


def _read_checkpoint(path: Path, history_keys: tuple[str, ...], opt_state_type: type[Any]) -> TrainingState:
    from paragrad.data.files import open_numpy

    with open_numpy(path, "npz", what="a paragrad checkpoint", error=ModelFileError) as archive:
        arrays = {name: archive[name] for name in archive.files}
    try:  # the version first: a newer format may check its contents otherwise
        _refuse_other_version(path, json.loads(str(arrays["meta"])))
    except (KeyError, json.JSONDecodeError):
        pass  # damaged: the checksum says so below
    stored = str(arrays.pop("checksum"))
    if _checksum(arrays) != stored:
        raise ValueError("checksum mismatch")
    meta = json.loads(str(arrays["meta"]))
    if (
        meta.get("format") != CHECKPOINT_FORMAT
        or format_version(meta.get("version")) not in READABLE_VERSIONS
    ):
        raise ValueError("not a paragrad checkpoint of a version this one reads")
    fields = meta["opt_fields"]
    if list(opt_state_type._fields) != fields:  # an intact file of a run with another optimizer
        made_with = meta["config"]["optimizer"]["name"]
        raise ConfigError(
            f"{path}: the checkpoint belongs to another run; it differs in optimizer (made with "
            f"{made_with}, whose state this run's optimizer cannot take up): resume with the optimizer "
            "it was made with, or start afresh in another directory"
        )
    opt_state = opt_state_of(arrays, opt_state_type)
    history = history_records(arrays["history"], history_keys)
    ConvergenceCheck.check_state(meta["convergence"], len(history))
    standardizer = None
    if "standardizer_mean" in arrays:
        standardizer = Standardizer(arrays["standardizer_mean"], arrays["standardizer_scale"])
    worker_state = worker_state_of(arrays)
    return TrainingState(
        meta["round"],
        arrays["params"],
        opt_state,
        history,
        meta["convergence"],
        standardizer,
        meta["config"],
        worker_state,
        str(meta["run"]),
        str(meta["data"]),
        path,
    )
