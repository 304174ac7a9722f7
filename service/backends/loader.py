"""Loading a model version's file into its backend, and checking the file against the config.

The backend modules are imported on demand, so that a service with only ONNX models never
imports torch (seconds of start-up and hundreds of MB of memory).
"""

from dataclasses import dataclass
from pathlib import Path

from service.backends.base import Backend
from service.config import ModelConfig, TensorSpec


def load_backend(
    version_dir: Path, config: ModelConfig, threads: int = 0, spinning: bool | None = None
) -> Backend:
    """Load ``version_dir / config.model_file`` with the backend that ``config.backend`` names.

    ``threads`` is the intra-op thread count for the model (0: the runtime chooses);
    ``spinning`` lets onnxruntime's intra-op threads busy-wait between runs (``None``: chosen
    by the model's cost, see ``OnnxBackend``).
    Raises ``ConfigError`` naming the file when it is missing, unreadable or invalid, or when
    its inputs and outputs do not match the config.
    """
    path = version_dir / config.model_file
    if config.backend == "onnx":
        from service.backends.onnx_backend import OnnxBackend

        return OnnxBackend(path, config, threads, spinning)
    from service.backends.torch_backend import TorchBackend

    return TorchBackend(path, config, threads)


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


def check_tensor(role: str, spec: TensorSpec, found: FileTensor, max_batch_size: int) -> None:
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
