"""``python -m robustpath.report``."""

from robustpath.report.cli import main

raise SystemExit(main())
