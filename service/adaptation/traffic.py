"""Captured traffic as an adaptation uses it: split into fit and held-out shares, and sent to
the recalibration job as an ordinary body."""

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import orjson

from service.adaptation.evidence import count, rows
from service.backends.base import Arrays

_SEED = 0  # the split is the same for the same captured samples


def recalibration_body(inputs: Arrays) -> tuple[str, bytes]:
    """The fit share as a recalibration body: a ``.npy`` for one input, else ndjson."""
    if len(inputs) == 1:
        buffer = io.BytesIO()
        np.save(buffer, next(iter(inputs.values())), allow_pickle=False)
        return "application/x-npy", buffer.getvalue()
    numpy = orjson.OPT_SERIALIZE_NUMPY
    lines = [
        orjson.dumps({name: array[i] for name, array in inputs.items()}, option=numpy)
        for i in range(count(inputs))
    ]
    return "application/x-ndjson", b"\n".join(lines) + b"\n"


async def once(body: bytes) -> AsyncIterator[bytes]:
    """``body`` as the stream the recalibration job reads."""
    yield body


@dataclass
class Split:
    """The samples a candidate is fitted on, and those it is judged on."""

    fit: Arrays
    holdout: Arrays


def split(traffic: Arrays, holdout_share: float) -> Split:
    """A fixed-seed random ``holdout_share`` of ``traffic`` held out; both shares keep
    the capture's order."""
    order = np.random.default_rng(_SEED).permutation(count(traffic))
    cut = round(len(order) * (1.0 - holdout_share))
    return Split(rows(traffic, np.sort(order[:cut])), rows(traffic, np.sort(order[cut:])))
