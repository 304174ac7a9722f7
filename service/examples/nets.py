"""The example networks: small, CPU-trainable, each with BatchNorm layers to serve and recalibrate.

Attribute names make the module paths readable, because a layer's name in the service is its
module path (``bn1``, ``bn2``, ``fc_bn``). Constructors draw their initial weights from torch's
global generator; the build seeds it, so an architecture and a seed determine the weights.
"""

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """8x8 digit images ``(N, 1, 8, 8)`` in [0, 1] -> logits ``(N, 10)``.

    Conv-BN2d-ReLU-pool twice, then Linear-BN1d-ReLU, dropout and a linear classifier.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 2 * 2, 64)
        self.fc_bn = nn.BatchNorm1d(64)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.fc_bn(self.fc(torch.flatten(x, 1))))
        return self.head(self.dropout(x))  # type: ignore[no-any-return]


class DigitsLN(nn.Module):
    """Like ``DigitsCNN`` with a LayerNorm in place of the BatchNorm1d.

    Shows a model that mixes batch-statistics layers (``bn1``, ``bn2``) with a
    batch-independent one (``fc_ln``): the service serves it normally, lists the LayerNorm and
    recalibrates only the BatchNorms.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 2 * 2, 64)
        self.fc_ln = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.fc_ln(self.fc(torch.flatten(x, 1))))
        return self.head(x)  # type: ignore[no-any-return]


class WineMLP(nn.Module):
    """Raw (unstandardized) wine features ``(N, 13)`` -> logits ``(N, 3)``.

    Linear-BN1d-ReLU twice, then a linear classifier. The features are not standardized in
    preprocessing: the BatchNorm after each Linear does that work, so clients send rows as
    sklearn stores them and a change of a sensor's scale is what recalibration corrects.
    """

    def __init__(self, in_features: int = 13, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.fc1(x)))
        x = torch.relu(self.bn2(self.fc2(x)))
        return self.head(x)  # type: ignore[no-any-return]


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "digits": DigitsCNN,
    "wine": WineMLP,
    "digits_ln": DigitsLN,
}
"""Architecture name -> module class; an architecture's models are ``<architecture>`` (onnx)
and ``<architecture>_torch``."""


def batchnorm_modules(module: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm submodules of ``module`` by module path, in definition order."""
    return {
        name: sub
        for name, sub in module.named_modules()
        if isinstance(sub, nn.modules.batchnorm._BatchNorm)
    }
