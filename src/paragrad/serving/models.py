"""The served models at run time: each name's current version and the batcher answering it.

A new version of a file gets a new batcher; requests that arrived before the swap finish
on the old version (its batcher drains, then stops), new ones go to the new version.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from paragrad.errors import ModelFileError
from paragrad.models.base import Classifier, Model
from paragrad.serving.batching import Batcher, Outputs, Predict
from paragrad.serving.config import ServeConfig
from paragrad.serving.metrics import Metrics
from paragrad.serving.registry import ModelSlot, ModelVersion, load_version
from paragrad.serving.tensors import RequestError

if TYPE_CHECKING:
    from paragrad.engines import Engine

log = logging.getLogger("paragrad.serving")


def outputs_of(model: Model) -> Predict:
    """Every output of ``model`` for rows X in one pass: labels (or values) and probabilities;
    each equal to what ``model.predict`` and ``model.predict_proba`` give for those rows."""

    def predict(X: np.ndarray) -> Outputs:
        scores = model.decision_function(model.params, model.prepare(X))
        if isinstance(model, Classifier):
            return {"predict": model.labels_from(scores), "proba": model.proba_from(scores)}
        return {"predict": scores}

    return predict


class WorkerPool:
    """Local engine workers for requests of ``split_rows`` rows or more, one at a time."""

    def __init__(self, config: ServeConfig) -> None:
        self._config = config
        self._stack = ExitStack()
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def predictor_for(self, model: Model, X: np.ndarray) -> Predict | None:
        if self._config.workers < 2 or len(X) < self._config.split_rows:
            return None
        return lambda rows: self._predict(model, rows)

    def _predict(self, model: Model, X: np.ndarray) -> Outputs:
        from paragrad.engines import make_engine
        from paragrad.inference import predict

        with self._lock:
            if self._engine is None:
                self._engine = self._stack.enter_context(make_engine("local", self._config.workers))
            engine = self._engine
            outputs = {"predict": predict(model, X, engine=engine)}
            if model.is_classifier:
                outputs["proba"] = predict(model, X, engine=engine, proba=True)
        return outputs

    def close(self) -> None:
        with self._lock:
            self._stack.close()


class ServedModels:
    """The slots by name, the batcher of each version, loading and reloading."""

    def __init__(self, versions: list[ModelVersion], config: ServeConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.slots = {v.name: ModelSlot(v.name, v.path, v) for v in versions}
        self.workers = WorkerPool(config)
        self._batchers: dict[int, Batcher] = {}
        self._closing: set[asyncio.Task] = set()  # old versions' batchers, draining
        self.ready = False

    def start(self) -> None:
        """Start a batcher for every model (inside the server's event loop)."""
        for slot in self.slots.values():
            self._serve(slot.current, previous=None)
            self.metrics.model_added(slot.name)
        self.ready = True

    def version(self, name: str, version: str | None = None) -> ModelVersion:
        """The version of ``name`` now served; 404 for an unknown name or another version."""
        slot = self.slots.get(name)
        if slot is None:
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise RequestError(404, f"no model named {shown!r} (models: {', '.join(self.slots)})")
        if version is not None and version != slot.current.version:
            raise RequestError(
                404, f"model {name!r} has no version {version!r} (it serves {slot.current.version})"
            )
        return slot.current

    def batcher(self, version: ModelVersion) -> Batcher:
        return self._batchers[id(version)]

    def _serve(self, version: ModelVersion, previous: ModelVersion | None) -> None:
        model = version.model
        batcher = Batcher(
            outputs_of(model),
            max_batch=self.config.max_batch,
            max_wait_s=self.config.max_wait_ms / 1000,
            max_queue=self.config.max_queue,
            work_per_row=model.num_params,
            on_batch=lambda record: self.metrics.batched(version.name, record),
            offload=lambda X: self.workers.predictor_for(model, X),
        )
        batcher.start()
        self._batchers[id(version)] = batcher
        self.metrics.queue_depth.labels(version.name).set_function(lambda: batcher.depth)
        self.metrics.serving(version.name, version.version, None if previous is None else previous.version)

    def start_watching(self) -> asyncio.Task:
        """Look at the model files every ``reload_interval`` seconds (0: never)."""
        return asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        if self.config.reload_interval <= 0:
            return
        while True:
            await asyncio.sleep(self.config.reload_interval)
            for slot in self.slots.values():
                try:
                    await self._look(slot)
                except Exception:  # a bug of ours must not end the watching: say it, go on
                    self.metrics.reloads.labels(slot.name, "failed").inc()
                    log.exception("model %s: looking at %s failed; still watching it", slot.name, slot.path)

    async def _look(self, slot: ModelSlot) -> None:
        changed, stamp = slot.look()
        if changed and stamp is None:
            log.warning(
                "model %s: %s is gone; still serving version %s", slot.name, slot.path, slot.current.version
            )
        elif changed:
            await self._reload(slot)

    async def _reload(self, slot: ModelSlot) -> None:
        try:
            version = await asyncio.to_thread(load_version, slot.name, slot.path)
        except Exception as exc:  # unreadable (a folder, another user's file), damaged, foreign
            self.metrics.reloads.labels(slot.name, "failed").inc()
            reason = str(exc) if isinstance(exc, ModelFileError) else f"{slot.path}: {_reason(exc)}"
            log.warning("model %s: %s; still serving version %s", slot.name, reason, slot.current.version)
            return
        if version.version == slot.current.version:  # touched or rewritten, the same model
            return
        previous, slot.current = slot.current, version
        gc.unfreeze()  # the versions served at start-up may become garbage now: collect as usual
        self._serve(version, previous)
        self.metrics.reloads.labels(slot.name, "loaded").inc()
        log.info("model %s: now serving version %s (was %s)", slot.name, version.version, previous.version)
        # Requests already reading their bodies finish on the old version; its batcher stops
        # once they are answered, however long that takes, while other files are watched.
        old = self._batchers.pop(id(previous))
        closing = asyncio.get_running_loop().create_task(old.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Answer everything queued, then stop the batchers and the workers."""
        self.ready = False
        await asyncio.gather(*self._closing, *(batcher.close() for batcher in self._batchers.values()))
        await asyncio.to_thread(self.workers.close)


def _reason(exc: Exception) -> str:
    """An error reading a model file in one line: the system's words for an OS error."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read it ({exc.strerror})"
    return f"cannot load it ({type(exc).__name__}: {exc})"


def load_all(paths: dict[str, Path]) -> list[ModelVersion]:
    """Every model file read once, before the server binds: a bad file stops it at the start."""
    return [load_version(name, path) for name, path in paths.items()]
