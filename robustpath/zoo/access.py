"""RobustBench access: the zoo registry, architectures compared without weights,
verified checkpoint files and loading (see :mod:`robustpath.zoo`)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import hashlib
import os
import socket
import sys
import warnings
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from robustpath.cli import split_list
from robustpath.errors import UserError
from robustpath.io.store import sha256_file
from robustpath.zoo import arch

DEFAULT_MODEL_DIR = os.environ.get("ROBUSTPATH_MODEL_DIR", "models")
THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}
NORM_OF_THREAT = {"Linf": "linf", "L2": "l2"}


# ---------------------------------------------------------------- robustbench access
def _rb():
    """robustbench's registry, enums and utils (imported through the compat shim)."""
    from robustpath.zoo.rbcompat import import_robustbench

    import_robustbench()
    from robustbench import utils
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.model_zoo.models import model_dicts

    return model_dicts, BenchmarkDataset, ThreatModel, utils


def parse_dataset(name: str) -> str:
    """RobustBench's dataset name (``cifar10``, ``cifar100``, ``imagenet``)."""
    _, BenchmarkDataset, _, _ = _rb()
    known = [d.value for d in BenchmarkDataset]
    key = str(name).lower().replace("-", "")
    if key not in known:
        raise UserError(f"unknown zoo dataset {name!r} (known: {', '.join(known)})")
    return key


def parse_threat(name: str) -> str:
    """RobustBench's threat model name (``Linf``, ``L2``, ``corruptions``)."""
    key = THREATS.get(str(name).lower())
    if key is None:
        raise UserError(f"unknown threat model {name!r} (known: Linf, L2, corruptions)")
    return key


def registry(dataset: str, threat: str) -> OrderedDict:
    """RobustBench's registry ``{name: {"model": constructor, "gdrive_id": ...}}`` for
    ``dataset`` / ``threat`` - the same dict its ``load_model`` reads."""
    model_dicts, BenchmarkDataset, ThreatModel, _ = _rb()
    by_threat = model_dicts[BenchmarkDataset(parse_dataset(dataset))]
    threat_model = ThreatModel(parse_threat(threat))
    if threat_model not in by_threat:  # e.g. RobustBench has no ImageNet L2 models
        known = ", ".join(t.value for t in by_threat)
        raise UserError(f"RobustBench has no {parse_dataset(dataset)} {threat_model.value} models "
                        f"(threat models there: {known})")
    return by_threat[threat_model]


def _entry(name: str, dataset: str, threat: str) -> dict:
    reg = registry(dataset, threat)
    if name not in reg:
        close = difflib.get_close_matches(name, list(reg), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            " (see python -m robustpath.zoo list)"
        raise UserError(f"{name!r} is not in RobustBench's {dataset} {threat} zoo{hint}")
    return reg[name]


# ---------------------------------------------------------------- architectures
def architecture_signature(model: nn.Module) -> str:
    """Hash of the class name and every parameter's / buffer's name, shape and dtype."""
    items = [type(model).__name__]
    for kind, named in (("p", model.named_parameters()), ("b", model.named_buffers())):
        items += [f"{kind}:{n}:{tuple(t.shape)}:{t.dtype}" for n, t in named]
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:12]


def input_normalisation(model: nn.Module) -> str:
    """Where a zoo model normalises its [0, 1] inputs (informational)."""
    for attr in ("mean", "mu"):
        if isinstance(getattr(model, attr, None), torch.Tensor):
            return "inside the model (mean/std)"
    for name, m in model.named_modules():
        cls = type(m).__name__.lower()
        leaf = name.split(".")[-1]
        if "normaliz" in cls or "normalis" in cls or leaf in ("normalize", "norm_layer"):
            return f"inside the model ({type(m).__name__})"
    return "none in the model (it expects raw [0, 1] pixels)"


class ZooEntry:
    """One registry entry: ``name``, ``arch`` (class name), ``signature`` (see
    :func:`architecture_signature`), ``params``, ``normalisation``; ``note`` says why an
    entry cannot be used (ensemble, timm hub model, not buildable offline);
    ``alignment``: an :class:`.arch.Alignability` once :func:`list_entries` computed it."""

    def __init__(self, name, arch, signature, params, normalisation, note=""):
        self.name, self.arch, self.signature = name, arch, signature
        self.params, self.normalisation, self.note = params, normalisation, note
        self.alignment = None  # an arch.Alignability once list_entries computed it
        self.stand_in = ""  # the timm model read instead of an unregistered one

    @property
    def supported(self) -> bool:
        return not self.note

    @property
    def group(self) -> str:
        if not self.supported:
            return "not usable here"
        return f"{self.arch} ({self.params / 1e6:.1f}M parameters, signature {self.signature})"

    def to_dict(self) -> dict:
        out = {"name": self.name, "arch": self.arch, "signature": self.signature,
               "params": self.params, "normalisation": self.normalisation, "note": self.note}
        if self.alignment is not None:
            out["alignment"] = asdict(self.alignment)
        return out


@functools.cache
def _build(name: str, dataset: str, threat: str, ctor_id: int):
    """``(ZooEntry, model or None, build error)``; the model from :func:`.arch.build`
    (offline, parameters on meta)."""
    entry = _entry(name, dataset, threat)
    gid = entry.get("gdrive_id")
    if isinstance(gid, (list, tuple)):
        return ZooEntry(name, "?", "", 0, "?", "ensemble of several networks"), None, \
            "an ensemble of several networks, not one network to permute"
    # timm hub entries (gdrive_id None) load through timm's own download, and ImageNet's
    # Standard_R50 (gdrive_id "") through torchvision's: listed, not usable here
    note = "timm hub model (no checkpoint file)" if gid is None else \
        "torchvision's pretrained weights (no checkpoint file)" if gid == "" else ""
    stand_in = ""
    try:
        model = arch.build(entry["model"])
    except Exception as e:  # noqa: BLE001  (third-party constructors raise anything)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = f"{type(e).__name__}: {msg}"[:200]
        model, stand_in = arch.registered_stand_in(msg)
        if model is None:
            return ZooEntry(name, "?", "", 0, "?", note or f"architecture not buildable "
                            f"offline without weights ({why})"), None, \
                f"RobustBench's constructor fails offline without weights ({why})"
        note = f"{note or 'not loadable'}; its registry constructor fails ({msg}), " \
            f"architecture read from timm's {stand_in}"
    e = ZooEntry(name, type(model).__name__, architecture_signature(model),
                 sum(p.numel() for p in model.parameters()), input_normalisation(model), note)
    e.stand_in = stand_in
    return e, model, None


def describe(name: str, dataset: str = "cifar10", threat: str = "Linf") -> ZooEntry:
    """Architecture facts of zoo entry ``name``, from its constructor run offline without
    weights (parameters on the meta device, :func:`.arch.build`)."""
    dataset, threat = parse_dataset(dataset), parse_threat(threat)
    entry = _entry(name, dataset, threat)
    return _build(name, dataset, threat, id(entry.get("model")))[0]


def alignability(name: str, dataset: str = "cifar10", threat: str = "Linf") -> arch.Alignability:
    """Whether robustpath can align zoo entry ``name``: its permutation spec
    (``partial=True``) derived from the architecture alone (:func:`.arch.alignability`;
    cached per architecture signature and input size)."""
    dataset, threat = parse_dataset(dataset), parse_threat(threat)
    entry = _entry(name, dataset, threat)
    e, model, error = _build(name, dataset, threat, id(entry.get("model")))
    if model is None:
        return arch.Alignability("refused", detail=error)
    side = arch.input_size(dataset, entry.get("preprocessing"))
    verdict = arch.alignability(model, e.signature, side)
    if e.stand_in:  # a copy: the cached verdict belongs to the architecture
        verdict = dataclasses.replace(verdict, detail=f"(architecture of timm's {e.stand_in}) "
                                      + verdict.detail)
    return verdict


def list_entries(dataset: str = "cifar10", threat: str = "Linf",
                 names: list[str] | None = None,
                 align: bool = False) -> dict[str, list[ZooEntry]]:
    """Zoo entries grouped by architecture: ``{group label: [entries]}``, largest groups
    first; entries that cannot be loaded as one network last. ``align``: also set each
    entry's ``alignment`` (:func:`alignability`)."""
    groups: dict[str, list[ZooEntry]] = {}
    for name in names if names is not None else list(registry(dataset, threat)):
        e = copy.copy(describe(name, dataset, threat))  # describe's entries are cached
        if align:
            e.alignment = alignability(name, dataset, threat)
        groups.setdefault(e.group, []).append(e)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] == "not usable here", -len(kv[1]),
                                                       kv[0])))


def check_pair(a: ZooEntry, b: ZooEntry) -> None:
    """Raise :class:`UserError` unless a path can join ``a`` and ``b``."""
    for e in (a, b):
        if not e.supported:
            raise UserError(f"{e.name} cannot be used: {e.note}")
    if (a.arch, a.signature) != (b.arch, b.signature):
        raise UserError(f"{a.name} ({a.arch}, {a.params / 1e6:.1f}M) and {b.name} ({b.arch}, "
                        f"{b.params / 1e6:.1f}M) have different architectures; a path needs two "
                        "models of the same architecture (see python -m robustpath.zoo list)")


# ---------------------------------------------------------------- checkpoints
def checkpoint_path(model_dir: str | Path, dataset: str, threat: str, name: str) -> Path:
    """``<model_dir>/<dataset>/<threat>/<name>.pt``: where RobustBench keeps ``name``."""
    return Path(model_dir) / parse_dataset(dataset) / parse_threat(threat) / f"{name}.pt"


@functools.lru_cache(maxsize=1)
def _network_available() -> bool:
    try:
        with socket.create_connection(("drive.google.com", 443), timeout=3):
            return True
    except OSError:
        return False


def offline() -> bool:
    """True when ``ROBUSTPATH_OFFLINE`` is set (1/true/yes) or Google Drive is unreachable."""
    if os.environ.get("ROBUSTPATH_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return True
    return not _network_available()


#: a checkpoint file's sha256 (the store's streaming hash)
file_sha256 = sha256_file


@contextlib.contextmanager
def _torch_load_policy(trust: bool):
    """Make every ``torch.load`` inside (RobustBench's ``load_model`` calls it without
    ``weights_only``) pass ``weights_only=not trust`` explicitly, and set torch's
    environment overrides to agree: an explicit ``weights_only=True`` is the only form
    that ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the user's environment cannot turn
    into full unpickling (issue 25 S3). Restored on exit."""
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    old_env = {n: os.environ.get(n) for n in names}
    original = torch.load

    @functools.wraps(original)
    def load(*args, **kwargs):
        kwargs["weights_only"] = not trust
        return original(*args, **kwargs)

    os.environ.pop(names[not trust], None)  # both set makes torch refuse any load
    os.environ[names[trust]] = "1"
    torch.load = load
    try:
        yield
    finally:
        torch.load = original
        for n, v in old_env.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def sniff_checkpoint(path: str | Path) -> None:
    """Refuse, in one line, a file that cannot be a torch checkpoint - an HTML page (a
    failed Google Drive download), an empty file, a truncated zip archive - before
    anything unpickles it, so no advice about trusting pickles is ever given for it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    if size == 0:
        raise UserError(f"{path} is empty, not a checkpoint; delete it and download it again")
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body", b"<")):
        raise UserError(f"{path} is an HTML page, not a checkpoint (a failed Google Drive "
                        "download?); delete it and download it again")
    if head.startswith(b"PK\x03\x04"):  # torch's zip format: the index sits at the end
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            raise UserError(f"{path} is a truncated or damaged checkpoint ({size} bytes); "
                            "delete it and download it again") from None
    elif not head.startswith(b"\x80"):  # neither zip nor a pickle (legacy torch.save)
        raise UserError(f"{path} is not a torch checkpoint (starts with {head[:12]!r}); delete "
                        "it and download it again")


def parse_expect_sha256(text: str | None) -> dict[str, str]:
    """``NAME=HEX[,NAME=HEX]`` or the path of a sha256sum-style file -> ``{name: hex}``."""
    if not text:
        return {}
    lines = []
    if "=" not in text and Path(text).is_file():
        for line in Path(text).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                lines.append((Path(parts[1].lstrip("*")).stem, parts[0]))
    else:
        for item in split_list(text):
            name, _, digest = item.partition("=")
            lines.append((name, digest))
    out = {}
    for name, digest in lines:
        digest = digest.strip().lower()
        if not name or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise UserError(f"--expect-sha256 needs NAME=<64 hex digits> or a sha256sum file, "
                            f"got {text!r}")
        out[name] = digest
    return out


def check_sha256(path: str | Path, expected: str | None) -> str:
    """The file's sha256; a one-line UserError when ``expected`` is given and differs."""
    digest = file_sha256(path)
    if expected and digest != expected.strip().lower():
        raise UserError(f"{path} has sha256 {digest[:16]}..., expected {expected[:16]}... "
                        "(--expect-sha256); a different or damaged file")
    return digest


def _load_error(e: Exception, name: str, path: Path) -> UserError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "invalid load key" in msg:
        return UserError(f"{path} is not a torch checkpoint (an HTML page from a failed Google "
                         "Drive download?); delete it and download it again")
    if "Weights only load failed" in str(e) or "weights_only" in str(e):
        return UserError(f"{path} holds pickled objects besides tensors; if you trust the file, "
                         "rerun with --trust-checkpoints")
    if "state_dict" in msg or "size mismatch" in str(e):
        return UserError(f"{path} does not fit the architecture of {name}: {msg[:200]}")
    return UserError(f"cannot load {name} from {path} ({type(e).__name__}: {msg[:200]})")


def load(name: str, model_dir: str | Path = DEFAULT_MODEL_DIR, dataset: str = "cifar10",
         threat: str = "Linf", *, download: bool = True,
         trust_checkpoint: bool = False) -> nn.Module:
    """Load zoo model ``name`` in eval mode on the CPU through RobustBench's ``load_model``.

    Reads ``<model_dir>/<dataset>/<threat>/<name>.pt``. When it is missing, it is
    downloaded only if ``download`` is true, ``ROBUSTPATH_OFFLINE`` is unset and the
    network is reachable; otherwise a :class:`UserError` names the expected path.
    ``trust_checkpoint`` allows full unpickling (``torch.load(weights_only=False)``) for
    checkpoints that hold more than tensors - only for files you trust.
    """
    dataset, threat = parse_dataset(dataset), parse_threat(threat)
    entry = describe(name, dataset, threat)
    if not entry.supported:
        raise UserError(f"{name} cannot be used: {entry.note}")
    path = checkpoint_path(model_dir, dataset, threat, name)
    _, _, _, utils = _rb()
    if not path.is_file():
        if not download or offline():
            raise UserError(f"checkpoint of {name} not found: expected {path} (offline: put "
                            "RobustBench's file there, or run with a network to download it)")
        _download(utils, name, dataset, threat, path)
    sniff_checkpoint(path)  # HTML / empty / truncated named as such, before any unpickling
    error = None
    try:
        with warnings.catch_warnings(), \
                _torch_load_policy(trust_checkpoint):
            warnings.simplefilter("ignore")
            model = utils.load_model(name, model_dir=str(model_dir), dataset=dataset,
                                     threat_model=threat)
    except Exception as e:  # noqa: BLE001  (unpickling and state-dict loading raise anything)
        error = _load_error(e, name, path)
    if error is not None:
        raise error
    model = model.float().eval()
    model.robustpath_zoo = {"name": name, "dataset": dataset, "threat": threat}
    return model


def _download(utils, name: str, dataset: str, threat: str, path: Path) -> None:
    """RobustBench's own Google Drive download of ``name`` to ``path``; a failed or
    partial download is removed so it is never read as a checkpoint."""
    gdrive_id = _entry(name, dataset, threat)["gdrive_id"]
    print(f"downloading {name} to {path}", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    error = None
    try:
        utils.download_gdrive_new(gdrive_id, str(path))
    except Exception as e:  # noqa: BLE001  (network errors come in many types)
        error = UserError(f"download of {name} failed ({type(e).__name__}); put RobustBench's "
                          f"checkpoint at {path}")
    if error is None and not path.is_file():
        error = UserError(f"download of {name} produced no file; put RobustBench's checkpoint "
                          f"at {path}")
    if error is not None:
        with contextlib.suppress(OSError):
            path.unlink()
        raise error


def fresh(name: str, dataset: str = "cifar10", threat: str = "Linf") -> nn.Module:
    """A new instance of ``name``'s architecture (random weights, CPU, eval mode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _entry(name, parse_dataset(dataset), parse_threat(threat))["model"]().float().eval()


