"""Bare baselines measured in the benchmark driver: onnxruntime calls and torch ``update_bn``.

Each is what the service would cost with no HTTP, no queue and no framework: the same model
file in a plain ``InferenceSession`` (``ORT_ENABLE_ALL``, onnxruntime's default threads), or the
same torch module under ``torch.optim.swa_utils.update_bn``.
"""

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from torch.optim.swa_utils import update_bn


def ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def time_calls(call: Callable[[], object], seconds: float, warmup: int = 10) -> list[int]:
    """Run ``call`` repeatedly for ``seconds`` (after ``warmup`` calls); per-call ns."""
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    times: list[int] = []
    stop = clock() + int(seconds * 1e9)
    while True:
        start = clock()
        if start >= stop:
            return times
        call()
        times.append(clock() - start)


def ort_latencies(path: Path, sample: npt.NDArray[np.float32], seconds: float) -> list[int]:
    """Per-call ns of ``session.run`` on ``sample`` (a batch, usually of one)."""
    session = ort_session(path)
    feed = {session.get_inputs()[0].name: sample}
    return time_calls(lambda: session.run(None, feed), seconds)


def percentile_ms(values_ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(values_ns, dtype=np.float64), q)) / 1e6


def update_bn_seconds(module: torch.nn.Module, data: npt.NDArray[np.float32], batch: int) -> float:
    """Wall seconds of ``update_bn`` over ``data`` in batches of ``batch`` (under no_grad).

    One small eval forward first, so torch's one-time start-up is not counted; the module's
    running statistics are recomputed by the call (and left recalibrated).
    """
    tensor = torch.from_numpy(data)
    batches = [tensor[start : start + batch] for start in range(0, len(tensor), batch)]
    module.eval()
    with torch.no_grad():
        module(tensor[:2])
        start = time.perf_counter()
        update_bn(batches, module)
        seconds = time.perf_counter() - start
    module.eval()
    return seconds


def eval_seconds(
    module: torch.nn.Module, onnx_file: Path, batch: npt.NDArray[np.float32]
) -> tuple[float, float]:
    """Seconds of one eval forward of ``batch``: (onnxruntime, torch), each after a warm-up.

    The ceiling for recalibration speed-ups: the batch-statistics forward is an eval forward
    with BatchNorm unfused, in either runtime.
    """
    session = ort_session(onnx_file)
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)
    start = time.perf_counter()
    session.run(None, feed)
    ort_seconds = time.perf_counter() - start
    tensor = torch.from_numpy(batch)
    module.eval()
    with torch.no_grad():
        module(tensor)
        start = time.perf_counter()
        module(tensor)
        torch_seconds = time.perf_counter() - start
    return ort_seconds, torch_seconds
