"""The example data sets (bundled with scikit-learn, no download) and image corruptions.

Splits are fixed: stratified 60/40 with ``random_state=0``. Corruptions imitate the
ImageNet-C corruptions (Hendrycks & Dietterich 2019) at the scale of 8x8 digits, so the
data-shift demo can show an accuracy loss and its recovery by BatchNorm recalibration.
"""

import math
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]
Split = tuple[Float32Array, Int64Array, Float32Array, Int64Array]
Corruption = Literal["contrast", "brightness", "blur", "gaussian_noise"]

CORRUPTIONS: tuple[Corruption, ...] = get_args(Corruption)
SEVERITIES = (1, 2, 3, 4, 5)

# One parameter per severity 1..5, for images in [0, 1].
_CONTRAST = (0.5, 0.35, 0.25, 0.15, 0.08)  # factor on the deviation from the image mean
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to every pixel
_BLUR = (0.4, 0.55, 0.7, 0.85, 1.0)  # Gaussian sigma in pixels
_NOISE = (0.05, 0.1, 0.15, 0.2, 0.3)  # Gaussian noise standard deviation


def _split(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> Split:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.4, random_state=0, stratify=y
    )
    return (
        np.ascontiguousarray(x_train, dtype=np.float32),
        np.ascontiguousarray(y_train, dtype=np.int64),
        np.ascontiguousarray(x_test, dtype=np.float32),
        np.ascontiguousarray(y_test, dtype=np.int64),
    )


def load_digits_split() -> Split:
    """sklearn digits: ``(x_train, y_train, x_test, y_test)``, images ``(N, 1, 8, 8)`` in [0, 1].

    1,078 training and 719 test images; pixel values 0..16 divided by 16.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.reshape(-1, 1, 8, 8) / 16.0
    return _split(images, digits.target)


def load_wine_split() -> Split:
    """sklearn wine: ``(x_train, y_train, x_test, y_test)``, raw features ``(N, 13)``, 3 classes.

    The features are as sklearn stores them (not standardized); 106 training, 72 test rows.
    """
    from sklearn.datasets import load_wine

    wine = load_wine()
    return _split(wine.data, wine.target)


def _gaussian_blur(x: Float32Array, sigma: float) -> Float32Array:
    """Separable Gaussian blur over the last two axes, mirrored edges (scipy's ``reflect``)."""
    radius = min(math.ceil(3 * sigma), min(x.shape[-2:]) - 1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = x.astype(np.float64)
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        size = out.shape[axis]
        out = sum(
            (w * np.take(padded, np.arange(i, i + size), axis=axis) for i, w in enumerate(kernel)),
            start=np.zeros_like(out),
        )
    return out.astype(np.float32)


def corrupt(x: Float32Array, kind: Corruption, severity: int, seed: int = 0) -> Float32Array:
    """A corrupted copy of images ``x`` (``(N, ..., H, W)``, values in [0, 1]); result in [0, 1].

    - ``contrast``: each image's deviation from its own mean scaled down;
    - ``brightness``: a constant added to every pixel;
    - ``blur``: Gaussian blur over the last two axes;
    - ``gaussian_noise``: i.i.d. Gaussian noise, drawn from a generator seeded with
      ``(seed, severity)``, so the same call always gives the same array.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    level = severity - 1
    x = np.asarray(x, dtype=np.float32)
    if kind == "contrast":
        mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
        out = (x - mean) * _CONTRAST[level] + mean
    elif kind == "brightness":
        out = x + _BRIGHTNESS[level]
    elif kind == "blur":
        if x.ndim < 3:
            raise ValueError(f"blur needs images (N, ..., H, W), got shape {x.shape}")
        out = _gaussian_blur(x, _BLUR[level])
    elif kind == "gaussian_noise":
        rng = np.random.default_rng([seed, severity])
        out = x + rng.normal(0.0, _NOISE[level], size=x.shape)
    else:
        raise ValueError(f"unknown corruption {kind!r}; one of {', '.join(CORRUPTIONS)}")
    result: Float32Array = np.clip(out, 0.0, 1.0).astype(np.float32)
    return result
