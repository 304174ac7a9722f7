"""The ``bnserve`` command line."""
