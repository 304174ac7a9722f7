"""The operator's subcommands: ``recalibrate``, ``versions``, ``activate``, ``adaptation``.

Each prints its result on stdout and returns the exit code: 0, 2 when the server rejected the
request (4xx) or the command cannot be sent as given, 1 for any other failure. Error
messages, the server's own when it sent one, go to stderr.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
from service.cli.client.recalibrate import (
    RecalibrationUpload,
    content_type_for,
    recalibration_query,
    upload,
)
from service.cli.client.tables import format_adaptation, format_report, format_versions
from service.cli.client.transport import (
    DEFAULT_TIMEOUT,
    ClientError,
    Endpoint,
    call_json,
    model_path,
)

DEFAULT_URL = "http://127.0.0.1:8000"
MODES = ("cumulative", "population", "ema")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command`` with a ``ClientError`` turned into a message on stderr and its exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ClientError as exc:
            print(f"bnserve {args.command}: error: {exc}", file=sys.stderr)
            return exc.exit_code

    return run


def _recalibrate(args: argparse.Namespace) -> int:
    query = recalibration_query(
        mode=args.mode,
        batch_size=args.batch_size,
        prior=args.prior,
        momentum=args.momentum,
        layers=args.layers,
        dry_run=args.dry_run,
        activate=not args.no_activate,
    )
    request = RecalibrationUpload(
        args.model, args.file, args.content_type or content_type_for(args.file), query, args.version
    )
    interactive = sys.stderr.isatty()
    if args.grpc is not None:
        # Imported here: grpc stays out of every other command's start.
        from service.cli.client.recalibrate_grpc import grpc_target, upload_grpc

        target = grpc_target(args.grpc, args.url)
        report = upload_grpc(target, request, args.token, sys.stderr, interactive, args.timeout)
    else:
        endpoint = Endpoint.parse(args.url)
        report = upload(endpoint, request, args.token, sys.stderr, interactive, args.timeout)
    if args.json:
        _print_json(report)
    else:
        print(format_report(report))
    return 0


def _show(args: argparse.Namespace, resource: str, table: Callable[[Any], str]) -> int:
    """GET a model's ``resource`` and print it as JSON or as ``table`` formats it."""
    path = model_path(args.model, resource)
    body = call_json(Endpoint.parse(args.url), "GET", path, timeout=args.timeout)
    if args.json:
        _print_json(body)
    else:
        print(table(body))
    return 0


def _versions(args: argparse.Namespace) -> int:
    return _show(args, "versions", format_versions)


def _activate(args: argparse.Namespace) -> int:
    path = model_path(args.model, "versions", args.version, "activate")
    result = call_json(Endpoint.parse(args.url), "POST", path, args.token, args.timeout)
    if args.json:
        _print_json(result)
    else:
        print(f"{result['name']}: version {result['active']} is active")
    return 0


def _adaptation(args: argparse.Namespace) -> int:
    return _show(args, "adaptation", format_adaptation)


def _add_connection(parser: argparse.ArgumentParser, admin: bool) -> None:
    url = os.environ.get("BNSERVE_URL", DEFAULT_URL)
    parser.add_argument("--url", default=url, help=f"server URL (env BNSERVE_URL, default {url})")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="socket timeout in seconds"
    )
    parser.add_argument("--json", action="store_true", help="print the server's JSON response")
    if admin:
        parser.add_argument(
            "--token",
            default=os.environ.get("BNSERVE_ADMIN_TOKEN"),
            help="admin bearer token (env BNSERVE_ADMIN_TOKEN)",
        )


def _add_recalibrate(commands: "Subcommands") -> None:
    parser = commands.add_parser(
        "recalibrate", help="stream unlabeled samples to a server to recalibrate a model"
    )
    parser.add_argument("model", help="model name")
    parser.add_argument("file", type=Path, help=".npy, .ndjson/.jsonl, or raw samples")
    parser.add_argument("--mode", choices=MODES, help="default: the model's config.toml")
    parser.add_argument("--batch-size", type=int, help="ghost batch size")
    parser.add_argument("--prior", type=float, help="weight of the stored statistics, in samples")
    parser.add_argument("--momentum", type=float, help="EMA momentum (mode ema)")
    parser.add_argument("--layers", help="comma-separated layer-name globs (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="report only, write no version")
    parser.add_argument("--no-activate", action="store_true", help="write the version only")
    parser.add_argument("--version", help="recalibrate this version, not the served one")
    parser.add_argument("--content-type", help="override the type guessed from the suffix")
    parser.add_argument(
        "--grpc",
        nargs="?",
        const="",
        metavar="HOST:PORT",
        help="stream over gRPC (bnserve.v1.Recalibration) to HOST:PORT; without a value, "
        "the --url host on port 8001",
    )
    _add_connection(parser, admin=True)
    parser.set_defaults(run=_guarded(_recalibrate))


def add_client_commands(commands: "Subcommands") -> None:
    """Register ``recalibrate``, ``versions``, ``activate`` and ``adaptation`` on
    ``add_subparsers()``'s result."""
    _add_recalibrate(commands)

    versions = commands.add_parser("versions", help="list a served model's versions")
    versions.add_argument("model", help="model name")
    _add_connection(versions, admin=False)
    versions.set_defaults(run=_guarded(_versions))

    activate = commands.add_parser("activate", help="serve another version (or roll back)")
    activate.add_argument("model", help="model name")
    activate.add_argument("version", help="version number")
    _add_connection(activate, admin=True)
    activate.set_defaults(run=_guarded(_activate))

    adaptation = commands.add_parser(
        "adaptation", help="show a model's adaptation from traffic: state and decisions"
    )
    adaptation.add_argument("model", help="model name")
    _add_connection(adaptation, admin=False)
    adaptation.set_defaults(run=_guarded(_adaptation))
