"""``python -m robustpath.train``: train one robust endpoint from the command line
(:class:`~robustpath.train.loop.TrainConfig` + :func:`~robustpath.train.loop.train_endpoint`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from robustpath import models
from robustpath.attacks.base import AttackConfig
from robustpath.cli import (
    ArgumentParser,
    add_deprecated,
    add_run_options,
    add_threat_flags,
    data_root,
    parse_with_config,
)
from robustpath.config import default_eps
from robustpath.device import resolve
from robustpath.errors import UserError, cli_main
from robustpath.io.store import checkpoint_files
from robustpath.numbers import parse_fraction
from robustpath.train.loop import METHODS, SCHEDULES, TrainConfig, train_endpoint  # noqa: F401


def resolve_out(out: str) -> Path:
    """``--out`` as a checkpoint stem: a folder (existing, or written with a trailing
    ``/``) gets ``model`` inside it; anything else is used literally (``.safetensors``
    / ``.json`` appended, a given ``.safetensors`` suffix not doubled)."""
    if not out.strip():
        raise UserError("--out must name a file or folder")
    p = Path(out)
    if out.endswith(("/", os.sep)) or p.is_dir():
        p = p / "model"
    st, _ = checkpoint_files(p)
    return st.with_name(st.name[: -len(".safetensors")])


def check_out_writable(stem: Path) -> None:
    """Fail before training when the checkpoint cannot be written (creating nothing:
    the nearest existing ancestor must be a writable folder)."""
    st, _ = checkpoint_files(stem)
    if st.is_dir():
        raise UserError(f"cannot write {st}: it is a folder")
    anc = stem.parent.absolute()
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"cannot write {st}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {st}: {anc} is not writable")


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = ArgumentParser(prog="python -m robustpath.train",
                                description="Adversarially train one endpoint network.")
    p.add_argument("--dataset", default=d.dataset, help="dataset name (default %(default)s)")
    p.add_argument("--data-root", default=None, type=data_root,
                   help="an existing folder with dataset files (default ./data)")
    p.add_argument("--arch", default=d.arch, help=f"architecture: {', '.join(models.available())}")
    p.add_argument("--width", type=float, default=d.width, help="width multiplier (default 1)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default 0)")
    p.add_argument("--train-attack", dest="method", default=d.method,
                   help="attack that makes the training inputs: pgd | fgsm | clean (no "
                   "attack; default pgd)")
    add_deprecated(p, "--method", "--train-attack", "method")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size")
    p.add_argument("--lr", default=d.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--schedule", default=d.schedule,
                   help=f"learning-rate schedule: {', '.join(SCHEDULES.names())}")
    add_threat_flags(p, also="in training and in the final PGD-10 evaluation")
    p.add_argument("--train-steps", type=int, default=5, help="PGD steps in training (default 5)")
    # --steps is the evaluation attack's in every other command; here it was training's
    add_deprecated(p, "--steps", "--train-steps", "train_steps", int)
    p.add_argument("--train-subset", type=int, default=d.train_subset, help="0 = all")
    p.add_argument("--test-subset", type=int, default=d.test_subset, help="0 = all")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--out", default=None, help="checkpoint stem (X -> X.safetensors + X.json, "
                   "taken literally) or folder (dir/ -> dir/model.*); default "
                   "runs/train-<dataset>-<arch>-s<seed> (git-ignored; the stem names the "
                   "endpoint in bench --endpoints)")
    add_run_options(p)
    return p


#: TrainConfig fields whose flag is not --<field-with-dashes>
FLAGS = {"method": "--train-attack", "norm": "--threat-model"}


def flat_fields(d: dict) -> dict:
    """A TrainConfig dict (or a checkpoint's ``.json``, which holds it under ``config``)
    as flat fields: the training attack's ``eps``, ``norm``, ``step_size`` and steps
    (``train_steps``) beside the others; the evaluation attack follows from them."""
    d = dict(d.get("config", d))
    atk = d.pop("attack", None)
    d.pop("eval_attack", None)
    if isinstance(atk, dict):
        d.update(eps=atk.get("eps"), norm=atk.get("norm", "linf"),
                 train_steps=atk.get("steps", 5), step_size=atk.get("step_size"))
    return d


def config_from_args(args, rest: dict | None = None) -> TrainConfig:
    args.norm = args.norm or "linf"
    eps = default_eps(args.dataset, args.norm) if args.eps is None else args.eps
    eps = parse_fraction(eps, name="--eps")
    if args.step_size is not None:
        args.step_size = parse_fraction(args.step_size, name="--step-size", allow_zero=False)
    atk = AttackConfig(norm=args.norm, eps=eps, steps=args.train_steps, step_size=args.step_size)
    extra = dict(rest or {})
    unknown = set(extra) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise UserError(f"--config: unknown config keys: {', '.join(sorted(unknown))}")
    return TrainConfig(dataset=args.dataset, arch=args.arch, width=args.width, seed=args.seed,
                       method=args.method, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, schedule=args.schedule, train_subset=args.train_subset,
                       test_subset=args.test_subset, attack=atk,
                       eval_attack=AttackConfig(norm=args.norm, eps=eps, steps=10, seed=0),
                       data_root=args.data_root, **extra).validate()


@cli_main
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parse_with_config(_parser(), argv, lambda n: FLAGS.get(n, "--" + n.replace("_", "-")),
                                   transform=flat_fields)
    cfg = config_from_args(args, rest)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    stem = resolve_out(args.out or f"runs/train-{cfg.dataset}-{cfg.arch}-s{cfg.seed}")
    check_out_writable(stem)
    _, m = train_endpoint(cfg, stem, device=resolve(args.device))
    st, js = checkpoint_files(stem)
    print(f"clean acc {m['clean_acc']:.4f}  robust acc {m['robust_acc']:.4f}  "
          f"({m['seconds_per_epoch']:.1f} s/epoch) -> {st} (+ {js.name})")
    return 0
