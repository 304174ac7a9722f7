"""Cut a stream of samples into fixed-size "ghost" batches, whatever the client's chunking.

Train-mode batch statistics depend on which samples share a batch, so the server, not the
client, decides the batches: the same samples in the same order always give the same batches,
hence bit-identical statistics. The name is from ghost batch normalization (Hoffer, Hubara &
Soudry, "Train longer, generalize better", NeurIPS 2017), which computes statistics over
fixed-size slices of a larger batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Batch = npt.NDArray[np.generic]


@dataclass(frozen=True)
class GhostBatchReport:
    """What the batcher did with the stream, for the recalibration response.

    Tail policy: a trailing partial batch is dropped unless it is the only batch, because an
    equal-weight average over batches would let a 2-sample tail move a variance by ~30%.
    """

    batch_size: int
    samples_received: int
    full_batches: int
    tail_samples: int
    tail_used: bool

    @property
    def samples_used(self) -> int:
        return self.full_batches * self.batch_size + (self.tail_samples if self.tail_used else 0)

    @property
    def batches(self) -> int:
        return self.full_batches + int(self.tail_used)


class GhostBatcher:
    """Buffers samples in arrival order and hands out batches of exactly ``batch_size``.

    Memory is one batch buffer. ``push`` does its work eagerly (nothing is lost if its result
    is not iterated) and returns the completed batches in order. A batch is either a slice
    (view) of the pushed array, valid while the caller leaves that array unchanged, or a
    freshly allocated buffer that the caller owns; no view of a pushed array is kept after
    ``push`` returns. Not thread-safe: one stream, one batcher.
    """

    def __init__(self, batch_size: int, sample_shape: Sequence[int], dtype: npt.DTypeLike) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.dtype = np.dtype(dtype)
        self._buffer: Batch | None = None
        self._filled = 0
        self._received = 0
        self._full_batches = 0
        self._report: GhostBatchReport | None = None

    def push(self, samples: npt.NDArray[np.generic]) -> Iterator[Batch]:
        """Add ``samples`` (shape ``(k, *sample_shape)``, any k >= 0); return every batch that
        is now complete, in arrival order. Samples are cast to the batcher's dtype."""
        if self._report is not None:
            raise RuntimeError("push after finish")
        samples = np.asarray(samples)
        if samples.shape[1:] != self.sample_shape or samples.ndim == 0:
            raise ValueError(f"samples of shape {samples.shape[1:]}, expected {self.sample_shape}")
        samples = samples.astype(self.dtype, copy=False)
        self._received += len(samples)
        batches: list[Batch] = []
        start = 0
        if self._filled:
            start = self._fill(samples)
            if self._filled == self.batch_size:
                batches.append(self._take_buffer())
        while len(samples) - start >= self.batch_size:
            batches.append(samples[start : start + self.batch_size])
            start += self.batch_size
        if start < len(samples):
            self._fill(samples[start:])
        self._full_batches += len(batches)
        return iter(batches)

    def finish(self) -> Batch | None:
        """End of stream (call once): the trailing partial batch if it is the only batch,
        else ``None`` (dropped, or there is no tail). ``report`` says which."""
        if self._report is not None:
            raise RuntimeError("finish called twice")
        self._report = self.report
        tail = (
            self._take_buffer()[: self._report.tail_samples] if self._buffer is not None else None
        )
        return tail if self._report.tail_used else None

    @property
    def report(self) -> GhostBatchReport:
        """The batching so far; final (tail decided) after ``finish``."""
        if self._report is not None:
            return self._report
        used = self._filled > 0 and self._full_batches == 0
        return GhostBatchReport(
            self.batch_size, self._received, self._full_batches, self._filled, used
        )

    def _fill(self, samples: Batch) -> int:
        """Copy as many of ``samples`` as fit into the buffer; return how many."""
        if self._buffer is None:
            self._buffer = np.empty((self.batch_size, *self.sample_shape), self.dtype)
        taken = min(len(samples), self.batch_size - self._filled)
        self._buffer[self._filled : self._filled + taken] = samples[:taken]
        self._filled += taken
        return taken

    def _take_buffer(self) -> Batch:
        """Hand the buffer to the caller (who may keep it); the next fill allocates anew."""
        buffer, self._buffer, self._filled = self._buffer, None, 0
        assert buffer is not None
        return buffer
