"""The ``bnserve`` command line: serve, inspect, build-examples, bench, recalibrate, versions,
activate, adaptation."""

# Each command imports what it needs when it runs: the operator's client commands
# (``service.cli.client``) start without the serving stack.

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.bench.__main__ import add_arguments as add_bench_arguments
from service.cli.client import add_client_commands
from service.errors import ServiceError


def _serve(args: argparse.Namespace) -> int:
    from service.api.app import create_app
    from service.server import serve
    from service.settings import ServiceSettings

    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("models", args.models),
            ("host", args.host),
            ("port", args.port),
            ("grpc_port", args.grpc_port),
        )
        if value is not None
    }
    settings = ServiceSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    grpc = f"gRPC on port {settings.grpc_port}" if settings.grpc_port else "gRPC off"
    logging.getLogger("service").info(
        "bnserve: HTTP on %s:%d, %s", settings.host, settings.port, grpc
    )
    serve(create_app(settings), settings)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from service.cli.inspect_model import format_layers, inspect_file

    platform, layers = inspect_file(Path(args.path))
    print(f"{args.path}: {platform}, {len(layers)} normalization layers")
    print(format_layers(layers, full=args.full))
    return 0


def _build_examples(args: argparse.Namespace) -> int:
    from service.examples import build_examples

    build_examples(Path(args.out))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from service.bench.__main__ import run

    return run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model repository over HTTP and gRPC")
    serve.add_argument("--models", type=Path, help="model repository (env BNSERVE_MODELS)")
    serve.add_argument("--host", help="bind address (env BNSERVE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (env BNSERVE_PORT, default 8000)")
    serve.add_argument(
        "--grpc-port",
        type=int,
        help="gRPC port (env BNSERVE_GRPC_PORT, default 8001; 0 turns gRPC off)",
    )
    serve.set_defaults(run=_serve)

    inspect = commands.add_parser("inspect", help="print a model file's normalization layers")
    inspect.add_argument("path", help="a model.onnx or model.pt2 file")
    inspect.add_argument("--full", action="store_true", help="print every statistic")
    inspect.set_defaults(run=_inspect)

    build = commands.add_parser("build-examples", help="train and export the example models")
    build.add_argument("--out", default="models", help="model repository to write (default models)")
    build.set_defaults(run=_build_examples)

    bench = commands.add_parser("bench", help="run the benchmark suite (python -m service.bench)")
    add_bench_arguments(bench)
    bench.set_defaults(run=_bench)

    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except ServiceError as exc:
        print(f"bnserve: error: {exc}", file=sys.stderr)
        return 2
    return result
