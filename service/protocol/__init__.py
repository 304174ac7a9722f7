"""Request/response codecs: Open Inference Protocol (V2, with binary tensors) and V1.

Pure functions over bytes and numpy arrays; the HTTP layer (``service.api``) calls them.
"""

from service.protocol.v1 import decode_v1_instances, encode_v1_predictions
from service.protocol.v2 import (
    InferRequest,
    RequestedOutput,
    decode_infer_request,
    encode_infer_response,
)

__all__ = [
    "InferRequest",
    "RequestedOutput",
    "decode_infer_request",
    "decode_v1_instances",
    "encode_infer_response",
    "encode_v1_predictions",
]
