"""paragrad's model files served by MLServer: the runtime of the ``serve`` suite's MLServer baseline.

MLServer imports this module in its own environment, which has MLServer, numpy and
paragrad's source on its path but none of paragrad's other dependencies (its pins conflict
with ours, so it is installed apart). Each model's settings name its file in
``parameters.uri``; it is read with :func:`paragrad.load_model` and predicted by the calls
``paragrad serve`` makes, so both servers answer the same numbers for the same rows: the
labels (or values) as ``predict`` and, for classifiers, the probabilities as ``proba``.

MLServer's own code does the rest, as for any custom runtime: parsing the request into
its pydantic types, decoding the first input with its numpy codec, encoding the outputs,
and (when the model's settings ask for it) its adaptive batching.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from paragrad.models import Classifier, Model
from paragrad.training.checkpoint import load_model

try:  # MLServer's own environment; anywhere else (the package's import check) it is inert
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceResponse
except ImportError:
    MLModel = object

if TYPE_CHECKING:
    from mlserver.types import InferenceRequest


def outputs(model: Model, X: np.ndarray) -> dict[str, np.ndarray]:
    """What ``paragrad serve`` answers for rows X, computed as it computes it."""
    scores = model.decision_function(model.params, model.prepare(X))
    if isinstance(model, Classifier):
        return {"predict": model.labels_from(scores), "proba": model.proba_from(scores)}
    return {"predict": scores}


class ParagradRuntime(MLModel):
    """One paragrad model file, served by MLServer."""

    async def load(self) -> bool:
        parameters = self.settings.parameters
        if parameters is None or not parameters.uri:
            raise ValueError(f"model {self.name!r}: its settings name no model file (parameters.uri)")
        self._model = load_model(parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        X = NumpyCodec.decode_input(payload.inputs[0])
        answers = outputs(self._model, X.reshape(len(X), -1))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, values) for name, values in answers.items()],
        )
