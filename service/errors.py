"""Service errors: one class per condition. Only ``service.api.errors`` maps them to HTTP."""


class ServiceError(Exception):
    """Base class; ``str(error)`` is the message the client sees."""


class InvalidInput(ServiceError):
    """The request is malformed or does not match the model's inputs."""


class ModelNotFound(ServiceError):
    """No such model, or no such version of it."""


class ModelNotReady(ServiceError):
    """The model exists but is not loaded."""


class PayloadTooLarge(ServiceError):
    """A body or a batch is over a configured limit."""


class Unauthorized(ServiceError):
    """An admin operation without a valid bearer token."""


class Conflict(ServiceError):
    """The operation conflicts with one already running (one recalibration per model)."""


class Overloaded(ServiceError):
    """The model's queue is full; the client should retry later."""


class ConfigError(ServiceError):
    """A model's ``config.toml`` or file is invalid."""


class UnsupportedMediaType(InvalidInput):
    """A request body in a content type the endpoint does not read."""


class Timeout(ServiceError):
    """The request did not finish within the configured time."""


class BodyTimeout(ServiceError):
    """The client stopped sending the request body for longer than the idle timeout."""


class InsufficientStorage(ServiceError):
    """The repository's filesystem is full (or over quota); nothing was written."""


class ShuttingDown(ServiceError):
    """The server is stopping; the operation was abandoned without writing anything."""
