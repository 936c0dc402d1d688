"""Import RobustBench 1.1.1 in today's environment (docs/architecture.md, ecosystem quirks).

RobustBench 1.1.1 does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState``, but its dependency ``pyautoattack``
installs that package under the module name ``pyautoattack``. :func:`import_robustbench`
registers ``autoattack`` and its submodules as aliases of the installed
``pyautoattack`` modules (the same module objects, so classes are not duplicated) and
then imports ``robustbench``. It also needs ``pkg_resources`` (``setuptools<81``).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

from robustpath.errors import UserError

_SUBMODULES = ("autoattack", "autopgd_base", "checks", "fab_base", "fab_projections", "fab_pt",
               "other_utils", "square", "state")


def alias_autoattack() -> None:
    """Make ``import autoattack[.sub]`` resolve to ``pyautoattack[.sub]`` (idempotent)."""
    try:
        import autoattack  # noqa: F401  (a real autoattack install wins)
        return
    except ImportError:
        pass
    try:
        pkg = importlib.import_module("pyautoattack")
    except ImportError:
        raise UserError("RobustBench needs AutoAttack: pip install pyautoattack "
                        "(or autoattack from GitHub)") from None
    sys.modules.setdefault("autoattack", pkg)
    for sub in _SUBMODULES:
        try:
            mod = importlib.import_module(f"pyautoattack.{sub}")
        except ImportError:
            continue
        sys.modules.setdefault(f"autoattack.{sub}", mod)
    for name, mod in list(sys.modules.items()):  # anything else pyautoattack loaded
        if name.startswith("pyautoattack.") and mod is not None:
            sys.modules.setdefault("autoattack" + name[len("pyautoattack"):], mod)


def import_robustbench() -> ModuleType:
    """Import and return the ``robustbench`` package, with the autoattack alias in place.

    Raises ``UserError`` with the fix when robustbench or its dependencies are missing.
    """
    if "robustbench" in sys.modules:
        return sys.modules["robustbench"]
    alias_autoattack()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources / torch.jit deprecation notices
            return importlib.import_module("robustbench")
    except ImportError as e:
        hint = (" (setuptools >= 81 has no pkg_resources: pip install 'setuptools<81')"
                if "pkg_resources" in str(e) else "")
        raise UserError(f"cannot import robustbench: {e}{hint}; pip install robustbench==1.1.1") \
            from None
