"""``python -m service.examples --out models``."""

from service.examples.build import main

raise SystemExit(main())
