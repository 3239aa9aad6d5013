"""TensorBoard event files for a run, written with the ``tensorboard`` package alone.

The scalars are classic ``simple_value`` summaries written through TensorBoard's own
``EventFileWriter`` (what PyTorch's ``SummaryWriter`` uses underneath), so neither
TensorFlow nor PyTorch is needed, and TensorBoard's readers and dashboards take them as
they are. ``tensorboard`` is imported only when a TensorBoard callback is made, so
``import paragrad`` stays light.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from paragrad.callbacks.base import TRACKED, Callback, TrainInfo
from paragrad.errors import ConfigError

if TYPE_CHECKING:
    from paragrad.training.run import Run

FLUSH_SECONDS = 5  # how stale a live dashboard may be; events are written in the background


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "TensorBoard tracking needs the tensorboard package: pip install 'paragrad[tensorboard]'"
        ) from None


class TensorBoard(Callback):
    """Log a run to ``log_dir`` for ``tensorboard --logdir``.

    Each round adds the scalars loss, wall_s, bytes_sent, bytes_received and samples at
    step = round. The run's parameters are written once as a text table (Text tab) and as
    hyperparameters (HParams tab); the summary as text at the end. Give each run its own
    folder (``runs/lr0.1``, ``runs/lr0.01``): TensorBoard shows each folder as one run.

    Parameters
    ----------
    log_dir : path
        Folder for the event files; made if missing.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        _require_tensorboard()
        self.log_dir = os.fspath(log_dir)
        self._writer: Any = None  # the open EventFileWriter, from train start to end

    def on_train_start(self, info: TrainInfo) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(self.log_dir, flush_secs=FLUSH_SECONDS)
        params = info.params()
        table = "| parameter | value |\n|---|---|\n" + "".join(
            f"| {key} | {value} |\n" for key, value in params.items()
        )
        self._write_text("parameters", table, info.first_round)
        self._write(hparams_pb(params, start_time_secs=time.time()), info.first_round)

    def on_round_end(self, record: dict[str, Any]) -> bool | None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=key, simple_value=float(record[key])) for key in TRACKED]
        self._write(Summary(value=values), record["round"])
        return None

    def on_train_end(self, run: Run) -> None:
        summary = "    " + run.summary().replace("\n", "\n    ")  # indented: Markdown code
        self._write_text("summary", summary, len(run.history))
        self._close()

    def on_train_error(self, error: BaseException) -> None:
        self._close()

    def _write_text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._write(text_pb(tag, text), step)

    def _write(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
