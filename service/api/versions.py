"""A model's versions as the versions route and the status page list them.

Both functions read the repository's files (``config.toml``, the ``active`` pointer, every
``recalibration.json``): call them on a worker thread, never on the event loop.
"""

from typing import Any, TypedDict

from service.config import ModelConfig
from service.errors import ServiceError
from service.repository import ModelRepository


class VersionEntry(TypedDict):
    version: str
    active: bool
    provenance: dict[str, Any] | None
    """``ModelRepository.provenance`` (JSON read from the version's ``recalibration.json``);
    None for an original version."""


class VersionListing(TypedDict):
    name: str
    active: str
    versions: list[VersionEntry]


def version_listing(repository: ModelRepository, name: str) -> VersionListing:
    """``GET /v2/models/{name}/versions``; a broken pointer or provenance file is an error."""
    config = repository.config(name)
    active = repository.active_version(name, config)
    entries: list[VersionEntry] = [
        {"version": str(v), "active": v == active, "provenance": repository.provenance(name, v)}
        for v in repository.versions(name, config)
    ]
    return {"name": name, "active": str(active), "versions": entries}


def shown_versions(
    repository: ModelRepository, name: str, config: ModelConfig
) -> list[VersionEntry]:
    """The versions of a loaded model for the status page: a broken file is shown, not raised,
    so that it cannot take the whole page down."""
    try:
        active: int | None = repository.active_version(name, config)
    except ServiceError:  # a broken ``active`` pointer: show the versions, mark none
        active = None
    entries: list[VersionEntry] = []
    for version in repository.versions(name, config):
        try:
            provenance = repository.provenance(name, version)
        except ServiceError as exc:
            provenance = {"error": str(exc)}
        entries.append(
            {"version": str(version), "active": version == active, "provenance": provenance}
        )
    return entries
