"""The batcher on its own, in one event loop: which requests share a batch, and that each
gets back exactly its own rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from paragrad.serving.batching import Batcher, QueueFull


class Recorder:
    """A predict function that records the batches it was given: each row's output is its sum."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, X: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(len(X))
        return {"predict": X.sum(axis=1)}


def make(recorder, **settings) -> Batcher:
    options = {"max_batch": 100, "max_wait_s": 10.0, "max_queue": 100, "work_per_row": 1} | settings
    batcher = Batcher(recorder, **options)
    batcher.start()
    return batcher


def submit(batcher: Batcher, X: np.ndarray) -> asyncio.Future:
    batcher.expect()
    return batcher.submit(X)


def rows(count: int, start: float = 0.0) -> np.ndarray:
    return np.arange(start, start + 2 * count).reshape(count, 2)


def test_requests_queued_together_share_a_batch_and_each_gets_its_rows():
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder)
        requests = [rows(n, start=10 * n) for n in (1, 3, 2, 5)]
        answers = [submit(batcher, X) for X in requests]
        results = await asyncio.gather(*answers)
        await batcher.close()
        return recorder.batches, requests, results

    batches, requests, results = asyncio.run(scenario())
    assert batches == [11]
    for X, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["predict"], X.sum(axis=1))


def test_batches_hold_at_most_max_batch_rows_and_a_larger_request_goes_alone():
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder, max_batch=7)
        answers = [submit(batcher, rows(n)) for n in (3, 3, 3, 9, 1)]
        await asyncio.gather(*answers)
        await batcher.close()
        return recorder.batches

    assert asyncio.run(scenario()) == [6, 3, 9, 1]


def test_a_lone_request_does_not_wait_for_the_cap():
    async def scenario():
        batcher = make(Recorder(), max_wait_s=60.0)
        result = await asyncio.wait_for(submit(batcher, rows(1)), timeout=5)
        await batcher.close()
        return result

    np.testing.assert_array_equal(asyncio.run(scenario())["predict"], [1.0])


def test_a_batch_waits_for_requests_still_being_read():
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder)
        batcher.expect()  # a second request is being read
        first = submit(batcher, rows(2))
        for _ in range(20):  # the batcher gets many turns of the loop meanwhile
            await asyncio.sleep(0)
        second = batcher.submit(rows(3))
        await asyncio.gather(first, second)
        batcher.expect()
        batcher.forget()  # an expected request that never came does not hold the next one
        await submit(batcher, rows(1))
        await batcher.close()
        return recorder.batches

    assert asyncio.run(scenario()) == [5, 1]


def test_the_wait_for_more_ends_at_max_wait():
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder, max_wait_s=0.0)
        batcher.expect()  # never submitted: only the cap ends the wait
        await asyncio.wait_for(submit(batcher, rows(2)), timeout=5)
        return recorder.batches

    assert asyncio.run(scenario()) == [2]


def test_a_full_queue_refuses_and_close_answers_what_was_queued():
    async def scenario():
        recorder = Recorder()
        batcher = Batcher(recorder, max_batch=100, max_wait_s=0.0, max_queue=2, work_per_row=1)
        answers = [submit(batcher, rows(1)), submit(batcher, rows(1))]  # not started: nothing is taken
        with pytest.raises(QueueFull):
            submit(batcher, rows(1))
        batcher.start()
        await batcher.close()
        return [answer.done() for answer in answers], recorder.batches

    assert asyncio.run(scenario()) == ([True, True], [2])


def test_a_failed_prediction_reaches_every_request_of_its_batch():
    def broken(X):
        raise ValueError("no luck")

    async def scenario():
        batcher = make(broken)
        answers = [submit(batcher, rows(1)), submit(batcher, rows(2))]
        results = await asyncio.gather(*answers, return_exceptions=True)
        await batcher.close()
        return results

    assert [str(result) for result in asyncio.run(scenario())] == ["no luck", "no luck"]
