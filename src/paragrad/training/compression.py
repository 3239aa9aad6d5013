"""Compression of what workers send back: top-k, block-scaled int8, and fp16.

A compressor turns a float64 vector into a small payload of arrays and back. Top-k keeps
the largest entries and is used with error feedback: what a worker leaves out in one
round is added to what it sends in the next, so nothing is lost, only delayed. Int8
rounds stochastically with the worker's seeded generator, so its error averages out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from paragrad.errors import ConfigError

INT8_BLOCK = 256


class Compressor:
    """Encodes a vector into a payload of arrays, and decodes it."""

    error_feedback = False

    def encode(self, vector: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def decode(self, payload: tuple[np.ndarray, ...], size: int) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class TopK(Compressor):
    """The ``fraction`` of entries largest in magnitude: int32 indices and float32 values."""

    fraction: float
    error_feedback = True

    def encode(self, vector: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        k = max(1, math.ceil(self.fraction * len(vector)))
        if 2 * k >= len(vector):  # indices would cost more than they save: send all values
            return (vector.astype(np.float32),)
        keep = np.sort(np.argpartition(np.abs(vector), len(vector) - k)[len(vector) - k :])
        index_type = np.int32 if len(vector) < 2**31 else np.int64
        return (keep.astype(index_type), vector[keep].astype(np.float32))

    def decode(self, payload: tuple[np.ndarray, ...], size: int) -> np.ndarray:
        if len(payload) == 1:
            return payload[0].astype(np.float64)
        indices, values = payload
        vector = np.zeros(size)
        vector[indices] = values
        return vector


@dataclass(frozen=True)
class Int8(Compressor):
    """Blocks of 256 entries scaled to [-127, 127] and rounded stochastically (unbiased)."""

    def encode(self, vector: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        padded = np.zeros(math.ceil(len(vector) / INT8_BLOCK) * INT8_BLOCK)
        padded[: len(vector)] = vector
        blocks = padded.reshape(-1, INT8_BLOCK)
        scales = np.abs(blocks).max(axis=1) / 127.0
        scales[scales == 0] = 1.0
        scaled = blocks / scales[:, None]
        rounded = np.floor(scaled + rng.random(scaled.shape))
        values = np.clip(rounded, -127, 127).astype(np.int8).ravel()[: len(vector)]  # no padding sent
        return (values, scales.astype(np.float32))

    def decode(self, payload: tuple[np.ndarray, ...], size: int) -> np.ndarray:
        values, scales = payload
        padded = np.zeros(len(scales) * INT8_BLOCK)
        padded[:size] = values
        blocks = padded.reshape(-1, INT8_BLOCK) * scales.astype(np.float64)[:, None]
        return blocks.ravel()[:size]


@dataclass(frozen=True)
class FP16(Compressor):
    """Half precision after scaling by the largest magnitude (so sums cannot overflow)."""

    def encode(self, vector: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        scale = float(np.abs(vector).max()) if len(vector) else 0.0
        scale = scale if scale > 0 else 1.0
        return (np.array([scale]), (vector / scale).astype(np.float16))

    def decode(self, payload: tuple[np.ndarray, ...], size: int) -> np.ndarray:
        scale, values = payload
        return values.astype(np.float64) * scale[0]


def get_compressor(spec: str | None) -> Compressor | None:
    """``None``, ``"topk:FRACTION"`` (0 < fraction <= 1), ``"int8"`` or ``"fp16"``."""
    if spec is None:
        return None
    if spec == "int8":
        return Int8()
    if spec == "fp16":
        return FP16()
    if spec.startswith("topk:"):
        try:
            fraction = float(spec[5:])
        except ValueError:
            fraction = math.nan
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"top-k needs a fraction in (0, 1], like topk:0.01; got {spec!r}")
        return TopK(fraction)
    raise ConfigError(f"unknown compression {spec!r}; use topk:FRACTION, int8 or fp16")
