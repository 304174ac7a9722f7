"""Seeded CPU training of the example networks, and their accuracy."""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from service.examples.data import Float32Array, Int64Array
from service.examples.nets import ARCHITECTURES


@dataclass(frozen=True)
class TrainSpec:
    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """A fresh shuffle per epoch; the incomplete last batch is dropped, because BatchNorm in
    training mode fails on a single sample and a tiny batch gives noisy statistics."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


def train(
    architecture: str, x: Float32Array, y: Int64Array, spec: TrainSpec, seed: int = 0
) -> nn.Module:
    """A freshly initialised ``ARCHITECTURES[architecture]`` trained with Adam, in eval mode.

    Deterministic for a given seed on CPU: initialisation, shuffling and dropout draw from
    generators seeded here, and the caller fixes the thread count. The global torch RNG state
    is restored afterwards.
    """
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = ARCHITECTURES[architecture]()
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(
            module.parameters(), lr=spec.lr, weight_decay=spec.weight_decay
        )
        loss_fn = nn.CrossEntropyLoss()
        module.train()
        batch_size = min(spec.batch_size, len(x))
        for _ in range(spec.epochs):
            for index in _batches(len(x), batch_size, generator):
                optimizer.zero_grad()
                loss = loss_fn(module(inputs[index]), labels[index])
                loss.backward()
                optimizer.step()
    return module.eval()


@torch.no_grad()
def predict(module: nn.Module, x: Float32Array) -> Float32Array:
    """Eval-mode logits of ``module`` on ``x``, as float32 numpy."""
    module.eval()
    logits: Float32Array = module(torch.from_numpy(x)).numpy()
    return logits


def accuracy(logits: Float32Array, y: Int64Array) -> float:
    """Fraction of rows whose arg-max is the label."""
    return float(np.mean(np.argmax(logits, axis=1) == y))
