"""The gRPC edge: the Open Inference Protocol's ``inference.GRPCInferenceService``, health and
reflection on a ``grpc.aio`` server in the HTTP server's process and event loop (``server.py``).
Like ``service.api``, only this package knows its transport; the core stays free of grpc."""
