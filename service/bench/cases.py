"""The benchmarks, one function per case (a letter, as in README "Performance"); each
returns its table rows.

Every service figure sits next to a bare baseline measured in the same run (onnxruntime on
the same file, torch ``update_bn`` on the same module), so a ratio compares like with like on
whatever machine runs the suite. Targets are for a 2-core machine.
"""

import functools
from collections.abc import Callable
from contextlib import ExitStack

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
from service.bench.comparison import compare_digits, latency_rows, throughput_rows
from service.bench.flood import json_body, measure_flood
from service.bench.harness import Bench
from service.bench.models import (
    DIGITS,
    RESNET,
    digits_module,
    write_digits_repository,
    write_resnet_repository,
)
from service.bench.protocols import digits_rows, resnet_rows
from service.bench.recalibration import AUTH, batch_stats_seconds, recalibrate_over_http
from service.bench.report import Row, Target
from service.bench.rounds import interleave, p99, rate
from service.bench.server import BenchServer, RssSampler
from service.bench.soak import soak, soak_rows
from service.bench.upload import post_stream, random_samples, raw_body

BARE = "bare ORT"
MB = 1024 * 1024


def case_a(bench: Bench) -> list[Row]:
    """Digits, one sample, sequential requests on one connection: bnserve vs the lean server,
    the HTTP floor and bare onnxruntime (``comparison``, shared with b)."""
    return latency_rows(compare_digits(bench))


def case_b(bench: Bench) -> list[Row]:
    """Digits on 32 connections: bnserve vs the lean server, throughput, tail and CPU per
    request (``comparison``, shared with a)."""
    return throughput_rows(compare_digits(bench))


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
    target = Target("<=", 1.10, on_ratio=True)
    return [
        Row("c", metric.format("p50"), p50, "ms", bare50, f"{BARE} p50", target, run.summary()),
        Row("c", metric.format("p99"), p99, "ms", bare99, f"{BARE} p99"),
    ]


def case_d(bench: Bench) -> list[Row]:
    """ResNet-18 throughput with ``[drift] enabled = true`` vs ``false``: monitoring's cost,
    both servers up at once and measured in interleaved rounds (``rounds.interleave``)."""
    _, onnx_file = bench.resnet()
    request = binary_request(RESNET, _resnet_input(bench, 1))
    connections, seconds = 4, bench.seconds(6.0, 2.0)
    on, off = "drift on", "drift off"
    with ExitStack() as stack:
        probes = {}
        for label, drift in ((off, False), (on, True)):
            write = functools.partial(
                write_resnet_repository,
                onnx_file=onnx_file,
                image_size=bench.image_size,
                drift=drift,
            )
            server = stack.enter_context(bench.server(f"d-{label.replace(' ', '-')}", write))
            bench.warm(server, request)
            probes[label] = bench.probe(server, request, connections, seconds)
        rounds = interleave(probes, bench.rounds, bench.log)
    metric = f"resnet18 {{}}, binary, {connections} conn, drift on"
    target = Target(">=", 0.97, on_ratio=True)  # monitoring costs at most 3%
    return [
        rounds.row("d", metric.format("req/s"), rate, "req/s", (on, off, off), target),
        rounds.row("d", metric.format("p99"), p99, "ms", (on, off, off)),
    ]


def case_e(bench: Bench) -> list[Row]:
    """Recalibration samples/s vs torch ``update_bn`` on the same module, data and batch size:
    ResNet-18 end to end (npy over HTTP, dry run) and per batch (the calibration forward
    alone), and digits end to end, where per-call overhead dominates
    (``service.bench.recalibration``)."""
    module, onnx_file = bench.resnet()
    count, batch = (128, 64) if bench.quick else (512, 64)
    data = _resnet_input(bench, count, seed=1)
    write = functools.partial(
        write_resnet_repository, onnx_file=onnx_file, image_size=bench.image_size
    )
    with bench.server("e", write) as server:
        bench.log(f"[e] streaming {count} samples ({data.nbytes / MB:.0f} MB) to recalibrate")
        served = recalibrate_over_http(server, RESNET, data, batch, batch)
    bench.log(f"[e] the calibration forward and update_bn on the same {count} samples")
    forward_seconds = batch_stats_seconds(onnx_file, data, batch)
    torch_seconds = update_bn_seconds(module, data, batch)
    ort_eval, torch_eval = eval_seconds(module, onnx_file, data[:batch])
    note = (
        f"{count} samples 3x{bench.image_size}x{bench.image_size}, batch {batch}; service "
        f"{served.seconds:.2f} s over HTTP ({served.job_seconds:.2f} s in the job), "
        f"update_bn {torch_seconds:.2f} s; the first recalibration of the version also built "
        f"its calibration graph ({served.warmup_seconds:.2f} s for {batch} samples)"
    )
    torch_rate = count / torch_seconds
    context = f"bare ORT vs torch eval forward, batch {batch} (for context)"
    return [
        Row("e", "resnet18 recalibration samples/s, npy, dry run, end to end",
            count / served.seconds, "samples/s", torch_rate, "update_bn",
            Target(">=", 1.8, on_ratio=True), note),
        Row("e", "resnet18 recalibration samples/s, per batch (calibration forward alone)",
            count / forward_seconds, "samples/s", torch_rate, "update_bn",
            Target(">=", 2.0, on_ratio=True),
            f"the service's batch-statistics forward on in-memory batches of {batch}, "
            f"{forward_seconds:.2f} s, in the benchmark process"),
        Row("e", context, batch / ort_eval, "samples/s", batch / torch_eval, "torch eval"),
        _digits_recalibration(bench, batch),
    ]  # fmt: skip


def _digits_recalibration(bench: Bench, batch: int) -> Row:
    count = 8192 if bench.quick else 65536
    data = np.concatenate(list(random_samples(count, (1, 8, 8), 4096, seed=1)))
    with bench.server("e-digits", write_digits_repository) as server:
        bench.log(f"[e] streaming {count} digits samples to recalibrate")
        served = recalibrate_over_http(server, DIGITS, data, batch, 4096)
    torch_seconds = update_bn_seconds(digits_module(), data, batch)
    note = (
        f"{count} samples 1x8x8, batch {batch}, sent 4096 a chunk; service "
        f"{served.seconds:.2f} s over HTTP ({served.job_seconds:.2f} s in the job), update_bn "
        f"{torch_seconds:.2f} s on the digits torch module (models/digits_torch)"
    )
    metric = "digits recalibration samples/s, npy, dry run, end to end"
    rate, torch_rate = count / served.seconds, count / torch_seconds
    return Row("e", metric, rate, "samples/s", torch_rate, "update_bn", None, note)


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
        sampler = RssSampler(server, 0.02)
        try:
            seconds = _recalibrate_raw(server, samples, chunk)
        finally:
            sampler.stop()
        sampled = sampler.peak_kb()
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
    """Digits req/s at 32 connections with ``[adaptation] capture = 2048`` vs without: both
    servers up at once, measured in interleaved rounds, medians compared."""
    request = json_request(DIGITS, digits_sample())
    seconds = bench.seconds(6.0, 1.5)
    with ExitStack() as stack:
        off = stack.enter_context(bench.server("h-capture-off", write_digits_repository))
        on = stack.enter_context(bench.server("h-capture-on", write_capture_repository))
        probes = {}
        for name, server in (("capture off", off), ("capture on", on)):
            bench.warm(server, request)
            probes[name] = bench.probe(server, request, 32, seconds)
        rounds = interleave(probes, bench.rounds, bench.log)
    metric = "digits req/s, JSON, 32 conn, [adaptation] capture = 2048 (trigger off)"
    pair = ("capture on", "capture off", "no capture")
    return [rounds.row("h", metric, rate, "req/s", pair, Target(">=", 0.98, on_ratio=True))]


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


def case_j(bench: Bench) -> list[Row]:
    """Soak: bnserve under steady 32-connection digits JSON load for ``--soak-minutes``: RSS
    growth, the worst minute's p99 (vs the lean server's p99 at 32 connections, when case a
    or b measured it), responses and failures (``service.bench.soak``)."""
    request = json_request(DIGITS, digits_sample())
    with bench.server("j", write_digits_repository) as server:
        bench.warm(server, request)
        bench.log(f"[j] soaking for {bench.soak_minutes:g} min")
        result = soak(bench, server, request, bench.soak_minutes)
    return soak_rows(result, bench.soak_minutes, bench.digits_rounds)


def case_k(bench: Bench) -> list[Row]:
    """The same sample over gRPC (raw contents), HTTP binary and HTTP JSON, one server per
    model: digits at 1 and 32 connections, ResNet-18 at 1 (``service.bench.protocols``)."""
    _, onnx_file = bench.resnet()
    return digits_rows(bench) + resnet_rows(bench, onnx_file, _resnet_input(bench, 1))


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
    "j": case_j,
    "k": case_k,
}
"""Case letter -> benchmark."""
