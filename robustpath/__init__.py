"""robustpath: robust loss barriers between adversarially trained networks.

Pipeline: data -> adversarial endpoints -> neuron alignment -> curves fitted with
PGD in the loop -> path evaluation (clean + robust) -> barrier tables and plots.
Pixels are in [0, 1] everywhere; normalisation lives inside the models.

The front door, for a notebook (``import robustpath as rp``). One call from two models
to a run folder with its report (``runs/benchmark-<dataset>-<A>__<B>/report.html``)::

    result = rp.benchmark(model_a, model_b, dataset="fashion-mnist", threat_model="Linf",
                          eps=0.1)                # nn.Modules, checkpoints or RobustBench names
    result.summary                                # a DataFrame: one row per alignment x curve

Or stage by stage::

    x_tr, y_tr = rp.load_data("fashion-mnist", train=True, subset=2000)
    x_te, y_te = rp.load_data("fashion-mnist", train=False, subset=500)
    a, b = rp.create_model("cnn-small"), rp.create_model("cnn-small")   # or your own nn.Modules
    b_aligned, perm, report = rp.align_models(a, b, method="weight", example_input=x_te[:2])
    curve = rp.build_curve("bezier", a, b_aligned)                      # control point on the line
    rp.fit_curve(curve, x_tr, y_tr, epochs=2, attack=rp.AttackConfig(eps=0.1))
    res = rp.evaluate_path(curve, x_te, y_te, rp.AttackConfig(eps=0.1), ts=11,
                           bn_data=(x_tr, y_tr))
    rp.path_metrics(res)["robust_acc_min"]        # {"value", "lo", "hi"}
    rp.plot_path({"bezier": res}, "bezier")       # bezier.png + bezier.pdf

The functions are named ``align_models`` / ``load_data`` / ``create_model`` because
``robustpath.align``, ``robustpath.data`` and ``robustpath.models`` are the
subpackages (``rp.align.align`` etc. still work; submodules load on first use, so
``import robustpath`` stays cheap). The wrappers only validate inputs (one clear
:class:`robustpath.errors.UserError`) and pick defaults; the work is done by
:func:`robustpath.align.align`, :func:`robustpath.paths.curves.build_curve`,
:func:`robustpath.paths.fit.train_curve`, :func:`robustpath.paths.evaluate.evaluate_path`,
:func:`robustpath.stats.barrier.path_metrics` and :func:`robustpath.report.plots.plot_paths`.
The map of the package is ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Integral  # not `import numbers`: robustpath.numbers would shadow it
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustpath.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from robustpath.paths.curves import Curve
    from robustpath.paths.evaluate import PathResult

__version__ = "0.1.0"

# name -> (module, attribute): imported on first access (PEP 562), not at `import robustpath`
_LAZY = {
    "AttackConfig": ("attacks.base", "AttackConfig"),
    "build_attack": ("attacks.base", "build_attack"),
    "Batches": ("data", "Batches"),
    "Curve": ("paths.curves", "Curve"),
    "CurveTrainConfig": ("paths.fit", "CurveTrainConfig"),
    "PathResult": ("paths.evaluate", "PathResult"),
    "t_grid": ("paths.evaluate", "t_grid"),
    "BenchmarkResult": ("bench_api", "BenchmarkResult"),
    "load_curve": ("paths.curves", "load_curve"),
    "save_curve": ("paths.curves", "save_curve"),
}
_SUBMODULES = {"align", "attacks", "data", "engine", "io", "models", "pam", "paths",
               "report", "soup", "stats", "strong", "sweep", "train", "zoo"}

__all__ = ["UserError", "align_models", "benchmark", "build_curve", "create_model",
           "evaluate_path", "fit_curve", "load_data", "load_model", "path_metrics", "plot_path",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'robustpath' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


# ---------------------------------------------------------------- checks
def _module(value, what: str):
    from torch import nn

    if not isinstance(value, nn.Module):
        raise UserError(f"{what} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def _images(x, y, what: str):
    """Validate ``x`` [N, C, H, W] float pixels in [0, 1] and ``y`` [N] integer labels."""
    import torch

    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise UserError(f"{what}: x and y must be torch tensors, got "
                        f"{type(x).__name__} and {type(y).__name__}")
    if x.dim() != 4 or not x.is_floating_point():
        raise UserError(f"{what}: x must be a float tensor [N, C, H, W], got "
                        f"{x.dtype} of shape {tuple(x.shape)}")
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise UserError(f"{what}: y must be integer labels [N], got {y.dtype} of shape "
                        f"{tuple(y.shape)}")
    if len(x) != len(y) or len(y) == 0:
        raise UserError(f"{what}: x and y need the same, non-zero length, got {len(x)} and {len(y)}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise UserError(f"{what}: pixels must lie in [0, 1] (models normalise inside), "
                        f"got {lo:.3g} .. {hi:.3g}")
    return x, y.long() if y.dtype != torch.int64 else y


def _attack(attack, num_classes: int):
    from robustpath.attacks.base import AttackConfig, build_attack

    if isinstance(attack, AttackConfig):
        return build_attack(attack, num_classes)
    if callable(attack):
        return attack
    raise UserError("attack must be an AttackConfig or a callable attack(model, x, y) -> x_adv, "
                    f"got {type(attack).__name__}")


# ---------------------------------------------------------------- data and models
def load_data(name: str, *, train: bool = True, subset: int | None = None, seed: int = 0,
              root: str | Path | None = None, download: bool = True):
    """One split of dataset ``name`` (``fashion-mnist``, ``mnist``, ``cifar10``,
    ``cifar100``) as ``(x [N, C, H, W] float32 in [0, 1], y [N] int64)``.

    ``subset``: a seeded random subset of that many examples (``None``: all).
    See :func:`robustpath.data.load`.
    """
    from robustpath import data

    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise UserError(f"subset must be a positive int or None, got {subset!r}")
    return data.load(name, train=bool(train), root=root, subset=subset, seed=seed,
                     download=download)


def create_model(name: str, dataset: str = "fashion-mnist", width: float = 1.0):
    """Architecture ``name`` (``mlp``, ``cnn-small``, ``tinyten``, ``resnet20``, ...;
    ``rp.models.available()``) for ``dataset``'s input shape and classes, randomly
    initialised, with the dataset's normalisation inside (inputs: pixels in [0, 1]).
    Logits ``[N, num_classes]``. See :func:`robustpath.models.create`."""
    from robustpath import models

    return models.create(name, dataset, width)


def load_model(name_or_path: str | Path, *, dataset: str = "cifar10", threat_model: str = "Linf",
               model_dir: str | Path | None = None, device: str = "auto"):
    """A model in eval mode from a ``python -m robustpath.train`` checkpoint (``X`` or
    ``X.safetensors`` beside its ``X.json``) or a RobustBench model name (``dataset``,
    ``threat_model`` ``Linf``/``L2``; read from ``model_dir``, default RobustBench's
    ``./models``, downloaded when missing and online). Inputs: pixels in [0, 1]."""
    from robustpath.bench_api import load_model as _load

    return _load(name_or_path, dataset=dataset, threat_model=threat_model, model_dir=model_dir,
                 device=device)


# ---------------------------------------------------------------- one call
def benchmark(model_a, model_b, *, dataset: str = "fashion-mnist", threat_model: str = "Linf",
              eps: float | str | None = None, out: str | Path | None = None,
              preset: str = "quick", names: tuple[str, str] | None = None,
              arch: str | None = None, model_dir: str | Path | None = None,
              device: str = "auto", progress: bool = True, overwrite: bool = False, **settings):
    """Benchmark the paths between two models: align them, fit curves with PGD in the
    loop, evaluate clean and robust accuracy and loss along every path, run the strong
    stage, and write a run folder with tables, plots and ``report.html`` (the pipeline of
    ``python -m robustpath.bench``; RobustBench's ``benchmark()`` in spirit).

    ``model_a``, ``model_b``: two ``nn.Module`` s of one architecture (inputs pixels in
    [0, 1], normalisation inside; e.g. torchvision-style classes), two checkpoint files
    (``robustpath.train.loop`` outputs, or ``.pt`` / ``.safetensors`` state dicts with
    ``arch="pkg.module:Factory"``) or two RobustBench names (``model_dir``).
    ``threat_model``: ``Linf`` or ``L2``; ``eps``: its radius in pixels (default per
    dataset: 0.1 for 28x28 grey-scale, 8/255 for CIFAR). ``out``: the run folder (default
    ``runs/benchmark-<dataset>-<A>__<B>``); ``names``: the endpoints' ids in the records
    (default ``model_a``/``model_b``, a file's stem, or the RobustBench name).
    ``preset`` and ``settings``: any :class:`robustpath.config.BenchConfig` field, e.g.
    ``train_subset=2000, test_subset=200, curve_epochs=2, paths=["line", "bezier"]``.
    The ends of every path keep the models' own BatchNorm statistics, so t = 0 and t = 1
    are the given models.

    Returns a :class:`robustpath.bench_api.BenchmarkResult`: ``run_dir``, ``summary``
    (a DataFrame), ``report`` (the HTML page).
    """
    from robustpath.bench_api import benchmark as _benchmark

    return _benchmark(model_a, model_b, dataset=dataset, threat_model=threat_model, eps=eps,
                      out=out, preset=preset, names=names, arch=arch, model_dir=model_dir,
                      device=device, progress=progress, overwrite=overwrite, **settings)


# ---------------------------------------------------------------- the pipeline
def align_models(model_a, model_b, method: str = "weight", *, data: Iterable | None = None,
                 example_input=None, **kwargs):
    """Permute ``model_b``'s hidden units to match ``model_a``'s (neither is modified).

    ``method``: ``weight`` (default here: Git Re-Basin weight matching, needs no data),
    ``activation`` (Tatro et al. 2020; needs ``data``, an iterable of ``(x, y)`` batches
    such as ``rp.Batches(x, y, 128)``) or ``none``. ``example_input``: a batch
    ``[2, C, H, W]`` to trace the architecture when there is no ``data`` (models from
    :func:`create_model` need none). Further keywords go to
    :func:`robustpath.align.align` (``inputs="adv"``, ``attack``, ``max_batches``,
    ``partial``, ...).

    Returns ``(aligned_b, perm, report)``: ``aligned_b`` computes the same function as
    ``model_b``.
    """
    _module(model_a, "model_a")
    _module(model_b, "model_b")
    from robustpath.align import MATCHERS, align

    MATCHERS.get(method)  # unknown names: UserError listing the known ones
    if method == "activation" and data is None:
        raise UserError("method='activation' matches activations and needs data= (batches of "
                        "(x, y)); method='weight' aligns without data")
    return align(model_a, model_b, method=method, data=data, example_input=example_input,
                 **kwargs)


def build_curve(kind: str, model_a, model_b, bends: int = 1) -> Curve:
    """A curve θ(t), t in [0, 1], from ``model_a`` (t = 0) to ``model_b`` (t = 1):
    ``line``, ``bezier`` (default ``bends=1``: the quadratic Bezier of Garipov et al.
    2018 / Tatro et al. 2020) or ``polychain``. Control points start on the straight
    line; the models are copied. See :func:`robustpath.paths.curves.build_curve`."""
    _module(model_a, "model_a")
    _module(model_b, "model_b")
    if isinstance(bends, bool) or not isinstance(bends, int) or bends < 0:
        raise UserError(f"bends must be an int >= 0, got {bends!r}")
    from robustpath.paths import curves

    return curves.build_curve(kind, model_a, model_b, bends)


def fit_curve(curve: Curve, x_train, y_train, cfg=None, *, out_dir: str | Path | None = None,
              device: str = "auto", progress: bool = True, **settings) -> dict[str, Any]:
    """Fit ``curve``'s control points in place with PGD in the loop (Tatro et al. 2020).

    ``x_train`` [N, C, H, W] pixels in [0, 1], ``y_train`` [N] labels. ``cfg``: a
    :class:`robustpath.paths.fit.CurveTrainConfig` (defaults: 10 epochs, batch 128,
    SGD lr 0.015 Nesterov 0.9, cosine schedule, PGD L-inf 8/255, 5 steps;
    ``attack=None`` trains on clean inputs); keywords override its fields, e.g.
    ``epochs=2, attack=rp.AttackConfig(eps=0.1)``. ``out_dir``: checkpoint folder
    (resumable); ``None`` fits in memory. ``device``: ``auto`` (CUDA when present, as
    the CLI), ``cpu``, ``cuda``, ``cuda:N``; the curve is moved there. Returns the training metrics (``history``,
    ``train_loss``, ``train_acc``, ``seconds_per_epoch``, ...).
    """
    from dataclasses import fields, replace

    from robustpath.paths.curves import Curve
    from robustpath.paths.fit import CurveTrainConfig, train_curve

    if not isinstance(curve, Curve):
        raise UserError(f"fit_curve needs a curve from rp.build_curve, got {type(curve).__name__}")
    x_train, y_train = _images(x_train, y_train, "fit_curve")
    cfg = CurveTrainConfig() if cfg is None else cfg
    if not isinstance(cfg, CurveTrainConfig):
        raise UserError(f"cfg must be a CurveTrainConfig, got {type(cfg).__name__}")
    known = {f.name for f in fields(CurveTrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"fit_curve got unknown setting(s) {', '.join(unknown)} "
                        f"(CurveTrainConfig fields: {', '.join(sorted(known))})")
    cfg = replace(cfg, **settings)
    from robustpath.device import resolve

    return train_curve(curve, x_train, y_train, cfg, out_dir, device=resolve(device),
                       progress=progress)


def evaluate_path(path: Curve | Callable, x_test, y_test, attack, *,
                  ts: int | Sequence[float] = 11, bn_data=None, recompute_bn: bool = True,
                  bn_batches: int = 10, num_classes: int | None = None, device: str = "auto",
                  progress: bool = True, **kwargs) -> PathResult:
    """Clean and robust accuracy / loss of every test example at every t of a path.

    ``path``: a curve (its speed ||dθ/dt|| is computed for the arc-length averages) or
    any callable ``t -> nn.Module`` (unit speed). ``x_test`` [N, C, H, W] pixels in
    [0, 1], ``y_test`` [N]. ``attack``: an :class:`AttackConfig` or a callable
    ``attack(model, x, y)``. ``ts``: the number of evenly spaced t in [0, 1] (default 11)
    or the t values themselves. ``bn_data``: training data for re-estimating BatchNorm
    statistics at every t - ``(x_train, y_train)`` or an iterable of ``(x, y)`` batches;
    a network with BatchNorm refuses to run without it unless ``recompute_bn=False``.
    ``bn_batches``: how many batches (of 128 for a tuple) estimate the statistics.
    ``num_classes`` (for attacks that need it): default ``max(y_test) + 1``.
    ``device``: ``auto`` (CUDA when present, as the CLI), ``cpu``, ``cuda``, ``cuda:N``.
    Further keywords go to :func:`robustpath.paths.evaluate.evaluate_path` (``bn_inputs``,
    ``bn_attack``, ``batch_size``, ``t_batch``, ``recompute_ends``, ...).

    Returns a :class:`PathResult`: ``ts`` [T], ``speed`` [T] and ``[T, N]`` arrays
    ``clean_correct``, ``robust_correct``, ``clean_loss``, ``robust_loss``.
    """
    from robustpath.paths import evaluate

    if not callable(path) and not hasattr(path, "model_at"):
        raise UserError(f"path must be a curve or a callable t -> nn.Module, got "
                        f"{type(path).__name__}")
    x_test, y_test = _images(x_test, y_test, "evaluate_path")
    count = isinstance(ts, Integral) and not isinstance(ts, bool)
    if isinstance(ts, bool) or (count and ts < 2):
        raise UserError(f"ts must be a number of points >= 2 or a sequence of t, got {ts!r}")
    grid = evaluate.t_grid(int(ts)) if count else evaluate._check_ts(ts)
    if num_classes is None:
        num_classes = int(y_test.max()) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, Integral) \
            or num_classes <= int(y_test.max()):
        raise UserError(f"num_classes must be an int above every label (max label "
                        f"{int(y_test.max())}), got {num_classes!r}")
    attack = _attack(attack, int(num_classes))
    if isinstance(bn_data, tuple) and len(bn_data) == 2 and hasattr(bn_data[0], "dim"):
        from robustpath.data import Batches

        x_bn, y_bn = _images(*bn_data, "evaluate_path bn_data")
        bn_data = Batches(x_bn, y_bn, 128, shuffle=True, seed=0)
    elif bn_data is not None and not isinstance(bn_data, Iterable):
        raise UserError("bn_data must be (x_train, y_train) tensors or an iterable of (x, y) "
                        f"batches, got {type(bn_data).__name__}")
    if bn_data is None and recompute_bn and kwargs.get("renorm") is None:
        from robustpath.paths.bn import has_batchnorm

        # one interior point (BatchNorm is recomputed there whatever recompute_ends says)
        if has_batchnorm((path.model_at if hasattr(path, "model_at") else path)(0.5)):
            raise UserError("the path's networks have BatchNorm and rp.evaluate_path got no "
                            "bn_data: interpolated running statistics are meaningless; pass "
                            "bn_data=(x_train, y_train), or recompute_bn=False to evaluate the "
                            "statistics as they are")
    from robustpath.device import resolve

    return evaluate.evaluate_path(path, grid, x_test, y_test, attack,
                                  bn_loader=bn_data, bn_batches=bn_batches,
                                  recompute_bn=recompute_bn, device=resolve(device),
                                  progress=progress,
                                  **kwargs)


def path_metrics(result: PathResult, *, bootstrap: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, dict[str, float]]:
    """Barrier metrics of a path with percentile-bootstrap CIs over test examples:
    ``{metric: {"value", "lo", "hi"}}`` for ``clean_/robust_`` ``acc_a``, ``acc_b``,
    ``acc_ends``, ``acc_min``, ``t_min``, ``acc_avg`` (arc-length weighted),
    ``acc_barrier``, ``loss_barrier``. Accuracies are fractions in [0, 1]. See
    :func:`robustpath.stats.barrier.path_metrics`."""
    from robustpath.paths.evaluate import PathResult
    from robustpath.stats.barrier import path_metrics as _metrics

    if not isinstance(result, PathResult):
        raise UserError(f"path_metrics needs the PathResult of evaluate_path, got "
                        f"{type(result).__name__}")
    if len(result.ts) < 2:
        raise UserError("path_metrics needs at least two points (t = 0 and t = 1)")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 1:
        raise UserError(f"bootstrap must be an int >= 1, got {bootstrap!r}")
    if not 0.0 < level < 1.0:
        raise UserError(f"level must lie in (0, 1), got {level}")
    return _metrics(result, bootstrap=bootstrap, seed=seed, level=level)


def plot_path(results: PathResult | Mapping[Any, PathResult], out_stem: str | Path | None = None,
              *, title: str = "", bootstrap: int = 1000):
    """The 2x2 figure (clean / robust accuracy and loss against t, bootstrap bands) of
    one path or of several: ``{name: result}``, ``name`` a curve label (``"bezier"``)
    or ``(alignment, curve)`` (``("weight", "bezier")``: the run's colours and labels).
    Writes ``<out_stem>.png`` and ``.pdf`` when given a stem; returns the matplotlib
    Figure."""
    from robustpath.io.records import PathRecord
    from robustpath.paths.evaluate import PathResult
    from robustpath.report.plots import plot_paths

    if isinstance(results, PathResult):
        results = {"path": results}
    if not isinstance(results, Mapping) or not results:
        raise UserError("plot_path needs a PathResult or a non-empty {name: PathResult} mapping")
    records = []
    for name, res in results.items():
        if not isinstance(res, PathResult):
            raise UserError(f"plot_path: {name!r} is a {type(res).__name__}, not a PathResult")
        # a plain name is drawn as "<name>, path" in the legend
        align, curve = (name if isinstance(name, tuple) and len(name) == 2 else (name, "path"))
        # positional: alignment, curve, endpoint ids of A and B, result
        records.append(PathRecord(str(align), str(curve), 0, 1, res))
    return plot_paths(records, out_stem, title=title, bootstrap=bootstrap)
