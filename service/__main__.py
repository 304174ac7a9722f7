"""``python -m service``: the ``bnserve`` command line (``service.cli.main``)."""

import sys

from service.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
