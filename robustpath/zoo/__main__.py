"""``python -m robustpath.zoo``."""

from robustpath.zoo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
