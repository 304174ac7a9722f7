"""A model file's inputs and outputs checked against the signature its config declares.

Backends read only what ``TensorSignature`` and ``ModelSignature`` name: ``ModelConfig`` and
its ``TensorSpec`` fit them, and the backends stay free of the config (which imports them to
learn each family's file name and platform).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class TensorSignature(Protocol):
    """A declared input or output (``TensorSpec``)."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str:
        """The V2 name, e.g. ``FP32``."""
        ...

    @property
    def shape(self) -> tuple[int, ...]:
        """Without the batch dimension."""
        ...


class ModelSignature(Protocol):
    """What a model file is checked against and fed with (``ModelConfig``)."""

    @property
    def inputs(self) -> Sequence[TensorSignature]: ...

    @property
    def outputs(self) -> Sequence[TensorSignature]: ...

    @property
    def max_batch_size(self) -> int: ...


@dataclass(frozen=True)
class FileTensor:
    """An input or output as the model file declares it.

    ``datatype`` is the V2 name (``FP32``), or the file's own name for a type V2 lacks, or
    ``None`` when the file does not say. ``shape`` includes the batch axis; an entry is
    ``None`` where the size is dynamic, and ``shape`` is ``None`` when the file gives no
    shape. ``batch_limit`` is the largest batch the file accepts, when it declares one.
    """

    datatype: str | None
    shape: tuple[int | None, ...] | None
    batch_limit: int | None = None


def check_tensor(role: str, spec: TensorSignature, found: FileTensor, max_batch_size: int) -> None:
    """Raise ``ValueError`` unless batches of up to ``max_batch_size`` samples of ``spec``
    fit ``found``: same datatype, rank and static per-sample sizes, a dynamic batch axis.

    The caller prefixes the model file's path to the message.
    """
    where = f"{role} {spec.name!r}"
    if found.datatype is not None and found.datatype != spec.datatype:
        raise ValueError(f"{where} is {found.datatype} in the file, {spec.datatype} in the config")
    if found.shape is None:
        return
    if len(found.shape) != len(spec.shape) + 1:
        raise ValueError(
            f"{where} has {len(found.shape)} dimensions in the file (batch included), "
            f"the config shape {list(spec.shape)} implies {len(spec.shape) + 1}"
        )
    if found.shape[0] is not None:
        # Serving batches requests together, and a single request can hold one sample.
        raise ValueError(
            f"{where} has a fixed batch size of {found.shape[0]}; export it with a dynamic "
            "first dimension"
        )
    for axis, (size, wanted) in enumerate(zip(found.shape[1:], spec.shape, strict=True)):
        if size is not None and size != wanted:
            raise ValueError(
                f"{where} has size {size} on dimension {axis + 1} in the file, {wanted} in "
                f"the config (shape {list(spec.shape)})"
            )
    if found.batch_limit is not None and found.batch_limit < max_batch_size:
        raise ValueError(
            f"{where} accepts batches of at most {found.batch_limit} samples, below the "
            f"config's max_batch_size {max_batch_size}"
        )
