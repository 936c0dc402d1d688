"""Endpoints read from a user's files: the third endpoint source beside trained seeds
(:func:`robustpath.engine.stages.endpoint`) and RobustBench models (:mod:`robustpath.zoo`).

Two kinds of file:

* a checkpoint written by ``python -m robustpath.train`` (``X.safetensors`` + the JSON
  sidecar ``X.json`` naming the architecture, dataset and width; the sidecar's sha256
  of the tensors is verified): rebuilt with :func:`robustpath.io.store.load_model`;
* a state dict of the user's own architecture, given as ``--arch pkg.module:Factory``
  (imported with :mod:`importlib`, called with no arguments, or with ``num_classes=``
  when its signature takes it): ``.safetensors`` (no pickle at all) or ``.pt`` / ``.pth``
  read with ``torch.load(weights_only=True)`` passed explicitly, so that
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot turn it off: a pickle is never executed,
  a file holding anything but tensors is refused in one line.

An endpoint is named by its file's stem (``runs/ep0.safetensors`` -> ``ep0``) in
``records.csv``; its cache key is the hash of the file's sha256 and the architecture,
so every downstream stage key changes when the file does.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import pickle
from pathlib import Path

import torch
from torch import nn

from robustpath.errors import UserError
from robustpath.io.store import CacheError, checkpoint_files, config_hash, load_model, sha256_file

#: suffixes of plain state dicts (read only with ``--arch module:Factory``)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")
#: wrappers a training script commonly saves the state dict under
_WRAPPERS = ("state_dict", "model_state_dict", "model")


def is_factory(arch: str) -> bool:
    """``pkg.module:Factory`` (a user's architecture), not a registered name."""
    return ":" in str(arch)


def endpoint_id(path: str | Path) -> str:
    """The id of an endpoint file in records: its stem (``a/ep0.safetensors`` -> ``ep0``)."""
    p = Path(path)
    return p.name[: -len(p.suffix)] if p.suffix in (*STATE_DICT_SUFFIXES, ".json") else p.name


def robustpath_sidecar(path: str | Path) -> dict | None:
    """The ``model`` entry (arch, dataset, width) of a ``robustpath.train.loop`` checkpoint's
    sidecar, or None when ``path`` is not one (no sidecar, or one naming no architecture)."""
    st, js = checkpoint_files(path)
    if not (st.is_file() and js.is_file()):
        return None
    try:
        meta = json.loads(js.read_text())
    except (OSError, ValueError):
        return None
    arch = meta.get("model") if isinstance(meta, dict) else None
    return arch if isinstance(arch, dict) and "arch" in arch else None


def sidecar_settings(paths: list[str]) -> dict:
    """``{"arch", "dataset", "width"}`` from the sidecars of two ``robustpath.train.loop``
    checkpoints (empty when neither has one); two different architectures are refused."""
    found = [(p, a) for p in paths if (a := robustpath_sidecar(p)) is not None]
    settings = [{"arch": a["arch"], "dataset": a.get("dataset", "fashion-mnist"),
                 "width": float(a.get("width", 1.0))} for _, a in found]
    if len(settings) == 2 and settings[0] != settings[1]:
        raise UserError(f"--endpoints: {found[0][0]} and {found[1][0]} hold different "
                        f"architectures ({settings[0]} vs {settings[1]})")
    return settings[0] if settings else {}


def check_files(paths: list[str], arch: str, dataset: str | None = None,
                width: float | None = None) -> None:
    """Before any work: existing files with distinct stems (how many: the command's
    check), each either a ``robustpath.train.loop`` checkpoint (of ``arch``, ``dataset``
    and ``width`` when given) or (with ``--arch module:Factory``) a state dict."""
    ids = [endpoint_id(p) for p in paths]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise UserError(f"--endpoints: two files have the stem {dup!r}; records name "
                        "endpoints by stem, so rename one")
    for p in paths:
        if is_factory(arch):
            f = Path(p)
            if not f.is_file() and checkpoint_files(p)[0].is_file():
                continue  # a robustpath.train.loop stem: its .safetensors, with the user's factory
            if not f.is_file():
                raise UserError(f"--endpoints: {p} not found")
            if f.suffix not in STATE_DICT_SUFFIXES:
                raise UserError(f"--endpoints: {p} is not a state dict "
                                f"({', '.join(STATE_DICT_SUFFIXES)})")
            continue
        info = robustpath_sidecar(p)
        st = checkpoint_files(p)[0]
        if info is None:
            raise UserError(f"--endpoints: {p} is not a robustpath.train.loop checkpoint ({st} + "
                            "its .json sidecar); for your own architecture's state dicts "
                            "pass --arch pkg.module:Factory")
        check_sidecar(info, st, arch, dataset, width)


def check_sidecar(info: dict, st: Path, arch: str, dataset: str | None,
                  width: float | None) -> None:
    """A ``robustpath.train.loop`` checkpoint must hold the run's architecture and dataset."""
    if dataset is not None and info.get("dataset", dataset) != dataset:
        raise UserError(f"--endpoints: {st} was trained on {info.get('dataset')}, the run "
                        f"uses --dataset {dataset}")
    w = float(info.get("width", 1.0))
    if info.get("arch") != arch or (width is not None and w != float(width)):
        raise UserError(f"--endpoints: {st} holds a {info.get('arch')} x{w:g} model, the run "
                        f"uses --arch {arch} --width {float(width or 1.0):g}")


def import_factory(spec: str):
    """``pkg.module:Factory`` -> the callable (a class or a function)."""
    module, _, name = str(spec).partition(":")
    if not module or not name:
        raise UserError(f"--arch {spec!r}: expected pkg.module:Factory")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"--arch {spec}: cannot import {module} ({e}); is it on PYTHONPATH?") \
            from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UserError(f"--arch {spec}: {module} has no attribute {name}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"--arch {spec}: {name} is not callable")
    return obj


def build_factory(spec: str, num_classes: int) -> nn.Module:
    """A fresh network from ``pkg.module:Factory``: called with ``num_classes=`` when its
    signature takes that keyword, else with no arguments."""
    factory = import_factory(spec)
    try:
        takes = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        takes = False
    model = factory(num_classes=num_classes) if takes else factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"--arch {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pt``/``.pth``, never running a pickle."""
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        from safetensors.torch import load_file

        st = path if path.suffix == ".safetensors" else checkpoint_files(path)[0]
        try:
            return load_file(str(st))
        except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
            raise UserError(f"{st} is not a readable safetensors file ({type(e).__name__})") \
                from None
    try:
        # weights_only passed explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD overrides only
        # a call that leaves it unset (torch.serialization), so no setting runs a pickle
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            first = "it holds pickled objects besides tensors"
        raise UserError(f"{path} refused: not a plain state dict ({first}); robustpath reads "
                        ".pt files with torch.load(weights_only=True) and never runs a "
                        "pickle - save model.state_dict() or use .safetensors") from None
    for key in _WRAPPERS:  # {"state_dict": {...}, "epoch": 3}: the tensors inside
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    # saved from nn.DataParallel / DistributedDataParallel
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def precheck(paths: list[str], arch: str) -> None:
    """Read every state dict once before the run writes anything, so that a file holding
    a pickle (or no tensors) is refused in one line before any work."""
    if is_factory(arch):
        for p in paths:
            read_state_dict(p)


def file_key(path: str | Path, arch: str) -> str:
    """The cache key of an endpoint file, known before it is loaded (the plan names every
    node up front): the hash :func:`load_endpoint` returns."""
    if is_factory(arch):
        f = Path(path) if Path(path).is_file() else checkpoint_files(path)[0]
        return config_hash({"sha256": sha256_file(f), "arch": arch})
    st, _ = checkpoint_files(path)
    info = robustpath_sidecar(path)
    return config_hash({"sha256": sha256_file(st), "arch": info})


def load_endpoint(path: str | Path, arch: str, dataset: str, num_classes: int,
                  width: float = 1.0, device: str | torch.device = "cpu", *,
                  template: nn.Module | None = None) -> tuple[nn.Module, dict, str]:
    """Load one endpoint file: ``(model in eval mode, metrics, key)``.

    ``metrics``: the training metrics of a ``robustpath.train.loop`` checkpoint (empty for a
    plain state dict). ``key``: hash of the file's sha256 and the architecture.
    ``template``: a module to copy instead of calling the factory (``rp.benchmark`` on
    in-memory models, whose state dicts it saved to ``path``)."""
    if is_factory(arch):
        model = copy.deepcopy(template) if template is not None else build_factory(arch, num_classes)
        tensors = read_state_dict(path)
        f = Path(path) if Path(path).is_file() else checkpoint_files(path)[0]
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0][:200]
            raise UserError(f"{f} does not fit --arch {arch}: {first}") from None
        metrics = {}
        key = config_hash({"sha256": sha256_file(f), "arch": arch})
        return model.to(device).eval(), metrics, key
    st, _ = checkpoint_files(path)
    try:
        model, meta = load_model(path, device)
    except CacheError as e:
        raise UserError(f"--endpoints: {e}") from None
    info = meta["model"]
    check_sidecar(info, st, arch, dataset, width)
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    key = config_hash({"sha256": sha256_file(st), "arch": info})
    return model.eval(), metrics, key
