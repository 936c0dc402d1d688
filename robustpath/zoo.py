"""``python -m robustpath.zoo``: paths between published robust models of RobustBench.

RobustBench's model zoo holds many models of one architecture trained by different
groups (CIFAR-10 L-inf: ResNet-18s, PreActResNet-18s, many WideResNet-28-10s). This
module loads them and measures the robust loss barrier between every pair of the same
architecture, before and after neuron alignment.

Loading (:func:`load`) goes through RobustBench's own ``load_model``, which reads
``<model_dir>/<dataset>/<threat>/<name>.pt`` (e.g. ``models/cifar10/Linf/
Sehwag2021Proxy_R18.pt``) and only downloads a missing file. robustpath checks the file
first: a missing checkpoint with ``ROBUSTPATH_OFFLINE=1`` or no network is one clear
error naming the expected path, and RobustBench never tries to download. RobustBench
1.1.1's packaging quirks are handled by :mod:`robustpath.rbcompat`. Every zoo model
takes pixels in [0, 1]: normalisation, where a model has one, is inside it (mean/std
buffers or a wrapper); the others were trained on raw pixels (:func:`describe`).

Architectures (:func:`list_entries`) are compared without weights: every registry
entry's constructor is run on PyTorch's ``meta`` device (no memory, no download) and
its class name plus the names and shapes of all parameters and buffers are hashed.
Two models can be joined by a path only when both agree.

Subcommands: ``list`` (zoo entries grouped by architecture, marking the checkpoints
present in ``--model-dir``) and ``compare`` (every same-architecture pair: align,
evaluate the paths, barrier matrix, optional AutoAttack and transfer checks). Stages
are cached under ``<out>/ckpt/`` by a hash of their configuration and inputs (the
checkpoint files' SHA-256), so a rerun computes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import hashlib
import io
import json
import os
import shlex
import socket
import sys
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .attacks import ATTACKS, AttackConfig, build_attack
from .cli import ArgumentParser, HelpFormatter, split_list
from .config import MATCH_METHODS as ALIGN_METHODS  # zoo runs one-shot matchers, not PAM
from .device import resolve
from .errors import UserError, cli_main
from .evaluate import PathResult
from .numbers import parse_fraction
from .plots import LABEL
from .records import PathRecord
from .records import write as write_records
from .store import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    checkpoint_exists,
    config_hash,
    load_checkpoint,
    provenance,
    save_checkpoint,
)
from .style import format_eps

DEFAULT_MODEL_DIR = os.environ.get("ROBUSTPATH_MODEL_DIR", "models")
THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}
NORM_OF_THREAT = {"Linf": "linf", "L2": "l2"}
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}


# ---------------------------------------------------------------- robustbench access
def _rb():
    """robustbench's registry, enums and utils (imported through the compat shim)."""
    from .rbcompat import import_robustbench

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
    return model_dicts[BenchmarkDataset(parse_dataset(dataset))][ThreatModel(parse_threat(threat))]


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
    entry cannot be used (ensemble, timm hub model, not inspectable)."""

    def __init__(self, name, arch, signature, params, normalisation, note=""):
        self.name, self.arch, self.signature = name, arch, signature
        self.params, self.normalisation, self.note = params, normalisation, note

    @property
    def supported(self) -> bool:
        return not self.note

    @property
    def group(self) -> str:
        if not self.supported:
            return "not usable here"
        return f"{self.arch} ({self.params / 1e6:.1f}M parameters, signature {self.signature})"

    def to_dict(self) -> dict:
        return {"name": self.name, "arch": self.arch, "signature": self.signature,
                "params": self.params, "normalisation": self.normalisation, "note": self.note}


@functools.cache
def _describe(name: str, dataset: str, threat: str, ctor_id: int) -> ZooEntry:
    entry = _entry(name, dataset, threat)
    gid = entry.get("gdrive_id")
    if gid is None or "model" not in entry:
        # the zoo's transformers are XCiT (cross-covariance attention, heads split inline):
        # robustpath.align has no rule for it; partial=True aligns its MLPs and patch convs
        xcit = "; XCiT attention not alignable (partial=True: MLP and patch-embedding units)" \
            if "XCiT" in name else ""
        return ZooEntry(name, "?", "", 0, "?", f"timm hub model (no checkpoint file){xcit}")
    if isinstance(gid, (list, tuple)):
        return ZooEntry(name, "?", "", 0, "?", "ensemble of several networks")
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = entry["model"]()
    except Exception as e:  # noqa: BLE001  (third-party constructors raise anything)
        return ZooEntry(name, "?", "", 0, "?",
                        f"architecture not inspectable without weights ({type(e).__name__})")
    return ZooEntry(name, type(model).__name__, architecture_signature(model),
                    sum(p.numel() for p in model.parameters()), input_normalisation(model))


def describe(name: str, dataset: str = "cifar10", threat: str = "Linf") -> ZooEntry:
    """Architecture facts of zoo entry ``name``, from its constructor on the meta device."""
    dataset, threat = parse_dataset(dataset), parse_threat(threat)
    entry = _entry(name, dataset, threat)
    return _describe(name, dataset, threat, id(entry.get("model")))


def list_entries(dataset: str = "cifar10", threat: str = "Linf",
                 names: list[str] | None = None) -> dict[str, list[ZooEntry]]:
    """Zoo entries grouped by architecture: ``{group label: [entries]}``, largest groups
    first; entries that cannot be loaded as one network last."""
    groups: dict[str, list[ZooEntry]] = {}
    for name in names if names is not None else list(registry(dataset, threat)):
        e = describe(name, dataset, threat)
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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


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
                _env("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1" if trust_checkpoint else None):
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


# ---------------------------------------------------------------- compare: configuration
@dataclass
class CompareConfig:
    """Resolved settings of ``python -m robustpath.zoo compare`` (written to config.json).

    ``pairs``: explicit model pairs (default: every same-architecture pair of
    ``models``). Attacks: ``attack`` with ``steps`` evaluates the paths; PGD with
    ``train_steps`` makes adversarial inputs for BatchNorm recomputation, activation
    matching on ``adv`` inputs and curve fitting; the strong stage (standard AutoAttack and
    many-restart PGD, :mod:`robustpath.strong`) runs at the endpoints, the worst t and
    ``strong_t``. t = 0 and t = 1 are the published models with their own BatchNorm
    statistics unless ``bn_endpoints``.
    """

    models: list[str] = field(default_factory=list)
    model_dir: str = DEFAULT_MODEL_DIR
    dataset: str = "cifar10"
    threat: str = "Linf"
    data_root: str | None = None
    pairs: list[list[str]] | None = None
    align: list[str] = field(default_factory=lambda: ["none", "weight"])
    align_inputs: str = "clean"
    align_samples: int = 2000
    paths: list[str] = field(default_factory=lambda: ["line"])
    bends: int = 1
    attack: str = "pgd"
    eps: float | None = None
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    train_steps: int = 5
    t_points: int = 11
    test_subset: int = 200
    train_subset: int = 10000
    bn_inputs: str = "adv"
    bn_batches: int = 10
    batch_size: int = 128
    curve_epochs: int = 4
    curve_lr: float = 0.015
    refine_rounds: int = 2
    bn_endpoints: bool = False   # recompute BN at t = 0, 1 too (default: published statistics)
    strong: bool = True
    strong_examples: int = 200
    aa_version: str = "standard"
    aa_attacks: list[str] | None = None
    strong_pgd_steps: int = 50
    strong_pgd_restarts: int = 10
    strong_t: list[float] = field(default_factory=list)
    transfer: bool = True
    bootstrap: int = 1000
    trust_checkpoints: bool = False
    expect_sha256: dict = field(default_factory=dict)  # model name -> sha256 of its .pt
    device: str = "auto"
    out: str = ""

    @property
    def norm(self) -> str:
        return NORM_OF_THREAT[self.threat]

    def train_attack(self, seed: int | None = None) -> AttackConfig:
        return AttackConfig(name="pgd", norm=self.norm, eps=self.eps, steps=self.train_steps,
                            step_size=self.step_size, seed=seed)

    def eval_attack(self) -> AttackConfig:
        return AttackConfig(name=self.attack, norm=self.norm, eps=self.eps, steps=self.steps,
                            step_size=self.step_size, restarts=self.restarts, seed=0)

    def strong_settings(self):
        """The shared strong stage's settings (:class:`robustpath.strong.StrongSettings`)."""
        from .strong import StrongSettings

        return StrongSettings(examples=self.strong_examples, aa_version=self.aa_version,
                              aa_attacks=self.aa_attacks, pgd_steps=self.strong_pgd_steps,
                              pgd_restarts=self.strong_pgd_restarts, seed=0,
                              extra_t=list(self.strong_t)).validate()

    def validate(self) -> CompareConfig:
        from . import curves
        from . import data as data_mod

        self.dataset, self.threat = parse_dataset(self.dataset), parse_threat(self.threat)
        if self.dataset not in data_mod.DATASETS:
            raise UserError(f"compare needs test data robustpath can load; {self.dataset} is not "
                            f"one of {', '.join(data_mod.DATASETS.names())}")
        if self.threat not in NORM_OF_THREAT:
            raise UserError(f"compare supports the Linf and L2 threat models, not {self.threat}")
        if self.eps is None:
            self.eps = DEFAULT_EPS[self.threat]
        self.eps = parse_fraction(self.eps, name="--eps")
        if self.step_size is not None:
            self.step_size = parse_fraction(self.step_size, name="--step-size", allow_zero=False)
        if len(self.models) < 2 or len(set(self.models)) != len(self.models):
            raise UserError(f"--models needs at least two distinct names, got {self.models}")
        for a in self.align:
            if a not in ALIGN_METHODS:
                raise UserError(f"unknown alignment method {a!r} "
                                f"(known: {', '.join(ALIGN_METHODS)})")
        for p in self.paths:
            curves.CURVES.get(p)
        if not self.align or not self.paths:
            raise UserError("--align and --paths need at least one value each")
        for flag, value in (("--align-inputs", self.align_inputs), ("--bn-inputs", self.bn_inputs)):
            if value not in ("clean", "adv"):
                raise UserError(f"{flag} must be clean or adv, got {value!r}")
        if self.strong:
            self.strong_settings()
        ATTACKS.get(self.attack)
        if self.refine_rounds < 0:
            raise UserError(f"--refine-rounds must be >= 0, got {self.refine_rounds}")
        for name in ("steps", "restarts", "train_steps", "bn_batches",
                     "batch_size", "curve_epochs", "bootstrap", "bends", "align_samples"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, "
                                f"got {getattr(self, name)}")
        if self.t_points < 2:
            raise UserError(f"--t-points must be >= 2, got {self.t_points}")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0 (0 = all)")
        for t in self.strong_t:
            if not 0.0 <= float(t) <= 1.0:
                raise UserError(f"--strong-t values must lie in [0, 1], got {t}")
        self.eval_attack().validate()
        self.train_attack().validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def add_compare_arguments(q: argparse.ArgumentParser) -> None:
    a = q.add_argument
    a("--models", required=True, help="zoo names, comma-separated (at least two)")
    a("--pairs", default=None, help="explicit pairs A:B,C:D (default: every same-architecture "
      "pair of --models; a pair of different architectures is an error)")
    a("--data-root", default=None, help="folder with cifar-10-batches-py / cifar-100-python "
      "(default ./data or env ROBUSTPATH_DATA)")
    a("--align", default="none,weight",
      help=f"alignment methods, comma-separated: {', '.join(ALIGN_METHODS)}")
    a("--align-inputs", default="clean", help="activation matching on clean or adv inputs")
    a("--align-samples", type=int, default=2000,
      help="training examples for activation matching")
    a("--paths", default="line", help="path families, comma-separated: line, bezier, polychain "
      "(bezier/polychain are fitted with PGD in the loop)")
    a("--bends", type=int, default=1, help="control points of bezier/polychain")
    a("--attack", default="pgd", help="attack evaluated along the paths (see robustpath.attacks)")
    a("--eps", default=None, help="attack radius in pixels, e.g. 8/255 (default 8/255 for Linf, "
      "0.5 for L2)")
    a("--steps", type=int, default=10, help="attack steps along the paths")
    a("--step-size", default=None, help="PGD step size (default eps/4)")
    a("--restarts", type=int, default=1, help="attack restarts along the paths")
    a("--train-steps", type=int, default=5, help="PGD steps for BN recomputation on adv inputs, "
      "adv activation matching and curve fitting")
    a("--t-points", type=int, default=11, help="evenly spaced t in [0, 1]")
    a("--test-subset", type=int, default=200, help="test examples (seeded subset; 0 = all)")
    a("--train-subset", type=int, default=10000, help="training examples for BN recomputation, "
      "alignment and curve fitting (0 = all)")
    a("--bn-inputs", default="adv", help="BatchNorm recomputed at each t on clean or adv inputs")
    a("--bn-batches", type=int, default=10, help="training batches for BN recomputation")
    a("--batch-size", type=int, default=128, help="batch size for BN recomputation and fitting")
    a("--curve-epochs", type=int, default=4, help="epochs of curve fitting (bezier/polychain)")
    a("--curve-lr", default="0.015", help="learning rate of curve fitting")
    a("--refine-rounds", type=int, default=2, help="bisection rounds around each path's lowest "
      "robust accuracy after the grid (2 extra t per round; 0 = off)")
    a("--bn-endpoints", action="store_true", help="recompute BatchNorm at t = 0 and t = 1 too "
      "(default: the published models with their own statistics)")
    a("--strong-examples", type=int, default=200, help="test examples (a seeded subset) attacked "
      "by the strong stage: standard AutoAttack and many-restart PGD at both endpoints and "
      "each path's worst t")
    a("--aa-version", default="standard", help="AutoAttack version (Croce & Hein's code): "
      "standard, plus, rand, custom")
    a("--aa-attacks", default=None, help="with --aa-version custom: sub-attacks from apgd-ce, "
      "apgd-dlr, apgd-t, fab, fab-t, square")
    a("--strong-pgd-steps", type=int, default=50, help="steps of the strong stage's PGD")
    a("--strong-pgd-restarts", type=int, default=10, help="restarts of the strong stage's PGD")
    a("--strong-t", default="", help="extra t for the strong stage, comma-separated (always: "
      "0, 1 and the t of the lowest PGD robust accuracy)")
    a("--no-strong", action="store_true", help="skip the strong stage")
    a("--no-transfer", action="store_true", help="skip the transfer check along the whole path "
      "(the evaluation attack's examples made against each endpoint, evaluated at every t; "
      "flagged by a McNemar test against the direct attack)")
    a("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    a("--trust-checkpoints", action="store_true", help="allow full unpickling of checkpoints "
      "that hold more than tensors (only for files you trust)")
    a("--expect-sha256", default=None, help="pin checkpoints: NAME=SHA256[,NAME=SHA256...] or "
      "a sha256sum-style file (SHA256  NAME.pt per line); a mismatch stops the run")
    a("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    a("--out", default=None, help="run folder (default results/zoo-<dataset>-<threat>)")
    a("--overwrite", action="store_true",
      help="allow --out to hold a comparison with a different configuration")
    a("--no-progress", action="store_true", help="hide progress bars")


def config_from_args(args) -> CompareConfig:
    pairs = None
    if args.pairs:
        pairs = []
        for item in split_list(args.pairs):
            parts = item.split(":")
            if len(parts) != 2 or not all(parts):
                raise UserError(f"--pairs items look like A:B, got {item!r}")
            pairs.append(parts)
    try:
        strong_t = [float(t) for t in split_list(args.strong_t)]
    except ValueError:
        raise UserError(f"--strong-t must be numbers in [0, 1], got {args.strong_t!r}") from None
    cfg = CompareConfig(
        models=split_list(args.models), model_dir=args.model_dir, dataset=args.dataset,
        threat=args.threat, data_root=args.data_root, pairs=pairs, align=split_list(args.align),
        align_inputs=args.align_inputs, align_samples=args.align_samples, paths=split_list(args.paths),
        bends=args.bends, attack=args.attack, eps=args.eps, steps=args.steps,
        step_size=args.step_size, restarts=args.restarts, train_steps=args.train_steps,
        t_points=args.t_points, test_subset=args.test_subset, train_subset=args.train_subset,
        bn_inputs=args.bn_inputs, bn_batches=args.bn_batches, batch_size=args.batch_size,
        curve_epochs=args.curve_epochs,
        curve_lr=parse_fraction(args.curve_lr, name="--curve-lr", allow_zero=False),
        refine_rounds=args.refine_rounds, bn_endpoints=args.bn_endpoints,
        strong=not args.no_strong, strong_examples=args.strong_examples,
        aa_version=args.aa_version,
        aa_attacks=split_list(args.aa_attacks) if args.aa_attacks else None,
        strong_pgd_steps=args.strong_pgd_steps, strong_pgd_restarts=args.strong_pgd_restarts,
        strong_t=strong_t, transfer=not args.no_transfer, bootstrap=args.bootstrap,
        trust_checkpoints=args.trust_checkpoints,
        expect_sha256=parse_expect_sha256(args.expect_sha256), device=args.device,
        out=args.out or "")
    cfg.validate()
    cfg.out = cfg.out or f"results/zoo-{cfg.dataset}-{cfg.threat}"
    return cfg


def resolve_pairs(cfg: CompareConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(pairs, skipped)``: the pairs to compare, and the different-architecture pairs of
    ``models`` left out. Explicit ``cfg.pairs`` and a two-model list must match."""
    entries = {m: describe(m, cfg.dataset, cfg.threat) for m in cfg.models}
    if cfg.pairs is not None:
        for a, b in cfg.pairs:
            for m in (a, b):
                if m not in entries:
                    raise UserError(f"--pairs names {m!r}, which is not in --models")
            if a == b:
                raise UserError(f"--pairs joins {a} with itself")
            check_pair(entries[a], entries[b])
        return [tuple(p) for p in cfg.pairs], []
    if len(cfg.models) == 2:
        check_pair(entries[cfg.models[0]], entries[cfg.models[1]])
    pairs, skipped = [], []
    for i, a in enumerate(cfg.models):
        for b in cfg.models[i + 1:]:
            try:
                check_pair(entries[a], entries[b])
                pairs.append((a, b))
            except UserError:
                skipped.append((a, b))
    if not pairs:
        raise UserError("no two of --models share an architecture "
                        "(see python -m robustpath.zoo list)")
    return pairs, skipped


# ---------------------------------------------------------------- compare: stages
class _SameBatches:
    """The same seeded training batches on every pass, so the network at a given t is
    prepared identically for the path evaluation, the strong attack and the transfer check."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.batches.set_epoch(0)
        return iter(self.batches)


class CompareRun:
    """The stages of one comparison; every output is cached under ``<out>/ckpt/``.
    Models and data are loaded only when a stage has to be computed."""

    def __init__(self, cfg: CompareConfig, device: torch.device, progress: bool = True):
        self.cfg, self.device, self.progress = cfg, device, progress
        self.dir = Path(cfg.out)
        self._models: dict[str, nn.Module] = {}
        self._keys: dict[str, str] = {}
        self._sha256: dict[str, str] = {}  # of each checkpoint used, recorded in models.json
        self._data = None

    # ---- inputs
    def data(self):
        if self._data is None:
            from . import data as data_mod

            c = self.cfg
            x_tr, y_tr = data_mod.load(c.dataset, train=True, root=c.data_root,
                                       subset=c.train_subset, seed=1234)
            x_te, y_te = data_mod.load(c.dataset, train=False, root=c.data_root,
                                       subset=c.test_subset, seed=4321)
            self._data = (x_tr, y_tr, x_te, y_te, data_mod.info(c.dataset).num_classes)
        return self._data

    def ensure_checkpoints(self, names: list[str]) -> None:
        """Fail (or download) before any work when a checkpoint file is missing."""
        for name in names:
            if not checkpoint_path(self.cfg.model_dir, self.cfg.dataset, self.cfg.threat,
                                   name).is_file():
                self.model(name)

    def model(self, name: str) -> nn.Module:
        if name not in self._models:
            self._models[name] = load(name, self.cfg.model_dir, self.cfg.dataset, self.cfg.threat,
                                      trust_checkpoint=self.cfg.trust_checkpoints)
        return self._models[name]

    def model_key(self, name: str) -> str:
        if name not in self._keys:
            path = checkpoint_path(self.cfg.model_dir, self.cfg.dataset, self.cfg.threat, name)
            digest = check_sha256(path, self.cfg.expect_sha256.get(name))
            self._sha256[name] = digest
            self._keys[name] = config_hash({"name": name, "sha256": digest})
        return self._keys[name]

    def bn_loader(self):
        from .data import Batches

        x_tr, y_tr, *_ = self.data()
        return _SameBatches(Batches(x_tr, y_tr, self.cfg.batch_size, shuffle=True, seed=0,
                                    device=self.device))

    def setup(self):
        from .strong import PointSetup

        num_classes = self.data()[4]
        return PointSetup(bn_loader=self.bn_loader(), bn_batches=self.cfg.bn_batches,
                          bn_inputs=self.cfg.bn_inputs,
                          bn_attack=build_attack(self.cfg.train_attack(seed=1), num_classes),
                          device=self.device, batch_size=500,
                          recompute_ends=self.cfg.bn_endpoints)

    def _path(self, stage: str, name: str) -> Path:
        return self.dir / "ckpt" / stage / name

    # ---- alignment
    def align_key(self, method: str, ka: str, kb: str) -> str:
        spec = {"method": method, "a": ka, "b": kb}
        if method == "activation":
            spec.update(inputs=self.cfg.align_inputs, samples=self.cfg.align_samples,
                        train_subset=self.cfg.train_subset)
            if self.cfg.align_inputs == "adv":
                spec["attack"] = self.cfg.train_attack().to_dict()
        return config_hash(spec)

    def align_report(self, method: str, key: str) -> dict:
        if method == "none":
            return {"method": "none"}
        try:
            return json.loads(self._path("align", f"{method}-{key}.json").read_text())["report"]
        except (OSError, ValueError, KeyError):
            return {}

    def aligned(self, method: str, a: str, b: str, key: str) -> nn.Module:
        """Model ``b`` aligned onto ``a`` (computed once, then read from its checkpoint)."""
        if method == "none":
            return self.model(b)
        path = self._path("align", f"{method}-{key}")
        if checkpoint_exists(path):
            tensors, _ = load_checkpoint(path)
            model = fresh(b, self.cfg.dataset, self.cfg.threat)
            model.load_state_dict(tensors)
            return model.eval()
        from .align import align
        from .data import Batches

        ma, mb = self.model(a).to(self.device), self.model(b).to(self.device)
        x_tr, y_tr, _, _, num_classes = self.data()
        example = x_tr[:2].to(self.device)
        if method == "activation":
            n = self.cfg.align_samples
            loader = Batches(x_tr[:n], y_tr[:n], 250, device=self.device)
            attack = (build_attack(self.cfg.train_attack(), num_classes)
                      if self.cfg.align_inputs == "adv" else None)
            aligned, _, report = align(ma, mb, method=method, data=loader,
                                       inputs=self.cfg.align_inputs, attack=attack,
                                       example_input=example)
        else:  # weight matching needs no data
            aligned, _, report = align(ma, mb, method=method, example_input=example)
        ma.cpu(), mb.cpu()
        aligned = aligned.cpu().eval()
        save_checkpoint(path, aligned.state_dict(),
                        {"report": report.to_dict(), "zoo": {"a": a, "b": b, "method": method}})
        return aligned

    # ---- curves and evaluation
    def curve_train_config(self):
        from .curve_train import CurveTrainConfig

        return CurveTrainConfig(epochs=self.cfg.curve_epochs, batch_size=self.cfg.batch_size,
                                lr=self.cfg.curve_lr, seed=0, attack=self.cfg.train_attack())

    def curve_key(self, kind: str, ka: str, akey: str) -> str:
        if kind == "line":
            return config_hash({"kind": kind, "a": ka, "b": akey})
        return config_hash({"kind": kind, "bends": self.cfg.bends, "a": ka, "b": akey,
                            "train": self.curve_train_config().cache_key(),
                            "train_subset": self.cfg.train_subset})

    def curve(self, kind: str, model_a: nn.Module, model_b: nn.Module, key: str):
        from .curve_train import train_curve
        from .curves import build_curve

        c = build_curve(kind, model_a, model_b, bends=self.cfg.bends).to(self.device)
        if any(p.requires_grad for p in c.parameters()):
            x_tr, y_tr, *_ = self.data()
            train_curve(c, x_tr, y_tr, self.curve_train_config(),
                        self._path("curves", f"{kind}-{key}"), device=self.device,
                        progress=self.progress)
        return c.eval()

    def eval_key(self, ckey: str) -> str:
        c = self.cfg
        return config_hash({"curve": ckey, "t_points": c.t_points, "bn_batches": c.bn_batches,
                            "bn_inputs": c.bn_inputs, "bn_attack": c.train_attack(seed=1).to_dict(),
                            "attack": c.eval_attack().to_dict(), "test_subset": c.test_subset,
                            "train_subset": c.train_subset, "batch_size": c.batch_size,
                            "refine_rounds": c.refine_rounds, "bn_endpoints": c.bn_endpoints})

    def eval_keys(self, pairs: list[tuple[str, str]]) -> list[str]:
        """The evaluation cache keys of every path of ``pairs``."""
        keys = []
        for a, b in pairs:
            ka, kb = self.model_key(a), self.model_key(b)
            for method in self.cfg.align:
                akey = self.align_key(method, ka, kb)
                keys += [self.eval_key(self.curve_key(kind, ka, akey)) for kind in self.cfg.paths]
        return keys

    def load_eval(self, key: str) -> PathResult | None:
        path = self._path("eval", f"{key}.npz")
        if path.is_file():
            try:
                with np.load(path) as z:
                    return PathResult.from_arrays({k: z[k] for k in z.files})
            except Exception:  # noqa: BLE001  (a damaged cache entry is recomputed)
                return None
        return None

    def evaluate(self, c, key: str, desc: str) -> PathResult:
        from .evaluate import curve_speed, evaluate_path, refine_minimum, t_grid

        _, _, x_te, y_te, num_classes = self.data()
        setup = self.setup()
        ts = t_grid(self.cfg.t_points)
        attack = build_attack(self.cfg.eval_attack(), num_classes)

        def measure(ts_, label):
            with torch.no_grad():
                sp = curve_speed(c.params_at, ts_)
            return evaluate_path(c.model_at, ts_, x_te, y_te, attack,
                                 bn_loader=setup.bn_loader, bn_batches=setup.bn_batches,
                                 bn_inputs=setup.bn_inputs, bn_attack=setup.bn_attack, speed=sp,
                                 device=self.device, progress=self.progress, desc=label,
                                 recompute_ends=self.cfg.bn_endpoints)

        res = measure(ts, desc)
        res = refine_minimum(res, lambda ts_: measure(ts_, f"{desc} (refine)"),
                             rounds=self.cfg.refine_rounds)
        buf = io.BytesIO()
        np.savez_compressed(buf, **res.to_arrays())
        atomic_write_bytes(self._path("eval", f"{key}.npz"), buf.getvalue())
        return res

    def cached_frame(self, stage: str, key: str) -> pd.DataFrame | None:
        """A table stored by :meth:`strong` / :meth:`transfer` (columns in order)."""
        try:
            d = json.loads(self._path(stage, f"{key}.json").read_text())
            return pd.DataFrame(d["data"], columns=d["columns"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def strong(self, model_at, res: PathResult, desc: str, ids: dict[str, str] | None = None,
               path_key: str | None = None):
        """The shared strong stage (:func:`robustpath.strong.strong_path`) on one path;
        points cached in ``ckpt/strong/<settings>/`` by network."""
        from .strong import strong_path

        _, _, x_te, y_te, num_classes = self.data()
        folder = self._path("strong", config_hash({
            "bn_batches": self.cfg.bn_batches, "bn_inputs": self.cfg.bn_inputs,
            "bn_attack": self.cfg.train_attack(seed=1).to_dict(),
            "test_subset": self.cfg.test_subset, "train_subset": self.cfg.train_subset,
            "batch_size": self.cfg.batch_size}))
        return strong_path(model_at, res, x_te, y_te, settings=self.cfg.strong_settings(),
                           eval_attack=self.cfg.eval_attack(), setup=self.setup(),
                           folder=folder, num_classes=num_classes, progress=self.progress,
                           desc=desc, endpoint_ids=ids, path_key=path_key)

    def transfer(self, c, res: PathResult, key: str, desc: str) -> pd.DataFrame:
        from .transfer import transfer_check

        _, _, x_te, y_te, num_classes = self.data()
        setup = self.setup()
        sources = {"a": setup.prepare(c.model_at, 0.0), "b": setup.prepare(c.model_at, 1.0)}
        frame, _ = transfer_check(c.model_at, res, x_te, y_te, sources,
                                  build_attack(self.cfg.eval_attack(), num_classes), setup,
                                  progress=self.progress, desc=desc)
        atomic_write_json(self._path("transfer", f"{key}.json"), frame.to_dict(orient="split"))
        return frame


# ---------------------------------------------------------------- compare: outputs
MATRIX_METRICS = ("robust_loss_barrier", "robust_acc_min", "robust_acc_ends", "clean_acc_min",
                  "clean_loss_barrier")


def barrier_matrix(records: list[PathRecord], models: list[str],
                   bootstrap: int = 1000) -> pd.DataFrame:
    """One row per evaluated path (model pair x alignment x path family) with the
    barrier metrics and their 95% bootstrap CIs (``_lo``, ``_hi``)."""
    from .barrier import path_metrics

    rows = []
    for r in records:
        m = path_metrics(r.result, bootstrap=bootstrap)
        row = {"model_a": models[r.seed_a], "model_b": models[r.seed_b], "index_a": r.seed_a,
               "index_b": r.seed_b, "align": r.align, "curve": r.curve}
        for k in MATRIX_METRICS:
            row[k], row[f"{k}_lo"], row[f"{k}_hi"] = m[k]["value"], m[k]["lo"], m[k]["hi"]
        rows.append(row)
    return pd.DataFrame(rows)


def plot_barrier_matrix(frame: pd.DataFrame, models: list[str], out_dir: str | Path,
                        title: str = "") -> list[Path]:
    """Heat maps (one PNG per path family): rows robust loss barrier / robust accuracy
    minimum (one colour scale per row), one column per alignment method; the matrix is
    symmetric; grey cells: pairs not compared (diagonal, different architectures)."""
    from matplotlib.colors import Normalize

    from .plots import _matplotlib

    plt = _matplotlib()
    n, written = len(models), []
    panels = (("robust_loss_barrier", "robust loss barrier", 1.0, "magma_r", "{:.2f}"),
              ("robust_acc_min", "robust acc. min (%)", 100.0, "viridis", "{:.1f}"))
    for curve, part in frame.groupby("curve", sort=True):
        aligns = [a for a in ALIGN_METHODS if a in set(part["align"])]
        size = 1.5 + 0.45 * n
        fig, axes = plt.subplots(2, len(aligns), figsize=(size * len(aligns) + 2.5, 2 * size + 2.5),
                                 squeeze=False, constrained_layout=True)
        for row, (metric, label, scale, cmap, fmt) in enumerate(panels):
            lo, hi = part[metric].min() * scale, part[metric].max() * scale
            tied = not hi > lo  # one value: a small symmetric range around it, one tick
            pad = 0.05 * max(abs(lo), 0.01 * scale) if tied else 0.0
            norm = Normalize(lo - pad, hi + pad)
            cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
            for col, align in enumerate(aligns):
                mat = np.full((n, n), np.nan)
                for _, r in part[part["align"] == align].iterrows():
                    i, j = int(r["index_a"]), int(r["index_b"])
                    mat[i, j] = mat[j, i] = r[metric] * scale
                ax = axes[row, col]
                im = ax.imshow(np.ma.masked_invalid(mat), cmap=cm, norm=norm)
                for i, j in zip(*np.nonzero(np.isfinite(mat))):
                    if n <= 12:
                        r_, g_, b_, _ = cm(norm(mat[i, j]))
                        dark = 0.299 * r_ + 0.587 * g_ + 0.114 * b_ < 0.5
                        ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center",
                                fontsize=7, color="w" if dark else "k")
                ax.set_xticks(range(n), models if row == 1 else [""] * n, rotation=60,
                              ha="right", fontsize=7)
                ax.set_yticks(range(n), models if col == 0 else [""] * n, fontsize=7)
                ax.set_title(f"{LABEL.get(align, align)}", fontsize=9)
            cb = fig.colorbar(im, ax=list(axes[row]), shrink=0.8, label=label)
            if tied:
                cb.set_ticks([lo], labels=[fmt.format(lo)])
        fig.suptitle(f"{title} ({curve} paths)" if title else f"{curve} paths", fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
        plt.close(fig)
        path = Path(out_dir) / f"barrier_matrix_{curve}.png"
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def _comparable(d: dict) -> dict:
    return {k: v for k, v in d.items()
            if k not in ("device", "out", "data_root", "model_dir", "trust_checkpoints")}


def _labelled(frame: pd.DataFrame, a: str, b: str, align: str, curve: str) -> pd.DataFrame:
    frame = frame.copy()
    for i, (k, v) in enumerate((("model_a", a), ("model_b", b), ("align", align),
                                ("curve", curve))):
        frame.insert(i, k, v)
    return frame


def run_compare(cfg: CompareConfig, *, progress: bool = True, overwrite: bool = False,
                command: str | None = None) -> Path:
    """Compare every pair of ``cfg``; returns the run folder. Nothing is written before
    the pairs, checkpoints and data have been checked."""
    from . import strong_io
    from .equivalence import check_same_function
    from .report import build_report, format_summary
    from .stages import check_writable, read_json
    from .transfer import write_transfer

    device = resolve(cfg.device)
    pairs, skipped = resolve_pairs(cfg)
    run = CompareRun(cfg, device, progress)
    used = [m for m in cfg.models if any(m in p for p in pairs)]
    run.ensure_checkpoints(used)
    if not all(run.load_eval(k) is not None for k in run.eval_keys(pairs)):
        run.data()  # missing data fails here, before anything is written
    check_writable(run.dir)
    entries = {m: describe(m, cfg.dataset, cfg.threat) for m in cfg.models}
    cfg_dict = dict(cfg.to_dict(), norm=cfg.norm,
                    arch="+".join(sorted({entries[m].arch for p in pairs for m in p})))
    old = read_json(run.dir / "config.json")
    if old and _comparable(old) != _comparable(cfg_dict) and not overwrite:
        raise UserError(f"{run.dir} holds a comparison with a different configuration; "
                        "use another --out or pass --overwrite")
    index = {m: i for i, m in enumerate(cfg.models)}
    records: list[PathRecord] = []
    strong_paths, transfer_frames, flagged, align_reports = {}, [], [], {}
    checks: dict[str, dict] = {}
    for a, b in pairs:
        ka, kb = run.model_key(a), run.model_key(b)
        for method in cfg.align:
            akey = run.align_key(method, ka, kb)
            cache: dict = {}

            def aligned_b(method=method, a=a, b=b, akey=akey, cache=cache):
                if "b" not in cache:
                    cache["b"] = run.aligned(method, a, b, akey)
                return cache["b"]

            for kind in cfg.paths:
                ckey = run.curve_key(kind, ka, akey)
                ekey = run.eval_key(ckey)
                desc = f"{method}/{kind} {a} vs {b}"
                held: dict = {}

                def curve(kind=kind, ckey=ckey, held=held, a=a, aligned_b=aligned_b):
                    if "c" not in held:
                        held["c"] = run.curve(kind, run.model(a), aligned_b(), ckey)
                    return held["c"]

                # the path's endpoints must be the loaded models, the aligned B must be B
                # (checked once per path and model files; a rerun reads the record)
                qpath = run._path("equivalence", f"{ekey}.json")
                check = read_json(qpath)
                if not (isinstance(check, dict) and {"aligned_b_vs_b", "t0_vs_a", "t1_vs_b"}
                        <= set(check)):
                    c0, x_chk = curve(), run.data()[2]
                    check = {
                        "aligned_b_vs_b": check_same_function(
                            run.model(b), aligned_b(), x_chk, what=f"{method} alignment of {b}"),
                        "t0_vs_a": check_same_function(
                            run.model(a), c0.model_at(0.0), x_chk, what=f"{desc} at t = 0"),
                        "t1_vs_b": check_same_function(
                            run.model(b), c0.model_at(1.0), x_chk, what=f"{desc} at t = 1")}
                    atomic_write_json(qpath, check)
                checks[f"{method}-{kind}:{a}:{b}"] = check
                res = run.load_eval(ekey)
                if res is None:
                    res = run.evaluate(curve(), ekey, f"eval {desc}")
                records.append(PathRecord(method, kind, index[a], index[b], res))
                if cfg.strong:
                    strong_paths[records[-1].path_id] = (
                        {"align": method, "curve": kind, "model_a": a, "model_b": b},
                        run.strong(lambda t, curve=curve: curve().model_at(t), res,
                                   f"strong {desc}", ids={"a": ka, "b": kb}, path_key=ekey))
                if cfg.transfer:
                    tkey = config_hash({"eval": ekey, "transfer": cfg.eval_attack().to_dict(),
                                        "test": "mcnemar"})
                    frame = run.cached_frame("transfer", tkey)
                    if frame is None:
                        frame = run.transfer(curve(), res, tkey, f"transfer {desc}")
                    if frame["stronger"].any():
                        ts_bad = ", ".join(f"{t:.2f}" for t in frame.loc[frame["stronger"], "t"])
                        flagged.append(f"{desc} (t = {ts_bad})")
                    transfer_frames.append(_labelled(frame, a, b, method, kind))
                held.clear()
            align_reports[f"{method}:{a}:{b}"] = run.align_report(method, akey)
            cache.clear()

    title = (f"{cfg.dataset} {cfg.threat} RobustBench zoo, {cfg.attack}-{cfg.steps} "
             f"eps={format_eps(cfg.eps)}")
    atomic_write_json(run.dir / "config.json", cfg_dict)
    atomic_write_json(run.dir / "provenance.json", provenance())
    atomic_write_text(run.dir / "command.txt", (command or "") + "\n")
    atomic_write_json(run.dir / "models.json", {
        str(index[m]): dict(entries[m].to_dict(), checkpoint=str(checkpoint_path(
            cfg.model_dir, cfg.dataset, cfg.threat, m)),
            key=run.model_key(m) if m in used else None,
            sha256=run._sha256.get(m) if m in used else None)
        for m in cfg.models})
    atomic_write_json(run.dir / "alignment.json", align_reports)
    atomic_write_json(run.dir / "equivalence.json", checks)
    write_records(run.dir, records)
    if strong_paths:  # before build_report: the summary table reads strong_examples.npz
        strong_io.write(run.dir, strong_paths, cfg=dict(cfg_dict, eval_steps=cfg.steps))
    summary = build_report(run.dir)
    for a, b in pairs if len(pairs) > 1 else []:  # one pair: the run folder is its report
        pdir = run.dir / "pairs" / f"{a}__{b}"
        atomic_write_json(pdir / "config.json", dict(cfg_dict, arch=entries[a].arch, models=[a, b]))
        write_records(pdir, [r for r in records if (r.seed_a, r.seed_b) == (index[a], index[b])])
        build_report(pdir)
    matrix = barrier_matrix(records, cfg.models, cfg.bootstrap)
    atomic_write_text(run.dir / "barrier_matrix.csv",
                      matrix.to_csv(index=False, float_format="%.6f"))
    plot_barrier_matrix(matrix, cfg.models, run.dir / "plots", title)
    if transfer_frames:
        write_transfer(pd.concat(transfer_frames, ignore_index=True), run.dir, bool(flagged),
                       title=f"# {title}")
    print(format_summary(summary, cfg_dict))
    for a, b in skipped:
        print(f"skipped {a} vs {b}: different architectures")
    if strong_paths:
        s = strong_io.frame(strong_paths)
        print(f"\nAutoAttack ({cfg.aa_version}) vs {cfg.attack}-{cfg.steps} on "
              f"{int(s['n'].iloc[0])} examples: largest gap {100 * s['gap_pgd_aa'].max():.1f} "
              f"points; see strong_eval.md and cards/")
    for f in flagged:
        print(f"WARNING: possible gradient masking on {f}: transfer attacks from the endpoints "
              "beat the direct attack (transfer.md)")
    print(f"\n{len(records)} path{'s' if len(records) != 1 else ''} over {len(pairs)} "
          f"pair{'s' if len(pairs) != 1 else ''}; outputs in {run.dir}/ "
          "(tables/summary.md, barrier_matrix.csv, plots/)")
    return run.dir


# ---------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    p = ArgumentParser(prog="python -m robustpath.zoo", description=__doc__.split("\n\n")[0],
                formatter_class=fmt)
    sub = p.add_subparsers(dest="command", metavar="{list,compare}", parser_class=ArgumentParser)
    sub.required = True

    def common(q):
        q.add_argument("--dataset", default="cifar10",
                       help="RobustBench dataset: cifar10, cifar100 (list also: imagenet)")
        q.add_argument("--threat", default="Linf", help="RobustBench threat model: Linf or L2")
        q.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                       help="RobustBench model folder, laid out <dir>/<dataset>/<threat>/<name>.pt "
                       "(env ROBUSTPATH_MODEL_DIR)")

    q = sub.add_parser("list", formatter_class=fmt,
                       help="zoo entries grouped by architecture",
                       description="List zoo entries grouped by architecture (class name and "
                       "parameter shapes, read from constructors on the meta device, no weights); "
                       "'*' marks checkpoints present in --model-dir.")
    common(q)
    q.add_argument("--present", action="store_true",
                   help="only entries whose checkpoint file is in --model-dir")
    q.add_argument("--json", action="store_true", help="print the groups as JSON")

    q = sub.add_parser("compare", formatter_class=fmt, help="paths between same-architecture "
                       "models: align, evaluate, barrier matrix",
                       description="For every pair of same-architecture models: align, evaluate "
                       "the paths under the attack, write records, tables, plots and the pairwise "
                       "barrier matrix; optionally AutoAttack at chosen t and a transfer check.")
    common(q)
    add_compare_arguments(q)
    return p


def cmdsplit_list(args) -> int:
    if Path(args.model_dir).exists() and not Path(args.model_dir).is_dir():
        raise UserError(f"--model-dir {args.model_dir} is a file, not a folder")
    dataset, threat = parse_dataset(args.dataset), parse_threat(args.threat)
    names = list(registry(dataset, threat))
    have = {n for n in names if checkpoint_path(args.model_dir, dataset, threat, n).is_file()}
    if args.present:
        names = [n for n in names if n in have]
    groups = list_entries(dataset, threat, names)
    if args.json:
        print(json.dumps({g: [dict(e.to_dict(), present=e.name in have) for e in es]
                          for g, es in groups.items()}, indent=2))
        return 0
    print(f"RobustBench {dataset} {threat}: {len(names)} entries, {len(have)} present in "
          f"{args.model_dir} (*)")
    for g, es in groups.items():
        print(f"\n{g}: {len(es)}")
        for e in es:
            extra = f"  [{e.note}]" if e.note else f"  normalisation: {e.normalisation}"
            print(f"  {'*' if e.name in have else ' '} {e.name}{extra}")
    return 0


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.command == "list":
        return cmdsplit_list(args)
    cfg = config_from_args(args)
    command = "python -m robustpath.zoo " + " ".join(shlex.quote(a) for a in argv)
    existed = Path(cfg.out).exists()
    try:
        run_compare(cfg, progress=not args.no_progress, overwrite=args.overwrite,
                    command=command.strip())
    except BaseException:
        if not existed:  # a comparison that failed before writing leaves no empty folder
            with contextlib.suppress(OSError):
                Path(cfg.out).rmdir()
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
