"""``rp.benchmark(model_a, model_b, dataset=...)``: from two models to a full run folder
and its report in one call (RobustBench's ``benchmark()`` in spirit), and
``rp.load_model``.

The models may be two ``nn.Module`` s (their state dicts are saved to
``<out>/ckpt/models/<name>.safetensors``, so the run's keys follow their weights),
two checkpoint files (``robustpath.train.loop`` outputs, or ``.pt`` / ``.safetensors``
state dicts with ``arch="pkg.module:Factory"``) or two RobustBench model names (loaded
by :func:`robustpath.zoo.access.load`). Either way the run is the bench's
(:func:`robustpath.bench.run` with ``endpoints``): alignment, curves fitted with PGD
in the loop, path evaluation, the strong stage, tables, plots and ``report.html``.
The ends of every path are the given models (their own BatchNorm statistics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from robustpath.errors import UserError

#: RobustBench's threat-model names -> the bench's norms
THREAT_MODELS = {"linf": "linf", "l2": "l2"}


@dataclass
class BenchmarkResult:
    """What :func:`benchmark` made: ``run_dir`` (the run folder: ``report.html``,
    ``records.csv``, ``tables/``, ``plots/``) and ``summary``, the run's summary table
    (``tables/summary.csv``: one row per alignment x curve, barriers with CIs)."""

    run_dir: Path
    summary: object  # pandas.DataFrame

    @property
    def report(self) -> Path:
        """The run's HTML report."""
        return self.run_dir / "report.html"

    def __repr__(self) -> str:
        return (f"BenchmarkResult(run_dir={str(self.run_dir)!r}, "
                f"{len(self.summary)} paths; report {self.report.name})")

    def _repr_html_(self) -> str:
        import html

        return (f"<p><b>BenchmarkResult</b>: <code>{html.escape(str(self.run_dir))}</code> "
                f"(<a href=\"{html.escape(self.report.as_posix())}\">report.html</a>)</p>"
                + self.summary.to_html(index=False, float_format=lambda v: f"{v:.4g}"))


def _name(value, fallback: str) -> str:
    """A file-stem-safe endpoint name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value)).strip("-.")
    return name or fallback


def _save_module(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save

    from robustpath.io.store import atomic_write_bytes

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(flat))


def load_model(name_or_path: str | Path, *, dataset: str = "cifar10", threat_model: str = "Linf",
               model_dir: str | Path | None = None, device: str = "auto") -> nn.Module:
    """A model in eval mode: a ``robustpath.train.loop`` checkpoint (``X`` or
    ``X.safetensors`` beside ``X.json``) or a RobustBench model name (``dataset``,
    ``threat_model``; read from ``model_dir``, downloaded when missing and online)."""
    from robustpath.device import resolve
    from robustpath.engine.endpoint_files import robustpath_sidecar

    dev = resolve(device)
    if robustpath_sidecar(name_or_path) is not None:
        from robustpath.io.store import CacheError
        from robustpath.io.store import load_model as load_checkpoint_model

        try:
            return load_checkpoint_model(name_or_path, dev)[0].eval()
        except CacheError as e:
            raise UserError(str(e)) from None
    if Path(name_or_path).suffix in (".pt", ".pth", ".safetensors") or Path(name_or_path).exists():
        raise UserError(f"{name_or_path} is not a robustpath.train.loop checkpoint (X.safetensors + "
                        "X.json); for a state dict, build your architecture and call "
                        "load_state_dict, or pass the file to rp.benchmark with arch=")
    from robustpath.zoo.access import DEFAULT_MODEL_DIR, load

    return load(str(name_or_path), model_dir or DEFAULT_MODEL_DIR, dataset.lower(),
                threat_model).to(dev).eval()


def _endpoint(value, which: str, dataset: str, threat_model: str, model_dir,
              ) -> tuple[str, nn.Module | None, Path | None]:
    """``(name, module or None, file or None)`` of one input of :func:`benchmark`."""
    if isinstance(value, nn.Module):
        return which, value, None
    if not isinstance(value, (str, Path)):
        raise UserError(f"{which} must be an nn.Module, a checkpoint path or a RobustBench "
                        f"model name, got {type(value).__name__}")
    from robustpath.engine.endpoint_files import (
        STATE_DICT_SUFFIXES,
        endpoint_id,
        robustpath_sidecar,
    )

    p = Path(value)
    if robustpath_sidecar(p) is not None or (p.is_file() and p.suffix in STATE_DICT_SUFFIXES):
        return endpoint_id(p), None, p
    if p.suffix in STATE_DICT_SUFFIXES or p.exists() or "/" in str(value):
        raise UserError(f"{which}: {value} is neither a checkpoint file nor a RobustBench name")
    model = load_model(str(value), dataset=dataset, threat_model=threat_model,
                       model_dir=model_dir, device="cpu")
    return _name(value, which), model, None


def benchmark(model_a, model_b, *, dataset: str = "fashion-mnist", threat_model: str = "Linf",
              eps: float | str | None = None, out: str | Path | None = None,
              preset: str = "quick", names: tuple[str, str] | None = None, arch: str | None = None,
              model_dir: str | Path | None = None, device: str = "auto", progress: bool = True,
              overwrite: bool = False, **settings) -> BenchmarkResult:
    """See :func:`robustpath.benchmark` (the front door documents the arguments)."""
    from robustpath import bench
    from robustpath.config import from_preset
    from robustpath.engine.endpoint_files import is_factory

    norm = THREAT_MODELS.get(str(threat_model).lower())
    if norm is None:
        raise UserError(f"threat_model must be Linf or L2, got {threat_model!r}")
    if "seeds" in settings or "endpoints" in settings:
        raise UserError("rp.benchmark takes the two models; seeds / endpoints do not apply")
    ends = [_endpoint(m, w, dataset, threat_model, model_dir)
            for m, w in ((model_a, "model_a"), (model_b, "model_b"))]
    if names is not None:
        if len(names) != 2 or len({_name(n, "") for n in names}) != 2:
            raise UserError(f"names must be two distinct names, got {names!r}")
        if any(f is not None for _, _, f in ends):
            raise UserError("names apply to modules and RobustBench names; files are named "
                            "by their stem")
        ends = [(_name(n, f"model_{ab}"), m, f) for ab, n, (_, m, f) in zip("ab", names, ends)]
    elif ends[0][0] == ends[1][0]:
        ends = [(f"{n}_{ab}", m, f) for ab, (n, m, f) in zip("ab", ends)]
    modules = [m for _, m, _ in ends if m is not None]
    if modules and len(modules) != 2:
        raise UserError("model_a and model_b must be of one kind: two modules (or names), or "
                        "two checkpoint files")
    if modules:
        if type(modules[0]) is not type(modules[1]):
            raise UserError(f"model_a and model_b have different architectures "
                            f"({type(modules[0]).__name__} vs {type(modules[1]).__name__})")
        cls = type(modules[0])
        arch = f"{cls.__module__}:{cls.__qualname__}"  # descriptive: the modules are copied
    run_dir = Path(out) if out is not None else Path(
        "runs", f"benchmark-{dataset}-{ends[0][0]}__{ends[1][0]}")
    files = []
    for name, module, file in ends:
        if module is not None:
            file = run_dir / "ckpt" / "models" / f"{name}.safetensors"
            _save_module(module, file)
        files.append(str(file))
    if arch is not None and not modules and not is_factory(arch):
        raise UserError(f"arch must be pkg.module:Factory for state-dict files, got {arch!r}")
    if arch is None:
        from robustpath.engine.endpoint_files import sidecar_settings

        found = sidecar_settings(files)
        if not found:
            raise UserError("state-dict files need arch='pkg.module:Factory' (robustpath.train.loop "
                            "checkpoints name theirs)")
        settings = {"width": found["width"], **settings}
        arch = found["arch"]
    cfg = from_preset(preset, dataset=dataset, arch=arch, norm=norm, eps=eps, endpoints=files,
                      device=device, out=str(run_dir), **settings)
    templates = {f: m for f, (_, m, _) in zip(files, ends) if m is not None}
    command = f"rp.benchmark({ends[0][0]!r}, {ends[1][0]!r}, dataset={dataset!r}, ...)"
    bench.run(cfg, progress=progress, overwrite=overwrite, command=command,
              templates=templates)
    import pandas as pd

    return BenchmarkResult(run_dir, pd.read_csv(run_dir / "tables" / "summary.csv"))
