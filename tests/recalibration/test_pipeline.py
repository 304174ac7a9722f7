"""``ComputePipeline``: order, the bound on waiting groups, errors and abort, checked against
the groups put (the reference: running them in turn on one thread)."""

import threading
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.recalibration.pipeline import ComputePipeline


class Recorder:
    """A compute that records the items it ran and fails on ``fail_on``."""

    def __init__(self, fail_on: int) -> None:
        self.ran: list[int] = []
        self.fail_on = fail_on

    def __call__(self, group: Sequence[int]) -> None:
        for item in group:
            if item == self.fail_on:
                raise ValueError(f"bad item {item}")
            self.ran.append(item)


@settings(max_examples=30, deadline=None)
@given(
    groups=st.lists(st.lists(st.integers(0, 1000), max_size=5), max_size=20),
    depth=st.integers(1, 3),
)
def test_every_group_runs_once_in_put_order_and_waiting_groups_stay_bounded(
    groups: list[list[int]], depth: int
) -> None:
    """The compute holds each group until the producer has handed over as many as the bound
    allows, so every put of a long stream finds the queue full and must wait."""
    ran: list[int] = []
    progress = threading.Condition()
    handed_over, finished = 0, 0
    total = sum(bool(group) for group in groups)  # an empty group is not queued

    def compute(group: Sequence[int]) -> None:
        nonlocal finished
        with progress:
            progress.wait_for(lambda: handed_over >= min(finished + 1 + depth, total))
        ran.extend(group)
        with progress:
            finished += 1

    pipeline: ComputePipeline[int] = ComputePipeline(compute, depth=depth)
    for group in groups:
        pipeline.put(group)
        with progress:
            handed_over += bool(group)
            assert handed_over - finished <= depth + 1  # depth waiting, one running
            progress.notify_all()
    pipeline.join()
    assert ran == [item for group in groups for item in group]
    assert pipeline.stopped.done()


def test_an_error_stops_the_work_and_is_raised_by_put_and_join() -> None:
    compute = Recorder(fail_on=3)
    pipeline: ComputePipeline[int] = ComputePipeline(compute, depth=1)
    pipeline.put([1, 2])
    pipeline.put([3, 4])
    pipeline.stopped.result()  # the thread ends at the error
    with pytest.raises(ValueError, match="bad item 3"):
        pipeline.put([5])
    with pytest.raises(ValueError, match="bad item 3"):
        pipeline.join()
    assert compute.ran == [1, 2]  # nothing after the failing item


def test_a_put_blocked_on_a_full_queue_raises_the_error_of_the_running_group() -> None:
    release = threading.Event()
    started = threading.Event()

    def compute(group: Sequence[int]) -> None:
        started.set()
        release.wait()
        raise RuntimeError(f"group {list(group)} failed")

    pipeline: ComputePipeline[int] = ComputePipeline(compute, depth=1)
    pipeline.put([1])
    started.wait()
    pipeline.put([2])  # waits in the queue; the next put blocks
    outcome: list[BaseException] = []

    def put_third() -> None:
        try:
            pipeline.put([3])
        except RuntimeError as error:
            outcome.append(error)

    producer = threading.Thread(target=put_third)
    producer.start()
    release.set()
    producer.join()
    assert [str(error) for error in outcome] == ["group [1] failed"]


def test_abort_drops_the_waiting_groups_and_ends_after_the_running_one() -> None:
    release = threading.Event()
    started = threading.Event()
    ran: list[list[int]] = []

    def compute(group: Sequence[int]) -> None:
        started.set()
        release.wait()
        ran.append(list(group))

    pipeline: ComputePipeline[int] = ComputePipeline(compute, depth=1)
    pipeline.put([1])
    started.wait()
    pipeline.put([2])
    pipeline.abort()
    pipeline.put([3])  # after abort: dropped, never blocks
    release.set()
    pipeline.stopped.result()
    assert ran == [[1]]


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth must be >= 1"):
        ComputePipeline(lambda group: None, depth=0)
