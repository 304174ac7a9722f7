"""The operator's HTTP client: ``bnserve recalibrate``, ``versions``, ``activate`` and
``adaptation``.

Standard library only (``http.client``): no FastAPI, torch or onnxruntime, so it starts fast
and runs on a machine without the serving stack's heavy dependencies.
"""

from service.cli.client.commands import add_client_commands
from service.cli.client.transport import ClientError, Endpoint, UsageError

__all__ = ["ClientError", "Endpoint", "UsageError", "add_client_commands"]
