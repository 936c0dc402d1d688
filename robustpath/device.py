"""Device selection: ``--device auto`` picks CUDA when present, else CPU.

Nothing here touches CUDA at import time.
"""

from __future__ import annotations

import torch

from .errors import UserError


def resolve(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return dev
