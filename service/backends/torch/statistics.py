"""The statistics writer of ``torch.export`` programs: a copy of the file with new
running-statistics buffers."""

import io
from pathlib import Path

import torch
from torch.export import ExportedProgram

from service.backends.base import Statistics
from service.backends.calibration import checked_statistics
from service.backends.torch.graph import layer_channels
from service.backends.torch.program import SERIALIZATION_LOCK, load_program
from service.errors import ConfigError


def write_torch_statistics(src: Path, dest: Path, stats: Statistics) -> None:
    """Save ``src`` as ``dest`` with the ``<name>.running_mean``/``<name>.running_var``
    buffers of the named layers replaced by ``stats`` (in the buffers' dtype), then check
    that the saved program holds them. Raises ``InvalidInput`` naming the layer for an
    unknown name or a wrong channel count. Writes only ``dest``.
    """
    program = load_program(src)
    checked = checked_statistics(layer_channels(program, src), stats)
    expected: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, (mean, var) in checked.items():
            for key, values in ((f"{name}.running_mean", mean), (f"{name}.running_var", var)):
                tensor = _stored(program, key, src)
                tensor.copy_(torch.from_numpy(values).reshape(tensor.shape))
                expected[key] = tensor.clone()
    # Serialized in memory, written by Python: torch's file writer raises on a full disk and
    # then aborts the whole process from its destructor; ``write_bytes`` raises ``OSError``.
    buffer = io.BytesIO()
    with SERIALIZATION_LOCK:
        torch.export.save(program, buffer)
    dest.write_bytes(buffer.getbuffer())
    saved = load_program(dest)
    for key, tensor in expected.items():
        if not torch.equal(_stored(saved, key, dest), tensor):
            raise RuntimeError(f"{dest}: {key} was not saved")


def _stored(program: ExportedProgram, key: str, path: Path) -> torch.Tensor:
    tensor = program.state_dict.get(key)
    if tensor is None:
        tensor = program.constants.get(key)
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"{path}: the program stores no tensor {key!r}")
    return tensor
