"""A closed-loop gRPC load generator: ``loadgen``'s semantics for ``ModelInfer``.

``connections`` callers each send one pre-serialized ``ModelInferRequest`` (``spec.request``,
from ``infer_request``), await its answer and send the next, until ``duration`` seconds have
passed; answers during the first ``warmup`` seconds are not recorded. Each caller has its own
channel with its own subchannel pool, so 32 connections are 32 HTTP/2 connections, as the
HTTP rows' 32 are 32 TCP connections (gRPC otherwise shares one connection between channels
to the same address). The stub has no serializers: bytes go out as they are and the answer
comes back as bytes, unparsed, so the client costs little more than grpc's own call path.

Statuses: an answered call counts as ``OK_STATUS`` (200, as HTTP's success), a call that
ends with an error status under that status's number (1-16: ``grpc.StatusCode``'s value,
which no HTTP status uses), and the loop goes on. A broken connection (the channel left
READY) counts in ``errors`` and ends that caller, as a reset ends an HTTP connection's loop.
"""

import asyncio
import time

import grpc
import numpy as np
import numpy.typing as npt

from service.bench.loadgen import LoadResult, LoadSpec, run_on_fresh_loop
from service.examples.export import INPUT_NAME
from service.grpc.generated.inference import grpc_service_pb2 as pb

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
OK_STATUS = 200
CONNECT_SECONDS = 10.0
"""How long a caller waits for its channel to become ready before counting an error."""

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.use_local_subchannel_pool", 1),  # a connection of its own per channel
    ("grpc.enable_http_proxy", 0),  # 127.0.0.1, never through a proxy from the environment
    ("grpc.enable_retries", 0),  # every failure is seen, none retried away
    ("grpc.max_receive_message_length", -1),
]


def infer_request(model: str, x: npt.NDArray[np.float32]) -> bytes:
    """``ModelInfer`` of ``x`` for ``model``, serialized, its input in ``raw_input_contents``
    (the fastest form a client sends; outputs then come back raw too)."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=INPUT_NAME, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    serialized: bytes = request.SerializeToString()
    return serialized


def status_of(code: grpc.StatusCode) -> int:
    """The number a call's final status is counted under (``LoadResult.statuses``)."""
    if code == grpc.StatusCode.OK:
        return OK_STATUS
    number: int = code.value[0]
    return number


def _broken(channel: grpc.aio.Channel) -> bool:
    ready: bool = channel.get_state() == grpc.ChannelConnectivity.READY
    return not ready


async def _caller(spec: LoadSpec, record_from: int, stop: int, result: LoadResult) -> None:
    target = f"{spec.host}:{spec.port}"
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), CONNECT_SECONDS)
        except TimeoutError:
            result.errors += 1
            return
        call = channel.unary_unary(MODEL_INFER)  # no serializers: bytes in, bytes out
        clock = time.perf_counter_ns
        latencies, statuses = result.latencies_ns, result.statuses
        while True:
            start = clock()
            if start >= stop:
                return
            try:
                await call(spec.request)
                status = OK_STATUS
            except grpc.aio.AioRpcError as exc:
                if _broken(channel):
                    result.errors += 1
                    return
                status = status_of(exc.code())
            if start >= record_from:
                latencies.append(clock() - start)
                statuses[status] += 1


async def run_load(spec: LoadSpec) -> LoadResult:
    """Drive the gRPC server at ``spec.host:spec.port`` as ``spec`` says, on the running loop."""
    now = time.perf_counter_ns()
    record_from = now + int(spec.warmup * 1e9)
    stop = record_from + int(spec.duration * 1e9)
    result = LoadResult(seconds=spec.duration)
    await asyncio.gather(
        *(_caller(spec, record_from, stop, result) for _ in range(spec.connections))
    )
    # A call sent just before ``stop`` ends after it: count the real recording window.
    result.seconds = max(spec.duration, (time.perf_counter_ns() - record_from) / 1e9)
    return result


def run_blocking(spec: LoadSpec) -> LoadResult:
    """``run_load`` on a fresh event loop, CPU time measured: a ``loadgen.Drive``."""
    return run_on_fresh_loop(run_load, spec)


def call_once(host: str, port: int, request: bytes, timeout: float = 30.0) -> bytes:
    """One ``ModelInfer`` of ``request`` on a fresh connection; the serialized answer."""
    with grpc.insecure_channel(f"{host}:{port}", options=CHANNEL_OPTIONS) as channel:
        answer: bytes = channel.unary_unary(MODEL_INFER)(request, timeout=timeout)
        return answer
