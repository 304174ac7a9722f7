"""Model runtimes behind one interface: a ``base.Family`` per runtime, each in its own package
(``onnx``, ``torch``), found by name with ``families.family``."""
