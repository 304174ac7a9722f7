"""The data-shift demo in torch: accuracy under corruptions, before and after ``update_bn``.

This is the reference that the service's recalibration reproduces (mode ``cumulative``):
``torch.optim.swa_utils.update_bn`` on fixed-size batches of the shifted data, with only the
BatchNorm modules in training mode (dropout stays off) and the trailing partial batch dropped.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from service.examples.data import CORRUPTIONS, SEVERITIES, Float32Array, Int64Array, corrupt
from service.examples.train import accuracy, predict


class _BatchNormOnlyTrain(nn.Module):
    """Wraps a module so that ``train()`` switches only its BatchNorm layers.

    ``update_bn`` calls ``model.train()``, which would also enable dropout; the service
    normalizes with batch statistics and leaves every other layer in eval mode.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.eval()
        self.training = False  # update_bn ends with ``train(was_training)``: back to eval

    def train(self, mode: bool = True) -> "_BatchNormOnlyTrain":
        self.training = mode
        for sub in self.inner.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)  # type: ignore[no-any-return]


def recalibrate_bn(module: nn.Module, x: Float32Array, batch_size: int = 64) -> nn.Module:
    """A copy of ``module`` whose BatchNorm statistics are re-estimated on ``x`` by ``update_bn``.

    ``x`` is cut into batches of ``batch_size`` in order; a trailing partial batch is dropped
    unless it is the only batch (as the service does). ``module`` itself is not changed.
    """
    adapted = copy.deepcopy(module).eval()
    inputs = torch.from_numpy(x)
    stop = max(len(x) - len(x) % batch_size, min(len(x), batch_size))
    batches = [inputs[i : i + batch_size] for i in range(0, stop, batch_size)]
    update_bn(batches, _BatchNormOnlyTrain(adapted))
    return adapted.eval()


@dataclass(frozen=True)
class ShiftRow:
    corruption: str
    severity: int
    before: float
    """Accuracy with the training statistics."""
    after: float
    """Accuracy after ``recalibrate_bn`` on the corrupted test data."""


def shift_table(
    module: nn.Module, x: Float32Array, y: Int64Array, severities: tuple[int, ...] = SEVERITIES
) -> list[ShiftRow]:
    """Accuracy of an image model on every corruption of ``x`` at each severity."""
    rows = [ShiftRow("clean", 0, _accuracy(module, x, y), _recalibrated(module, x, y))]
    for kind in CORRUPTIONS:
        for severity in severities:
            shifted = corrupt(x, kind, severity)
            before = _accuracy(module, shifted, y)
            rows.append(ShiftRow(kind, severity, before, _recalibrated(module, shifted, y)))
    return rows


def _accuracy(module: nn.Module, x: Float32Array, y: Int64Array) -> float:
    return accuracy(predict(module, x), y)


def _recalibrated(module: nn.Module, x: Float32Array, y: Int64Array) -> float:
    return _accuracy(recalibrate_bn(module, x), x, y)
