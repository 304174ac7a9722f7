"""The Dockerfile read as instructions, for the static deploy checks (no Docker engine here)."""

import re
import shlex
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for every instruction, continuation lines joined."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def env() -> dict[str, str]:
    """Every ``ENV key=value`` of the image, later ones winning."""
    pairs = [word for kind, arg in instructions() if kind == "ENV" for word in shlex.split(arg)]
    return dict(pair.split("=", 1) for pair in pairs)


def exposed_ports() -> set[int]:
    return {int(port) for kind, arg in instructions() if kind == "EXPOSE" for port in arg.split()}


def user_uid() -> int:
    """The uid the image runs as: the last ``USER``, resolved through its ``useradd --uid``."""
    user = [arg for kind, arg in instructions() if kind == "USER"][-1]
    if user.isdigit():
        return int(user)
    created = [
        int(uid)
        for kind, arg in instructions()
        if kind == "RUN"
        for uid, name in re.findall(r"useradd\b[^&;]*?--uid (\d+)[^&;]*? (\w+)\s*(?:$|&&|;)", arg)
        if name == user
    ]
    assert created, f"Dockerfile: no 'useradd --uid' creates the USER {user!r}"
    return created[-1]
