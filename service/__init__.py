"""bnserve: inference serving for BatchNorm networks."""

__version__ = "0.1.0"
