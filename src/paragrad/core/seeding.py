"""Many seeded shuffles at once, each the one ``np.random.default_rng(entropy)`` makes.

SGD's stream shuffles every virtual shard's rows from its own seed (``[seed, shard, epoch,
1]``) each epoch: 1024 generators, each built by a :class:`numpy.random.SeedSequence`
(its hash of the entropy) and a :class:`numpy.random.PCG64` (two more hashes and two steps
of its 128-bit state). Building them one by one costs about 15 us each, several times the
shuffle itself. Here the hashes run over all the seeds at once, as numpy arrays of their
32-bit words, and one PCG64 is set to each seed's state in turn: the same draws, at about a
third of the cost.

The arithmetic follows numpy's ``SeedSequence`` (``mix_entropy`` and ``generate_state``) and
PCG64's seeding. Each call checks one of its seeds against numpy's own generator and falls
back to building them one by one where they differ, so a numpy that changed either gives
the same draws, only slower.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POOL_WORDS = 4
INIT_A, MULT_A = 0x43B0D7E5, 0x931E8875
INIT_B, MULT_B = 0x8B51F9DD, 0x58F38DED
MIX_MULT_L, MIX_MULT_R = 0xCA01F9DD, 0x4973F715
XSHIFT = 16
MASK32, MASK128 = (1 << 32) - 1, (1 << 128) - 1
PCG_MULTIPLIER = (2549297995355413924 << 64) + 4865540595714422341


def shuffle_seeded(values: np.ndarray, starts: np.ndarray, entropies: Sequence[Sequence[int]]) -> None:
    """Shuffle each run ``values[starts[i]:starts[i + 1]]`` in place as
    ``np.random.default_rng(entropies[i]).shuffle`` does; the entropies are lists of
    non-negative ints of the same shape (as many 32-bit words each)."""
    if len(entropies) == 0:
        return
    matrix = _entropy_words(entropies)
    states = [] if matrix is None else _pcg_states(_pool(matrix))
    numpy_state = np.random.PCG64(list(entropies[0])).state["state"]
    if not states or states[0] != (numpy_state["state"], numpy_state["inc"]):  # a numpy that seeds otherwise
        _shuffle_one_by_one(values, starts, entropies)
        return
    generator = np.random.Generator(np.random.PCG64(0))
    for i, (state, increment) in enumerate(states):
        generator.bit_generator.state = _pcg_state(state, increment)
        generator.shuffle(values[starts[i] : starts[i + 1]])


def _entropy_words(entropies: Sequence[Sequence[int]]) -> np.ndarray | None:
    """The entropies as numpy's seeding reads them, a row of 32-bit words each; None where
    they differ in shape (a number of one word in one entropy, of two in another; entropies
    of other lengths)."""
    try:
        small = np.array(entropies, dtype=np.int64)
    except (OverflowError, ValueError):  # a number past int64, or entropies of other lengths
        small = None
    if small is not None and small.ndim == 2 and 0 <= small.min() and small.max() <= MASK32:
        return small.astype(np.uint32)  # one word each: the common case
    words = [[word for number in entropy for word in _words(number)] for entropy in entropies]
    return np.array(words, dtype=np.uint32) if len({len(row) for row in words}) == 1 else None


def _shuffle_one_by_one(values: np.ndarray, starts: np.ndarray, entropies: Sequence[Sequence[int]]) -> None:
    """:func:`shuffle_seeded` with a numpy generator built for each run."""
    for i, entropy in enumerate(entropies):
        np.random.default_rng(list(entropy)).shuffle(values[starts[i] : starts[i + 1]])


def _words(number: int) -> list[int]:
    """A non-negative int as numpy's seeding reads it: 32-bit words, lowest first (0: one)."""
    number = int(number)
    if number < 0:
        raise ValueError(f"a seed must not be negative, got {number}")
    words = [number & MASK32]
    number >>= 32
    while number:
        words.append(number & MASK32)
        number >>= 32
    return words


def _hash_consts(init: int, multiplier: int, count: int) -> list[int]:
    """The hash constants of ``count`` successive hashes (``SeedSequence``'s schedule)."""
    consts, const = [], init
    for _ in range(count):
        consts.append(const)
        const = (const * multiplier) & MASK32
    return consts


def _hash(value: np.ndarray, const: int, multiplier: int) -> np.ndarray:
    """``SeedSequence``'s hash of 32-bit words with the schedule's constant ``const``."""
    value = (value ^ np.uint32(const)) * np.uint32((const * multiplier) & MASK32)
    return value ^ (value >> np.uint32(XSHIFT))


def _pool(entropy: np.ndarray) -> np.ndarray:
    """``SeedSequence(entropy).pool`` for each row of ``entropy`` (uint32 words): (rows, 4)."""
    rows, length = entropy.shape
    mixes = POOL_WORDS + POOL_WORDS * (POOL_WORDS - 1) + max(0, length - POOL_WORDS) * POOL_WORDS
    consts = iter(_hash_consts(INIT_A, MULT_A, mixes))

    def hashmix(value: np.ndarray) -> np.ndarray:
        return _hash(value, next(consts), MULT_A)

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.uint32(MIX_MULT_L) * x - np.uint32(MIX_MULT_R) * y
        return result ^ (result >> np.uint32(XSHIFT))

    zeros = np.zeros(rows, dtype=np.uint32)
    pool = [hashmix(entropy[:, i] if i < length else zeros) for i in range(POOL_WORDS)]
    for source in range(POOL_WORDS):
        for target in range(POOL_WORDS):
            if source != target:
                pool[target] = mix(pool[target], hashmix(pool[source]))
    for source in range(POOL_WORDS, length):
        for target in range(POOL_WORDS):
            pool[target] = mix(pool[target], hashmix(entropy[:, source]))
    return np.stack(pool, axis=1)


def _pcg_states(pool: np.ndarray) -> list[tuple[int, int]]:
    """PCG64's ``(state, inc)`` seeded from each row's ``generate_state(4, uint64)``."""
    consts = _hash_consts(INIT_B, MULT_B, 2 * POOL_WORDS)
    words = np.empty((len(pool), 2 * POOL_WORDS), dtype=np.uint32)
    for i, const in enumerate(consts):
        words[:, i] = _hash(pool[:, i % POOL_WORDS], const, MULT_B)
    halves = words.astype("<u4").view("<u8").astype(np.uint64).tolist()
    states = []
    for high, low, inc_high, inc_low in halves:
        increment = ((((inc_high << 64) | inc_low) << 1) | 1) & MASK128
        state = (increment + ((high << 64) | low)) & MASK128  # a step from 0 lands on inc
        states.append(((state * PCG_MULTIPLIER + increment) & MASK128, increment))
    return states


def _pcg_state(state: int, increment: int) -> dict[str, object]:
    """The ``state`` that sets a PCG64 to ``(state, increment)``, as its seeding leaves it."""
    pcg = {"state": state, "inc": increment}
    return {"bit_generator": "PCG64", "state": pcg, "has_uint32": 0, "uinteger": 0}
