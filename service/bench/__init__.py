"""bnserve's benchmark suite: ``python -m service.bench`` or ``bnserve bench``.

Never imported by the service; the load generator and the report are importable without torch.
"""
