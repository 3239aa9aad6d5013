"""CodeCarbon's offline tracker around a run: its own energy and emissions estimate.

``codecarbon`` (``pip install 'paragrad[energy]'``) is imported only when the callback is
made. The offline tracker reads the machine's power interfaces (RAPL, NVML) where it can,
and needs no network: the carbon intensity comes from the country given.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import TYPE_CHECKING, Any

from paragrad.callbacks.base import Callback, TrainInfo
from paragrad.errors import ConfigError

if TYPE_CHECKING:
    from paragrad.training.run import Run


class CodeCarbon(Callback):
    """Measure a run with CodeCarbon's ``OfflineEmissionsTracker``.

    After the run, ``energy_kwh`` and ``emissions_kg`` hold CodeCarbon's figures (also
    written to ``output_dir/emissions.csv`` when ``output_dir`` is given).

    Parameters
    ----------
    country_iso_code : str
        Three-letter country code for the grid's carbon intensity, e.g. ``"FRA"``.
    output_dir : path, optional
        Folder for CodeCarbon's ``emissions.csv``; default: no file.
    """

    def __init__(
        self, country_iso_code: str = "USA", output_dir: str | os.PathLike[str] | None = None
    ) -> None:
        try:
            import codecarbon  # noqa: F401
        except ImportError:
            raise ConfigError(
                "the CodeCarbon callback needs codecarbon: pip install 'paragrad[energy]'"
            ) from None
        self.country_iso_code = country_iso_code
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.energy_kwh: float | None = None
        self.emissions_kg: float | None = None
        self._tracker: Any = None

    def on_train_start(self, info: TrainInfo) -> None:
        from codecarbon import OfflineEmissionsTracker

        files = {"output_dir": self.output_dir} if self.output_dir else {"save_to_file": False}
        with warnings.catch_warnings():  # save_to_file's deprecation is CodeCarbon's own affair
            warnings.simplefilter("ignore", DeprecationWarning)
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code, log_level=logging.ERROR, **files
            )
        self._tracker.start()

    def _stop(self) -> None:
        if self._tracker is None:
            return
        emissions = self._tracker.stop()
        self.emissions_kg = None if emissions is None else float(emissions)
        data = getattr(self._tracker, "final_emissions_data", None)
        self.energy_kwh = None if data is None else float(data.energy_consumed)
        self._tracker = None

    def on_train_end(self, run: Run) -> None:
        self._stop()

    def on_train_error(self, error: BaseException) -> None:
        self._stop()
