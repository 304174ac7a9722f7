"""Code generated from ``proto/`` by ``scripts/generate_grpc.py``; do not edit.

``POOL`` holds the descriptors of every generated module (not protobuf's default pool, where
``tritonclient.grpc`` defines the same ``inference`` messages): see the script's docstring.
"""

from google.protobuf.descriptor_pool import DescriptorPool

POOL = DescriptorPool()
