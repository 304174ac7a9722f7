"""The model repository on disk: versions, the active pointer, atomic writes, name checks."""

import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from service.errors import ConfigError, InvalidInput, ModelNotFound
from service.repository import ModelRepository, parse_version
from tests.conftest import BUNDLED_MODELS


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    shutil.copytree(BUNDLED_MODELS / "digits", tmp_path / "digits")
    return ModelRepository(tmp_path)


def _copy_model(dest: Path) -> None:
    shutil.copy(BUNDLED_MODELS / "digits" / "1" / "model.onnx", dest / "model.onnx")


def test_versions_and_active_pointer(repo: ModelRepository) -> None:
    assert repo.model_names() == ["digits"]
    assert repo.versions("digits") == [1]
    assert repo.active_version("digits") == 1
    assert repo.write_version("digits", _copy_model) == 2
    assert repo.active_version("digits") == 1  # writing does not activate
    repo.set_active("digits", 2)
    assert (repo.root / "digits" / "active").read_text() == "2\n"
    (repo.root / "digits" / "active").unlink()
    with pytest.raises(ConfigError, match="active: missing"):
        repo.active_version("digits")  # a missing pointer is not read as "the highest"
    assert repo.resolve_active("digits") == 2  # resolving it writes the highest version
    assert (repo.root / "digits" / "active").read_text() == "2\n"
    with pytest.raises(ModelNotFound, match="no version 7"):
        repo.set_active("digits", 7)


def test_a_failed_write_leaves_nothing(repo: ModelRepository) -> None:
    before = sorted(p.name for p in (repo.root / "digits").iterdir())

    def broken(dest: Path) -> None:
        _copy_model(dest)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        repo.write_version("digits", broken)
    assert sorted(p.name for p in (repo.root / "digits").iterdir()) == before


def test_concurrent_writers_get_distinct_versions(repo: ModelRepository) -> None:
    versions: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        version = ModelRepository(repo.root).write_version("digits", _copy_model)
        with lock:
            versions.append(version)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(2, 10))
    assert repo.versions("digits") == list(range(1, 10))


def test_sweep_removes_only_stale_temporaries(repo: ModelRepository) -> None:
    folder = repo.root / "digits"
    stale, fresh = folder / ".tmp-stale", folder / ".tmp-fresh"
    stale.mkdir()
    fresh.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert repo.sweep_temporaries(older_than=3600) == [stale]
    assert not stale.exists() and fresh.exists()
    assert repo.versions("digits") == [1]


@pytest.mark.parametrize("name", ["..", "../etc", "/etc", "a/b", ".hidden", "", "x" * 200])
def test_model_names_cannot_escape_the_repository(repo: ModelRepository, name: str) -> None:
    with pytest.raises(ModelNotFound, match=r"invalid model name|not found"):
        repo.model_dir(name)


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "01", "../1", "1e3", "99999999999"])
def test_versions_are_positive_integers(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid version"):
        parse_version(text)


def test_a_broken_active_pointer_is_a_config_error(repo: ModelRepository) -> None:
    (repo.root / "digits" / "active").write_text("nine\n")
    with pytest.raises(ConfigError, match="active"):
        repo.active_version("digits")


def test_resolving_keeps_a_pointer_that_exists(repo: ModelRepository) -> None:
    assert repo.write_version("digits", _copy_model) == 2
    assert repo.resolve_active("digits") == 1  # "1" on disk wins over the higher version
    assert (repo.root / "digits" / "active").read_text() == "1\n"
    assert not list((repo.root / "digits").glob(".tmp-*"))


def test_replicas_resolving_a_missing_pointer_together_agree(repo: ModelRepository) -> None:
    (repo.root / "digits" / "active").unlink()
    assert repo.write_version("digits", _copy_model) == 2
    results: list[int] = []
    barrier = threading.Barrier(8)

    def resolve() -> None:
        barrier.wait()
        results.append(ModelRepository(repo.root).resolve_active("digits"))

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [2] * 8
    assert (repo.root / "digits" / "active").read_text() == "2\n"
    assert not list((repo.root / "digits").glob(".tmp-*"))


def _cas(root: str, version: int) -> bool:
    return ModelRepository(Path(root)).compare_and_set_active("digits", 1, version)


def test_compare_and_set_switches_once_among_racing_processes(repo: ModelRepository) -> None:
    for _ in range(6):
        repo.write_version("digits", _copy_model)
    with ProcessPoolExecutor(max_workers=6) as pool:
        won = list(pool.map(_cas, [str(repo.root)] * 6, range(2, 8)))
    assert sum(won) == 1
    winner = 2 + won.index(True)
    assert repo.active_version("digits") == winner
    assert not repo.compare_and_set_active("digits", 1, 3)  # 1 is no longer active
    assert repo.compare_and_set_active("digits", winner, 1)
    assert repo.active_version("digits") == 1
    assert not (repo.root / "digits" / ".active.lock").exists()


def test_a_stale_pointer_lock_is_broken(repo: ModelRepository) -> None:
    lock = repo.root / "digits" / ".active.lock"
    lock.mkdir()
    os.utime(lock, (time.time() - 60, time.time() - 60))  # left by a process that died
    repo.write_version("digits", _copy_model)
    assert repo.compare_and_set_active("digits", 1, 2)
    assert not lock.exists()
