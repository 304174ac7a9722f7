"""HTTP transport: thin FastAPI routes over the core (``create_app`` in ``app.py``)."""
