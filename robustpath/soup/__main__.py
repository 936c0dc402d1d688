"""``python -m robustpath.soup``."""

from robustpath.soup.cli import main

raise SystemExit(main())
