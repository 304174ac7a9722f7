"""Run the README's command blocks as a reader would, so that the README cannot drift from the code.

Every fenced ``bash`` and ``python`` block runs, in the README's order, in one shell session
inside a private copy of the repository (the story writes model versions; the checkout stays
as it is). Three kinds of line are treated specially:

- ``bnserve serve ...`` stays in the foreground for a reader, who goes on in a second terminal;
  here it starts in the background, and the next line waits for ``/v2/health/ready``;
- ``pip install ...`` runs only with ``--install`` (CI's fresh virtualenv, where the README's
  own install lines are what make the rest work); without it the current environment must
  already hold what they install;
- ``docker ...`` needs a Docker engine, which the project's machines lack: it is printed, not
  run (``tests/metrics/test_dashboard.py`` and ``tests/deploy/test_deploy.py`` check the stack
  statically).

The block that runs the test suite is not run here (it would run this again); CI takes it from
the README with ``test-command``. Ports 8000 (HTTP) and 8001 (gRPC) in the README are replaced
by free ports.

    python tests/readme_commands.py test-command   # print the README's test command
    python tests/readme_commands.py run [--install]

Plain Python, no pytest: CI runs it in a virtualenv that has only the runtime dependencies.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_TEST_MARK = "python -m pytest"
_PORT = re.compile(r"(?<=localhost:)8000|(?<=127\.0\.0\.1:)8000|(?<=--port )8000")
_GRPC_PORT = re.compile(r"(?<=localhost:)8001|(?<=127\.0\.0\.1:)8001|(?<=--grpc-port )8001")
_WAIT = """for _ in $(seq 600); do
  python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/v2/health/ready')" \\
    2>/dev/null && break
  kill -0 "$BNSERVE_PID" 2>/dev/null || {{ cat "$BNSERVE_LOG" >&2; exit 1; }}
  sleep 0.1
done"""


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block, in order."""
    return [(match.group(1), match.group(2)) for match in _FENCE.finditer(text)]


def readme_test_command(text: str) -> str:
    (command,) = [body.strip() for lang, body in blocks(text) if _TEST_MARK in body]
    return command


def _shell_lines(body: str, install: bool, port: int) -> list[str]:
    lines: list[str] = []
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith("pip install") and not install:
            lines.append(f"echo '(already installed here) {stripped}'")
        elif stripped.startswith("docker "):
            lines.append(f"echo '(needs a Docker engine; not run here) {stripped}'")
        elif stripped.startswith("bnserve serve"):
            lines.append(f'{stripped} >"$BNSERVE_LOG" 2>&1 & BNSERVE_PID=$!')
            lines.append(_WAIT.format(port=port))
        else:
            lines.append(line)
    return lines


def script(text: str, install: bool, port: int, grpc_port: int) -> str:
    """One bash script: every README block but the test command, in order (ports 8000 and
    8001 replaced by ``port`` and ``grpc_port``)."""
    parts = [
        "set -euo pipefail",
        'BNSERVE_LOG="$PWD/.readme-serve.log"; BNSERVE_PID=""',
        'trap \'[ -z "$BNSERVE_PID" ] || kill "$BNSERVE_PID" 2>/dev/null || true\' EXIT',
    ]
    for number, (lang, body) in enumerate(
        blocks(_GRPC_PORT.sub(str(grpc_port), _PORT.sub(str(port), text))), 1
    ):
        if lang == "bash" and _TEST_MARK not in body:
            parts.append(f"echo '--- README block {number} (bash)'")
            parts.extend(_shell_lines(body, install, port))
        elif lang == "python":
            parts.append(f"echo '--- README block {number} (python)'")
            parts.append(f"python - <<'README_PY'\n{body}README_PY")
    return "\n".join(parts) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _copy_checkout(dest: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / os.fsdecode(name))


def run(install: bool) -> int:
    text = README.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="bnserve-readme-") as tmp:
        checkout = Path(tmp)
        _copy_checkout(checkout)
        env = dict(
            os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        )
        env.pop("BNSERVE_ADMIN_TOKEN", None)  # the README sets its own
        body = script(text, install, _free_port(), _free_port())
        return subprocess.run(["bash", "-c", body], cwd=checkout, env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("test-command", help="print the README's test command")
    runner = sub.add_parser("run", help="run the README's blocks in a copy of the checkout")
    runner.add_argument("--install", action="store_true", help="run the pip install lines too")
    args = parser.parse_args()
    if args.command == "test-command":
        print(readme_test_command(README.read_text(encoding="utf-8")))
        return 0
    return run(args.install)


if __name__ == "__main__":
    sys.exit(main())
