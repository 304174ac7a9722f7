"""The checked-in ``service/grpc/generated/`` is what ``scripts/generate_grpc.py`` writes now."""

import importlib.util
from pathlib import Path

from tests.conftest import REPO_ROOT


def _files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "generate_grpc", REPO_ROOT / "scripts" / "generate_grpc.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.generate(tmp_path / "generated")
    fresh = _files(tmp_path / "generated")
    checked_in = _files(REPO_ROOT / "service" / "grpc" / "generated")
    assert sorted(fresh) == sorted(checked_in)
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"regenerate with python scripts/generate_grpc.py: {stale} differ"
    protos = sorted((REPO_ROOT / "proto").rglob("*.proto"))
    assert len([name for name in fresh if name.endswith("_pb2_grpc.py")]) == len(protos)
