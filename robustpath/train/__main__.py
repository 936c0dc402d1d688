"""``python -m robustpath.train``."""

from robustpath.train.cli import main

raise SystemExit(main())
