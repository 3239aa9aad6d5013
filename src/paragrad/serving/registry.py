"""The models a server holds: each name's current version, loaded from its file.

A version is the file's content (the first 12 hex digits of its SHA-256), so the same
file always reports the same version and a replaced file a new one. A file is replaced
atomically by ``train --out`` (a rename), so a reload reads either the old file or the new
one; the stamp taken before and after the read tells a file that changed while it was
read, which is then read again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paragrad.errors import ModelFileError
from paragrad.models.base import Model
from paragrad.training.checkpoint import load_model

Stamp = tuple[int, int, int, int]  # inode, modification and change times (ns), size


def stamp_of(path: Path) -> Stamp | None:
    """What changes when the file at ``path`` is replaced or rewritten; None when it is gone."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)  # ctime: a chmod


@dataclass(frozen=True)
class ModelVersion:
    """One loaded version of a served model."""

    name: str
    path: Path
    model: Model
    version: str
    stamp: Stamp

    @property
    def num_features(self) -> int:
        return int(self.model.num_features_ or 0)

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        return self.model.feature_names_

    @property
    def classes(self) -> np.ndarray | None:
        return self.model.classes_

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("predict", "proba") if self.model.is_classifier else ("predict",)

    def describe(self) -> dict[str, Any]:
        """What a client needs to call the model: features, classes, family and version."""
        classes = self.classes
        return {
            "family": self.model.name,
            "num_features": self.num_features,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "classes": None if classes is None else classes.tolist(),
            "target_name": self.model.target_name_,
            # one-hot columns: each text column's categories, the first the reference (no column)
            "encoding": None if self.model.encoding_ is None else self.model.encoding_.to_json(),
            "version": self.version,
        }


def load_version(name: str, path: Path, attempts: int = 3) -> ModelVersion:
    """Read the model file at ``path``; a file replaced while it was read is read again."""
    for _ in range(attempts):
        before = stamp_of(path)
        if before is None:
            raise ModelFileError(f"{path}: model file not found")
        content = path.read_bytes()
        if stamp_of(path) != before:
            continue
        model = load_model(path, content)
        return ModelVersion(name, path, model, hashlib.sha256(content).hexdigest()[:12], before)
    raise ModelFileError(f"{path}: the model file kept changing while it was read")


@dataclass
class ModelSlot:
    """A served name: its file, the version now answering requests, and the file's stamp
    when it was last looked at (a file that failed to load is not read again until it changes)."""

    name: str
    path: Path
    current: ModelVersion
    seen: Stamp | None = None

    def __post_init__(self) -> None:
        self.seen = self.current.stamp

    def look(self) -> tuple[bool, Stamp | None]:
        """Whether the file changed since it was last looked at, and its stamp now."""
        stamp = stamp_of(self.path)
        changed = stamp != self.seen
        self.seen = stamp
        return changed, stamp
