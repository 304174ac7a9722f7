"""The benchmarks, one function per case (a letter, as in README "Performance"); each
returns its table rows.

Every service figure sits next to a bare baseline measured in the same run (onnxruntime on
the same file, torch ``update_bn`` on the same module), so a ratio compares like with like on
whatever machine runs the suite. Targets are for a 2-core machine.
"""

import functools
import json
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from service.bench.adaptation import (
    time_to_decision,
    write_activate_repository,
    write_capture_repository,
)
from service.bench.baseline import (
    eval_seconds,
    ort_latencies,
    percentile_ms,
    update_bn_seconds,
)
from service.bench.bodies import binary_request, digits_sample, infer_path, json_request
from service.bench.flood import json_body, measure_flood
from service.bench.harness import Bench
from service.bench.loadgen import encode_request
from service.bench.models import (
    DIGITS,
    RESNET,
    digits_model_file,
    write_digits_repository,
    write_resnet_repository,
)
from service.bench.report import Row, Target
from service.bench.server import ADMIN_TOKEN, BenchServer
from service.bench.upload import npy_chunks, npy_header, post_stream, raw_body

BARE = "bare ORT"
CONNECTIONS = (1, 8, 32, 64)
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MB = 1024 * 1024


def case_a(bench: Bench) -> list[Row]:
    """Digits, one sample, sequential requests on one connection: latency vs bare compute.

    Also ``GET /v2/health/live`` on the same server: the HTTP + framework floor of a request.
    """
    sample = digits_sample()
    bare = ort_latencies(digits_model_file(), sample, bench.seconds(2.0, 0.5))
    bare50, bare99 = percentile_ms(bare, 50), percentile_ms(bare, 99)
    rows = []
    with bench.server("a", write_digits_repository) as server:
        for label, request in (("JSON", json_request), ("binary", binary_request)):
            run = bench.measure(server, request(DIGITS, sample), 1, bench.seconds(4.0, 1.0))
            p50, p99 = run.result.percentile_ms(50), run.result.percentile_ms(99)
            target = Target("<=", 0.30, "ms")
            metric = f"digits p50 latency, 1 sample, {label}"
            rows.append(Row("a", metric, p50, "ms", bare50, f"{BARE} p50", target, run.summary()))
            metric = f"digits p99 latency, 1 sample, {label}"
            rows.append(Row("a", metric, p99, "ms", bare99, f"{BARE} p99"))
        live = encode_request("/v2/health/live", None)
        run = bench.measure(server, live, 1, bench.seconds(2.0, 0.5))
        metric = "GET /v2/health/live p50 (HTTP + framework floor)"
        rows.append(Row("a", metric, run.result.percentile_ms(50), "ms", note=run.summary()))
    return rows


def case_b(bench: Bench) -> list[Row]:
    """Digits requests/s at 1..64 connections, batching on and off, vs bare 1-sample runs/s."""
    sample = digits_sample()
    bare = ort_latencies(digits_model_file(), sample, bench.seconds(2.0, 0.5))
    bare_rate = len(bare) / (sum(bare) / 1e9)
    request = json_request(DIGITS, sample)
    rows, rates = [], {}
    for batching in (True, False):
        state = "on" if batching else "off"
        write = functools.partial(write_digits_repository, batching=batching)
        with bench.server(f"b-batching-{state}", write) as server:
            for connections in CONNECTIONS:
                run = bench.measure(server, request, connections, bench.seconds(4.0, 1.0))
                rates[batching, connections] = run.result.rate
                target = Target(">=", 5000, "req/s") if batching and connections == 32 else None
                metric = f"digits req/s, JSON, {connections} conn, batching {state}"
                label = f"{BARE} 1-sample runs/s"
                row = Row("b", metric, run.result.rate, "req/s", bare_rate, label, target)
                rows.append(replace(row, note=run.summary()))
    on, off = rates[True, 1], rates[False, 1]
    target = Target(">=", 0.9, on_ratio=True)
    rows.append(Row("b", "batching on vs off, 1 conn", on, "req/s", off, "batching off", target))
    # The same load with one onnxruntime thread: on 2 cores the default pool's spinning
    # workers compete with the event loop for CPU.
    env = {"BNSERVE_MODEL_THREADS": "1"}
    with bench.server("b-threads-1", write_digits_repository, env) as server:
        run = bench.measure(server, request, 32, bench.seconds(4.0, 1.0))
    metric = "digits req/s, JSON, 32 conn, batching on, BNSERVE_MODEL_THREADS=1"
    baseline, label = rates[True, 32], "default threads"
    rows.append(Row("b", metric, run.result.rate, "req/s", baseline, label, None, run.summary()))
    return rows


def _resnet_input(bench: Bench, count: int, seed: int = 0) -> np.ndarray:
    size = bench.image_size
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 3, size, size), dtype=np.float32)


def case_c(bench: Bench) -> list[Row]:
    """ResNet-18, one sample as a binary tensor: service latency over bare compute."""
    _, onnx_file = bench.resnet()
    sample = _resnet_input(bench, 1)
    bare = ort_latencies(onnx_file, sample, bench.seconds(4.0, 1.5))
    write = functools.partial(
        write_resnet_repository, onnx_file=onnx_file, image_size=bench.image_size
    )
    with bench.server("c", write) as server:
        run = bench.measure(server, binary_request(RESNET, sample), 1, bench.seconds(6.0, 2.0))
    metric = f"resnet18 {{}} latency, 1 sample 3x{bench.image_size}x{bench.image_size}, binary"
    p50, p99 = run.result.percentile_ms(50), run.result.percentile_ms(99)
    bare50, bare99 = percentile_ms(bare, 50), percentile_ms(bare, 99)
    target = Target("<=", 1.15, on_ratio=True)
    return [
        Row("c", metric.format("p50"), p50, "ms", bare50, f"{BARE} p50", target, run.summary()),
        Row("c", metric.format("p99"), p99, "ms", bare99, f"{BARE} p99"),
    ]


def case_d(bench: Bench) -> list[Row]:
    """ResNet-18 throughput with ``[drift] enabled = true`` vs ``false``: monitoring's cost."""
    _, onnx_file = bench.resnet()
    request = binary_request(RESNET, _resnet_input(bench, 1))
    connections, rates, notes = 4, {}, []
    for drift in (False, True):
        write = functools.partial(
            write_resnet_repository, onnx_file=onnx_file, image_size=bench.image_size, drift=drift
        )
        with bench.server(f"d-drift-{'on' if drift else 'off'}", write) as server:
            if drift and server.get_status(f"/v2/models/{RESNET}/drift") == 404:
                notes.append(
                    "drift monitoring not implemented yet (GET .../drift is 404): "
                    "both runs serve alike"
                )
                bench.log(f"note: {notes[-1]}")
            run = bench.measure(server, request, connections, bench.seconds(6.0, 2.0))
            rates[drift] = run.result.rate
            notes.append(f"drift {'on' if drift else 'off'}: {run.summary()}")
    metric = f"resnet18 req/s, binary, {connections} conn, drift on"
    return [
        Row("d", metric, rates[True], "req/s", rates[False], "drift off", None, "; ".join(notes))
    ]


def case_e(bench: Bench) -> list[Row]:
    """Recalibration samples/s: npy stream to the service (dry run) vs torch ``update_bn``."""
    module, onnx_file = bench.resnet()
    count, batch = (128, 64) if bench.quick else (512, 64)
    data = _resnet_input(bench, count, seed=1)
    path = f"/v2/models/{RESNET}/recalibrate?dry_run=true&batch_size={batch}"
    length = len(npy_header(data.shape)) + data.nbytes
    write = functools.partial(
        write_resnet_repository, onnx_file=onnx_file, image_size=bench.image_size
    )
    with bench.server("e", write) as server:
        # The first recalibration of a version builds its calibration graph (a model load and
        # a rewrite, kept for later ones): time that apart from the steady-state throughput.
        warm = data[:batch]
        warmup = post_stream(
            server.host,
            server.port,
            path,
            npy_chunks(warm, batch),
            len(npy_header(warm.shape)) + warm.nbytes,
            "application/x-npy",
            AUTH,
        )
        bench.log(f"[e] streaming {count} samples ({data.nbytes / MB:.0f} MB) to recalibrate")
        upload = post_stream(
            server.host,
            server.port,
            path,
            npy_chunks(data, batch),
            length,
            "application/x-npy",
            AUTH,
        )
    if upload.status != 200:
        raise RuntimeError(f"recalibration failed with {upload.status}: {upload.body[:500]!r}")
    job_seconds = json.loads(upload.body)["duration_seconds"]
    bench.log(f"[e] update_bn on the same {count} samples")
    torch_seconds = update_bn_seconds(module, data, batch)
    ort_eval, torch_eval = eval_seconds(module, onnx_file, data[:batch])
    note = (
        f"{count} samples 3x{bench.image_size}x{bench.image_size}, batch {batch}; service "
        f"{upload.seconds:.2f} s over HTTP ({job_seconds:.2f} s in the job), "
        f"update_bn {torch_seconds:.2f} s; the first recalibration of the version also built "
        f"its calibration graph ({warmup.seconds:.2f} s for {batch} samples)"
    )
    target = Target(">=", 2.0, on_ratio=True)
    metric = "resnet18 recalibration samples/s, npy, dry run"
    rate, torch_rate = count / upload.seconds, count / torch_seconds
    context = f"bare ORT vs torch eval forward, batch {batch} (for context)"
    return [
        Row("e", metric, rate, "samples/s", torch_rate, "update_bn", target, note),
        Row("e", context, batch / ort_eval, "samples/s", batch / torch_eval, "torch eval"),
    ]


class _PeakSampler:
    """Samples the server's VmRSS every ``interval`` seconds on a thread; keeps the peak."""

    def __init__(self, server: BenchServer, interval: float = 0.02) -> None:
        self.peak_kb = 0
        self._server, self._interval = server, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._server.memory_kb()["VmRSS"])
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kb


def _recalibrate_raw(server: BenchServer, samples: int, chunk: int) -> float:
    """Stream ``samples`` generated digits samples (raw float32); the seconds it took."""
    upload = post_stream(
        server.host,
        server.port,
        f"/v2/models/{DIGITS}/recalibrate?dry_run=true",
        raw_body(samples, (1, 8, 8), chunk),
        samples * 256,
        "application/octet-stream",
        AUTH,
    )
    if upload.status != 200:
        raise RuntimeError(f"recalibration failed with {upload.status}: {upload.body[:500]!r}")
    return upload.seconds


def case_f(bench: Bench) -> list[Row]:
    """Server RSS while streaming >= 1 GiB of raw recalibration data (digits, dry run)."""
    total = (64 if bench.quick else 1024) * MB
    samples, chunk = total // 256, 16384  # 256 bytes per 1x8x8 float32 sample; 4 MiB chunks
    with bench.server("f", write_digits_repository) as server:
        start = server.memory_kb()
        _recalibrate_raw(server, 4096, chunk)  # one-time costs: imports, calibration session
        before = server.memory_kb()
        bench.log(f"[f] streaming {total / MB:.0f} MiB of raw samples to recalibrate")
        sampler = _PeakSampler(server)
        try:
            seconds = _recalibrate_raw(server, samples, chunk)
        finally:
            sampled = sampler.stop()
        after = server.memory_kb()
    # A new high-water mark after the warm-up was set by the stream; else the sampled peak.
    peak = after["VmHWM"] if after["VmHWM"] > before["VmHWM"] else sampled
    growth = (peak - before["VmRSS"]) / 1024
    note = (
        f"{total / MB:.0f} MiB in {seconds:.1f} s ({total / MB / seconds:.0f} MiB/s, "
        f"{samples / seconds:,.0f} samples/s); VmRSS MiB: start {start['VmRSS'] / 1024:.0f}, "
        f"after a 1 MiB warm-up {before['VmRSS'] / 1024:.0f}, peak {peak / 1024:.0f}, "
        f"after {after['VmRSS'] / 1024:.0f}"
    )
    target = Target("<=", 64, "MiB")
    return [
        Row("f", "RSS growth streaming recalibration, raw", growth, "MiB", None, "", target, note)
    ]


def case_g(bench: Bench) -> list[Row]:
    """32 concurrent 50 MiB JSON bodies to digits (all refused): the server's peak RSS growth."""
    size, connections = (8 if bench.quick else 50) * MB, 32
    body = json_body(size)
    rows = []
    with bench.server("g", write_digits_repository) as server:
        for chunked in (False, True):
            framing = "chunked" if chunked else "Content-Length"
            bench.log(f"[g] {connections} x {len(body) / MB:.0f} MiB JSON bodies, {framing}")
            flood = measure_flood(server, infer_path(DIGITS), body, connections, chunked)
            if not flood.refused:
                raise RuntimeError(f"not every request got a 4xx or 503: {flood.summary()}")
            metric = f"peak RSS growth, {connections} x {len(body) / MB:.0f} MiB JSON, {framing}"
            target = Target("<=", 512, "MiB")
            rows.append(
                Row("g", metric, flood.growth_mib, "MiB", None, "", target, flood.summary())
            )
    return rows


def case_h(bench: Bench) -> list[Row]:
    """Digits req/s at 32 connections with ``[adaptation] capture = 2048`` vs without."""
    request = json_request(DIGITS, digits_sample())
    rates, notes = {}, []
    for capture, write in ((False, write_digits_repository), (True, write_capture_repository)):
        with bench.server(f"h-capture-{'on' if capture else 'off'}", write) as server:
            run = bench.measure(server, request, 32, bench.seconds(6.0, 1.5))
        rates[capture] = run.result.rate
        notes.append(f"capture {'on' if capture else 'off'}: {run.summary()}")
    metric = "digits req/s, JSON, 32 conn, [adaptation] capture = 2048 (trigger off)"
    target = Target(">=", 0.98, on_ratio=True)
    row = Row("h", metric, rates[True], "req/s", rates[False], "no capture", target)
    return [replace(row, note="; ".join(notes))]


def case_i(bench: Bench) -> list[Row]:
    """From the start of a shift (blurred digits) to the loop's decision: seconds, samples."""
    with bench.server("i", write_activate_repository) as server:
        adapted = time_to_decision(server)
    if adapted.outcome != "activated":
        raise RuntimeError(f"the loop decided {adapted.outcome}, not activated")
    note = (
        f"blur 5 from the first request, 64 samples a request on 1 connection, loop every 1 s "
        f"(default), trigger = activate, min_samples = 512: version {adapted.version} activated"
    )
    rate = adapted.samples / adapted.seconds
    return [
        Row("i", "shift to activated version, seconds", adapted.seconds, "s", note=note),
        Row("i", "shift to activated version, samples", adapted.samples, "samples",
            note=f"sent at {rate:,.0f} samples/s"),
    ]  # fmt: skip


CASES: dict[str, Callable[[Bench], list[Row]]] = {
    "a": case_a,
    "b": case_b,
    "c": case_c,
    "d": case_d,
    "e": case_e,
    "f": case_f,
    "g": case_g,
    "h": case_h,
    "i": case_i,
}
"""Case letter -> benchmark."""
