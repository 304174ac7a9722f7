"""The statistics writer of ONNX models: a copy of the file with new BatchNorm statistics."""

from pathlib import Path

import onnx

from service.backends.base import Statistics
from service.backends.calibration import checked_statistics
from service.backends.onnx.graph import batch_norm_nodes, set_own_constant, used_names
from service.backends.onnx.layers import batch_norm_channels, load_model


def write_onnx_statistics(src: Path, dest: Path, stats: Statistics) -> None:
    """Copy ``src`` to ``dest`` with the ``input_mean``/``input_var`` of the named BatchNorms
    replaced by ``stats`` (torch's convention: ``running_var`` is the unbiased variance, so
    both forms of one model hold the same numbers), in the dtype of the tensors they replace.

    A statistic that another node also reads, or that an Identity/Constant node produces,
    is not changed in place: the BatchNorm gets its own new initializer under the name it
    reads (so its layer name stays), and the other readers move to a new name. Raises
    ``InvalidInput`` naming the layer for an unknown name or a wrong channel count. Writes
    only ``dest``.
    """
    model = load_model(src)
    names = batch_norm_channels(model, src)
    checked = checked_statistics(names, stats)
    nodes = dict(zip(names, batch_norm_nodes(model.graph), strict=True))
    used = used_names(model.graph)
    for name, (mean, var) in checked.items():
        set_own_constant(model, nodes[name], 3, mean, used)
        set_own_constant(model, nodes[name], 4, var, used)
    onnx.save(model, dest)
