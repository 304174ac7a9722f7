"""The lean baseline of issue #14: bnserve's serving design with none of its features.

``python -m service.bench.lean --model FILE.onnx --port N [--max-batch 64]``. One V2 infer
route that reads the body, ``orjson.loads`` it, takes the first input's ``data``/``shape`` as
float32, and queues it on a greedy batcher: a task takes everything queued (up to
``max_batch`` requests), concatenates, runs the session on one executor thread, and slices the
result back into each request's future. Plus ``GET /v2/health/live``. No pydantic, no
validation, no metrics, no drift, no versions: the benchmark measures bnserve against it.

The session options are spelled out, not imported, so that this file imports nothing of
bnserve (whose imports would grow the heap that its garbage collections walk); they are
``service.backends.onnx.serving.session_options()`` with spinning off, as bnserve chooses
for a model as small as digits, which a test checks.
"""

import argparse
import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

Array = npt.NDArray[np.float32]


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_app(model: str, max_batch: int) -> FastAPI:
    session = ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    queue: asyncio.Queue[tuple[Array, asyncio.Future[Array]]] = asyncio.Queue()
    executor = ThreadPoolExecutor(max_workers=1)

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            feed = {input_name: np.concatenate([x for x, _ in batch])}
            try:
                (y,) = await loop.run_in_executor(executor, session.run, [output_name], feed)
            except Exception as exc:  # every request of the batch gets the error
                for _, future in batch:
                    if not future.done():  # a client that went away cancelled its future
                        future.set_exception(exc)
                continue
            start = 0
            for x, future in batch:
                if not future.done():
                    future.set_result(y[start : start + len(x)])
                start += len(x)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher())
        yield
        task.cancel()
        executor.shutdown()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        first = orjson.loads(await request.body())["inputs"][0]
        x = np.asarray(first["data"], dtype=np.float32).reshape(first["shape"])
        future: asyncio.Future[Array] = asyncio.get_running_loop().create_future()
        queue.put_nowait((x, future))
        y = await future
        output = {"name": output_name, "datatype": "FP32", "shape": y.shape, "data": y.ravel()}
        body = {"model_name": model_name, "outputs": [output]}
        content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(content, media_type="application/json")

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(b'{"live":true}', media_type="application/json")

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.bench.lean", description=__doc__)
    parser.add_argument("--model", required=True, help="an ONNX file with one input")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=64, help="requests per model call")
    args = parser.parse_args(argv)
    app = create_app(args.model, args.max_batch)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
