"""What the numbers were measured on."""

from __future__ import annotations

import os
import platform

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                                    if f in flags) or "-"
    except OSError:
        pass
    return "?"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def info(device: torch.device) -> dict[str, str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    out = {
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical CPUs, {usable} usable; {_cpu_flags()})",
        "torch threads": f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op",
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'})",
        "device": str(device),
    }
    try:
        import torchattacks

        out["torchattacks"] = torchattacks.__version__
    except ImportError:
        out["torchattacks"] = "not installed"
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out
