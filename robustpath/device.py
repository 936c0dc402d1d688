"""Device selection: ``--device auto`` picks CUDA when present, else CPU.

Nothing here touches CUDA at import time.

:func:`training_autocast` is the mixed precision of the training stages: bfloat16
autocast on CUDA (tensor cores; bfloat16 keeps float32's exponent range, so no loss
scaling is needed), nothing on CPU, where bfloat16 convolutions are slower than
float32 on AVX2 machines. Evaluation along paths always runs in float32.
"""

from __future__ import annotations

import contextlib

import torch

from robustpath.errors import UserError


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


def training_autocast(device: torch.device | str, enabled: bool = True):
    """Context for a training step (attack, forward, loss): bfloat16 autocast when
    ``enabled`` and ``device`` is CUDA, otherwise a no-op. Backward runs outside it."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
