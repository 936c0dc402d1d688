"""Zoo architectures without weights or a network, and whether robustpath can align them.

``zoo list`` builds every entry's architecture from RobustBench's own constructor and
runs :func:`robustpath.align.permutation_spec` (``partial=True``) on it:

* :func:`build` calls the constructor with every download disabled - torchvision's
  weight enums (``resnet50(pretrained=True)``) give no state dict, ``timm.create_model``
  gets ``pretrained=False`` - and the network blocked (:func:`no_network`), so a listing
  never touches it; parameters are created on the ``meta`` device as the constructor
  registers them (no memory, no initialisation cost; Swin-L's 197M parameters build in
  1-2 s), buffers keep their real values (index tables, normalisation); a constructor
  that reads parameter values (SODEF's geotorch) is built on the CPU uninitialised.
* :func:`alignability` derives the permutation spec on an example input of the entry's
  preprocessing size (224 or 288 for ImageNet, 32 for CIFAR) on the meta device; the
  attention rule's numerical check of a head permutation runs on a CPU copy of the one
  module with random weights and the real buffers (once per module configuration:
  ``permutation_spec(buffers=)``, :mod:`robustpath.align.meta`), and a model that still
  fails on meta is retried once on the CPU with random weights. The verdict is
  ``whole`` (every hidden unit permutable), ``partial`` (``spec.fixed`` non-empty: which
  layers' units stay in place and why) or ``refused`` (the spec cannot be derived: the
  one-line reason). Verdicts are cached per (class name, parameter-shape signature,
  input shape) in memory and in ``$ROBUSTPATH_ZOO_CACHE`` (default
  ``~/.cache/robustpath/zoo_align``), keyed also by a hash of ``robustpath/align``'s
  sources so a changed rule recomputes them.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import io
import linecache
import os
import re
import socket
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from robustpath.io.store import atomic_write_json

#: ImageNet preprocessing names end with the crop size (RobustBench's ``preprocessing``)
INPUT_SIZE = {"cifar10": 32, "cifar100": 32, "imagenet": 224}


class NetworkBlocked(OSError):
    """Raised by every socket connection or name lookup inside :func:`no_network`."""


@contextlib.contextmanager
def no_network():
    """Block ``socket`` connections and DNS look-ups (a listing must stay offline)."""

    def refuse(*_a, **_k):
        raise NetworkBlocked("network access blocked while building a zoo architecture")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,
             socket.getaddrinfo)
    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.create_connection = socket.getaddrinfo = refuse
    try:
        yield
    finally:
        (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,
         socket.getaddrinfo) = saved


class _NoWeights(dict):
    """An empty state dict that ``load_state_dict`` skips (inside :func:`no_weights`)."""


@contextlib.contextmanager
def no_weights():
    """Constructors build architectures only: torchvision weight enums return
    :class:`_NoWeights` (``load_state_dict`` ignores it) and ``timm.create_model``
    is called with ``pretrained=False``."""
    import timm
    from torchvision.models._api import WeightsEnum

    get_sd, load_sd, create = WeightsEnum.get_state_dict, nn.Module.load_state_dict, \
        timm.create_model

    def load_state_dict(self, state_dict, *a, **k):
        if isinstance(state_dict, _NoWeights):
            return torch.nn.modules.module._IncompatibleKeys([], [])
        return load_sd(self, state_dict, *a, **k)

    def create_model(*a, **k):
        return create(*a, **dict(k, pretrained=False))

    WeightsEnum.get_state_dict = lambda self, *a, **k: _NoWeights()
    nn.Module.load_state_dict = load_state_dict
    timm.create_model = create_model
    try:
        yield
    finally:
        WeightsEnum.get_state_dict, nn.Module.load_state_dict = get_sd, load_sd
        timm.create_model = create


@contextlib.contextmanager
def params_on_meta():
    """Every parameter a constructor registers moves to the meta device at once (its
    initialisation then costs nothing); buffers and other tensors stay real."""
    register = nn.Module.register_parameter

    def register_parameter(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build(constructor) -> nn.Module:
    """``constructor()`` offline and without weights, in eval mode: parameters on meta,
    or, for a constructor that reads its parameters' values (SODEF's ``.item()``), built
    on the CPU with random weights."""
    # stdout swallowed: some constructors print parameter counts
    with warnings.catch_warnings(), no_network(), no_weights(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            with params_on_meta():
                return constructor().eval()
        except Exception as e:  # noqa: BLE001  (third-party constructors raise anything)
            if not _meta_problem(e):
                raise
        with _no_init():
            return constructor().eval()


@contextlib.contextmanager
def _no_init():
    """``torch.nn.init``'s in-place initialisers do nothing (the values are never used;
    initialising SODEF's 267M parameters took 12 s)."""
    saved = {n: f for n, f in vars(nn.init).items() if n.endswith("_") and callable(f)
             and not n.startswith("_")}
    for n in saved:
        setattr(nn.init, n, lambda tensor, *a, **k: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def registered_stand_in(msg: str):
    """robustbench 1.1.1's XCiT entries' constructors call ``timm.create_model`` with
    ``debenedetti2020light_xcit_s_imagenet_linf`` while its ``xcit`` module registers
    ``debenedetti2022light_xcit_s12_imagenet_linf`` (the model its ``load_model``
    builds from the entry name): ``(model, name)`` of the one registered timm model that
    closely matches the unknown name, else ``(None, "")``."""
    found = re.fullmatch(r"Unknown model \((\S+)\)", msg)
    if not found:
        return None, ""
    import timm

    unknown = found.group(1)
    close = difflib.get_close_matches(unknown, timm.list_models(unknown[:8] + "*"), n=2,
                                      cutoff=0.85)
    if len(close) != 1 and not (len(close) == 2 and difflib.SequenceMatcher(
            None, unknown, close[0]).ratio() > difflib.SequenceMatcher(
            None, unknown, close[1]).ratio()):
        return None, ""
    try:
        return build(lambda: timm.create_model(close[0])), close[0]
    except Exception:  # noqa: BLE001
        return None, ""


def input_size(dataset: str, preprocessing: str | None) -> int:
    """Image side of an entry: the crop of its ``preprocessing`` (``Crop288`` -> 288)."""
    found = re.search(r"(\d+)$", preprocessing or "")
    return int(found.group(1)) if found else INPUT_SIZE.get(dataset, 224)


# ---------------------------------------------------------------- verdicts
@dataclass
class Alignability:
    """``status``: ``whole``, ``partial`` or ``refused``; ``groups``: permutation groups
    aligned; ``detail``: for ``partial`` which layers' units stay and why, for
    ``refused`` the reason; ``left_in_place``: ``spec.fixed`` shortened (``op``,
    ``where``, ``reason``, ``count``, ``units``); ``seconds``: spec derivation time."""

    status: str
    groups: int = 0
    detail: str = ""
    left_in_place: list | None = None
    seconds: float = 0.0

    def line(self) -> str:
        if self.status == "whole":
            return f"aligns whole ({self.groups} groups)"
        if self.status == "partial":
            return f"aligns partially ({self.groups} groups); {self.detail}"
        return f"refused: {self.detail}"


def _pattern(name: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name)


def _enclosing_class(path: str, line: int) -> str:
    """The class whose source holds ``path:line`` (names the module of a refused op)."""
    for n in range(line, 0, -1):
        found = re.match(r"class (\w+)", linecache.getline(path, n))
        if found:
            return found.group(1)
    return ""


def _short_reason(reason: str) -> str:
    reason = re.sub(r" ?\((\d+, )*\d+,?\)", "", reason)  # tensor shapes
    reason = reason.split(": register")[0].split("; ")[0][:110]
    return reason + ")" * (reason.count("(") - reason.count(")"))


def _summarise_fixed(fixed: list[dict]) -> list[dict]:
    """``spec.fixed`` grouped by operation and source line (``op``, ``where``, ``cls``:
    the class holding that line, ``reason``, ``count``, ``units``: name patterns of the
    layers whose units stay), most frequent first."""
    kinds: dict[tuple, dict] = {}
    for f in fixed:
        op = f["where"].split(" (node")[0]
        loc = re.search(r"at (\S+), line (\d+)", f["where"])
        cls = _enclosing_class(loc.group(1), int(loc.group(2))) if loc else ""
        where = f"{Path(loc.group(1)).name}:{loc.group(2)}" if loc else ""
        k = kinds.setdefault((op, where), {"op": op, "where": where, "cls": cls,
                                           "reason": _short_reason(f["reason"]), "count": 0,
                                           "units": []})
        k["count"] += 1
        k["units"] = list(dict.fromkeys(k["units"] + [_pattern(u) for u in f["units"]]))
    return sorted(kinds.values(), key=lambda k: -k["count"])


def _detail(kinds: list[dict], show: int = 2) -> str:
    """One line: the most frequent kinds of refused operation and the units that stay."""
    parts = []
    for k in kinds[:show]:
        units = ", ".join(k["units"][:2]) + (", ..." if len(k["units"]) > 2 else "")
        cls = f" in {k['cls']}" if k["cls"] else ""
        parts.append(f"{k['op']}{cls} ({k['where']}) x{k['count']}: {k['reason']}"
                     + (f" [stays: {units}]" if units else ""))
    more = f"; +{len(kinds) - show} more kinds (--json)" if len(kinds) > show else ""
    return "left in place: " + "; ".join(parts) + more


def _meta_problem(e: Exception) -> bool:
    text = str(e)
    return "meta" in text and ("device" in text or "Tensor.item()" in text
                               or "copy out of meta" in text or "meta tensor" in text)


def _put_buffers(model: nn.Module, buffers: dict[str, torch.Tensor], which) -> None:
    from robustpath.align.meta import put_buffers

    put_buffers(model, {n: b for n, b in buffers.items() if which(b)})


def _derive(model: nn.Module, side: int) -> Alignability:
    from robustpath.align import permutation_spec
    from robustpath.align.meta import materialise
    from robustpath.errors import UserError

    buffers = {n: b for n, b in model.named_buffers(remove_duplicate=False)}
    shape = (2, 3, side, side)
    model.to("meta")
    _put_buffers(model, buffers, lambda b: b.dim() == 0)
    for attempt in ("meta", "cpu"):
        if attempt == "cpu":
            materialise(model, buffers, copy_first=False)  # random weights, real buffers
        x = torch.rand(shape, device=attempt)
        try:
            with warnings.catch_warnings(), no_network():
                warnings.simplefilter("ignore")
                spec = permutation_spec(model, x, partial=True, buffers=buffers)
        except (UserError, Exception) as e:  # noqa: BLE001  (third-party forwards raise anything)
            if attempt == "meta" and _meta_problem(e):
                continue
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            msg = re.sub(r"/\S*/(site-packages|robustpath)/", "", msg)
            text = msg if isinstance(e, UserError) else f"{type(e).__name__}: {msg}"
            return Alignability("refused", detail=text[:400])
        finally:
            if attempt == "cpu":
                model.to("meta")  # frees the random weights
        if not spec.fixed:
            return Alignability("whole", len(spec.groups))
        kinds = _summarise_fixed(spec.fixed)
        if not spec.groups:
            return Alignability("refused", 0, "nothing permutable; " + _detail(kinds), kinds)
        return Alignability("partial", len(spec.groups), _detail(kinds), kinds)
    raise AssertionError("unreachable")


@functools.cache
def _code_hash() -> str:
    root = Path(__file__).resolve().parents[1] / "align"
    h = hashlib.sha256(Path(__file__).read_bytes())
    for f in sorted(root.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    base = os.environ.get("ROBUSTPATH_ZOO_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robustpath" / \
        "zoo_align"


_MEMORY: dict[str, Alignability] = {}


def alignability(model: nn.Module, signature: str, side: int) -> Alignability:
    """The verdict for ``model`` (built by :func:`build`; its parameters end on meta),
    cached per class name, ``signature`` (parameter shapes) and input side."""
    import json

    key = f"{type(model).__name__}-{signature}-{side}-{_code_hash()}"
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        found = Alignability(**json.loads(path.read_text()))
        _MEMORY[key] = found
        return found
    t0 = time.perf_counter()
    verdict = _derive(model, side)
    verdict.seconds = round(time.perf_counter() - t0, 3)
    _MEMORY[key] = verdict
    with contextlib.suppress(OSError):
        atomic_write_json(path, asdict(verdict))
    return verdict
