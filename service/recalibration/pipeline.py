"""``ComputePipeline``: a recalibration's batch compute on its own thread, fed a bounded queue.

Parsing a body and running the calibration forward both take whole cores, and both release
the GIL for their heavy parts (numpy copies and checks, onnxruntime and torch kernels). Done in
turn, the upload waits while a batch runs and the forward waits while the next batch is
received and parsed; this pipeline lets the parsing thread hand each group of completed ghost
batches over and go on with the next chunk while the compute thread runs them.

Contract:

- ``put`` (the parsing side, one thread at a time) blocks while ``depth`` groups wait, so at
  most ``depth`` groups wait and one runs, whatever the stream length; groups run in ``put``
  order, so results are those of running them in turn on the parsing thread.
- The first exception of ``compute`` stops the work: later groups are dropped, and ``put``
  raises it, so the parser stops at the next group instead of reading the rest of the body.
  ``join`` waits for every group put and raises it too: an error of an earlier batch comes
  before anything that the parsing found later in the stream.
- ``abort`` drops the groups waiting; the one running finishes (a forward cannot be
  interrupted); ``stopped`` is done once the thread has ended.
"""

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class ComputePipeline(Generic[T]):
    def __init__(
        self, compute: Callable[[Sequence[T]], None], depth: int = 1, name: str = "compute"
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._compute = compute
        self._depth = depth
        self._groups: deque[Sequence[T]] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._aborted = False
        self._error: BaseException | None = None
        self.stopped: Future[None] = Future()
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def put(self, group: Sequence[T]) -> None:
        """Queue ``group`` to run after the groups before it (nothing for an empty one);
        blocks while ``depth`` groups wait. Raises the compute's error if there was one."""
        with self._changed:
            while len(self._groups) >= self._depth and not self._done_waiting():
                self._changed.wait()
            self._raise_error()
            if group and not self._aborted:
                self._groups.append(group)
                self._changed.notify_all()

    def join(self) -> None:
        """No more groups: wait until every group put ran; raises the compute's error."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self.stopped.result()
        self._raise_error()

    def abort(self) -> None:
        """Drop the waiting groups and end the thread after the running one; never blocks."""
        with self._changed:
            self._aborted = True
            self._groups.clear()
            self._changed.notify_all()

    def _done_waiting(self) -> bool:
        return self._aborted or self._error is not None

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _next(self) -> Sequence[T] | None:
        """The next group to run, or ``None`` when the work is over."""
        with self._changed:
            while not (self._groups or self._closed or self._aborted):
                self._changed.wait()
            if self._aborted or not self._groups:
                return None
            group = self._groups.popleft()
            self._changed.notify_all()
            return group

    def _work(self) -> None:
        try:
            while (group := self._next()) is not None:
                try:
                    self._compute(group)
                except BaseException as error:
                    with self._changed:
                        self._error = error
                        self._groups.clear()
                        self._changed.notify_all()
                    return
        finally:
            self.stopped.set_result(None)
