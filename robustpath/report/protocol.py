"""Tatro et al. 2020's protocol, setting by setting, against the ``paper`` preset.

Each :class:`Setting` names one hyperparameter, the value in their code
(IBM/NeuronAlignment, commit 5b82b60) with the file and line it is read from, and a
function that reads the same setting from robustpath's *resolved* configuration
(``from_preset("paper")`` and the stage configs it produces:
:func:`robustpath.engine.stages.endpoint_config`, the curve-training config, the PAM
config). ``expect`` is the value the preset must hold for the row to be "same";
rows without ``expect`` are deviations that no setting here can close, with the
reason in ``note``.

``docs/paper_protocol.md`` is generated from this table and the preset:
``python -m robustpath.report.protocol > docs/paper_protocol.md`` (``--check`` exits 1
when the committed file is stale). ``tests/test_protocol.py`` checks that every
"same" row holds and that the committed file is current.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustpath.errors import cli_main

REPO = "IBM/NeuronAlignment"
COMMIT = "5b82b60"
DOC = Path(__file__).resolve().parents[2] / "docs" / "paper_protocol.md"


@dataclass(frozen=True)
class Setting:
    """One row: ``read(ctx)`` gives robustpath's value; ``expect`` the seed code's value
    in robustpath's units (``None``: a deviation, explained in ``note``)."""

    section: str
    name: str
    theirs: str
    source: str
    read: Callable[[dict], Any]
    expect: Any = None
    note: str = ""

    def value(self, ctx: dict) -> Any:
        return self.read(ctx)

    def status(self, ctx: dict) -> str:
        if self.expect is None:
            return "deviation"
        return "same" if _equal(self.value(ctx), self.expect) else "DIFFERS"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def context(preset: str = "paper") -> dict:
    """The resolved configs of ``preset``: bench config, endpoint, curve, PAM, models."""
    from robustpath import models
    from robustpath.config import from_preset
    from robustpath.engine import stages
    from robustpath.pam import TatroPAMConfig

    cfg = from_preset(preset)
    ep = stages.endpoint_config(cfg, cfg.seeds[0])
    curve = stages.curve_train_config(cfg)  # the config the curve stage trains with
    n = {a: sum(p.numel() for p in models.create(a, cfg.dataset).parameters())
         for a in ("tinyten", "resnet32")}
    return {"cfg": cfg, "endpoint": ep, "curve": curve, "pam": TatroPAMConfig(),
            "params": n}


E, A, C, V, P, M = ("endpoint training", "alignment", "curve training", "evaluation",
                    "PAM (robustpath.pam)", "models")
TM, TC, EV = ("training/train_model_adversarial.py", "training/train_curve_adversarial.py",
              "evaluation/eval_adversarial_curve.py")
PM = "training/train_curve_pam.py"

SETTINGS: list[Setting] = [
    # ------------------------------------------------------------ endpoints
    Setting(E, "dataset", "CIFAR10", f"{TC}:29", lambda c: c["cfg"].dataset, "cifar10"),
    Setting(E, "architecture", "TinyTen", f"{TM}:36", lambda c: c["cfg"].arch, "tinyten"),
    Setting(E, "seeds (endpoints)", "6 per configuration -> 3 pairs", "README.md:77-78",
            lambda c: len(c["cfg"].seeds), 6),
    Setting(E, "epochs", "200", f"{TM}:44", lambda c: c["endpoint"].epochs, 200),
    Setting(E, "batch size", "128", f"{TM}:31", lambda c: c["endpoint"].batch_size, 128),
    Setting(E, "learning rate", "0.1", f"{TM}:51", lambda c: c["endpoint"].lr, 0.1),
    Setting(E, "weight decay", "5e-4 (SGD)", f"{TM}:53,150",
            lambda c: c["endpoint"].weight_decay, 5e-4),
    Setting(E, "momentum", "0.9, Nesterov", f"{TM}:146-151", lambda c: c["endpoint"].momentum,
            0.9),
    Setting(E, "lr schedule", "Garipov: 1 to 50 %, linear to 0.01 at 90 %", f"{TM}:124-132,177-178",
            lambda c: c["endpoint"].schedule, "garipov",
            "theirs changes lr once per epoch, robustpath per batch"),
    Setting(E, "attack", "PGD L-inf, 5 steps, random start", f"{TM}:107-116",
            lambda c: (c["endpoint"].attack.name, c["endpoint"].attack.norm,
                       c["endpoint"].attack.steps, c["endpoint"].attack.random_start),
            ("pgd", "linf", 5, True)),
    Setting(E, "eps / step", "8/255 / 2/255", f"{TM}:107-109",
            lambda c: (round(c["endpoint"].attack.eps * 255, 6),
                       round((c["endpoint"].attack.step_size or c["endpoint"].attack.eps / 4) * 255,
                             6)), (8.0, 2.0)),
    Setting(E, "attack mode", "train (BN batch statistics, running stats updated)",
            f"{TM}:171-172; utils/utils.py:54; utils/attack.py:26-47",
            lambda c: c["endpoint"].attack_mode, "train"),
    Setting(E, "crop + flip", "RandomCrop(32, padding=4), RandomHorizontalFlip",
            "utils/data.py:31-32", lambda c: c["endpoint"].augment, None,
            "crop + flip as theirs, but robustpath pads by reflection (robustpath.data), "
            "theirs with zeros"),
    Setting(E, "rotation angle", "RandomAffine(degrees=15)", "utils/data.py:30",
            lambda c: c["endpoint"].affine_degrees, 15.0, "the order differs: next row"),
    Setting(E, "augmentation order", "rotate, flip, crop", "utils/data.py:30-32",
            lambda c: "crop, flip, rotate", None,
            "kept: robustpath.data crops and flips, then rotates (the same transforms and "
            "parameters in another order). Matching it would change what the committed "
            "paper-fmnist run (rotation on) computes"),
    Setting(E, "PGD random start", "x + U(-eps, eps), not clamped to [0, 1] before the "
            "first step (clamped after each step)", "utils/attack.py:29-30,47",
            lambda c: "clamped to [0, 1]", None,
            "kept: every input the network sees is a valid image (pixels in [0, 1], "
            "robustpath.attacks.base); the two differ only in the first gradient. Holds for the "
            "curve and evaluation attacks too"),
    Setting(E, "input normalisation", "none ('Adversarial' transform: ToTensor only)",
            "utils/data.py:28-38", lambda c: "Normalize layer in the model",
            None, "robustpath models hold the dataset mean/std; the first BN absorbs it "
            "except at zero-padded borders"),
    # ------------------------------------------------------------ alignment
    Setting(A, "method", "correlation of post-activations, Hungarian per layer",
            "alignment/align_models.py:101-111",
            lambda c: "activation" if "activation" in c["cfg"].align else "-", "activation"),
    Setting(A, "inputs", "clean training images, no augmentation",
            "utils/data.py:194,216; alignment/align_models.py:106",
            lambda c: c["cfg"].align_inputs, "clean"),
    Setting(A, "examples", "10,000 (first of the training set)", "utils/data.py:216",
            lambda c: c["cfg"].align_samples, 10000),
    # ------------------------------------------------------------ curves
    Setting(C, "curve", "quadratic Bezier (num_bends 3: one free control point)", f"{TC}:42-45",
            lambda c: ("bezier" in c["cfg"].paths, c["cfg"].bends), (True, 1)),
    Setting(C, "initialisation", "control point at the midpoint of the line", f"{TC}:52,157-162",
            lambda c: "linear", "linear", "fixed in robustpath.paths.curves.build_curve"),
    Setting(C, "epochs", "200", f"{TC}:58", lambda c: c["curve"].epochs, 200),
    Setting(C, "batch size", "128", f"{TC}:35", lambda c: c["curve"].batch_size, 128),
    Setting(C, "learning rate", "0.1", f"{TC}:63", lambda c: c["curve"].lr, 0.1),
    Setting(C, "L2 on theta(t)", "wd/2 * sum theta(t)^2, wd 5e-4 (SGD decay 0)",
            f"{TC}:65,154,216; models/curves.py:397-398", lambda c: c["curve"].weight_decay, 5e-4),
    Setting(C, "momentum", "0.9, Nesterov", f"{TC}:70,150-155",
            lambda c: (c["curve"].momentum, c["curve"].nesterov), (0.9, True)),
    Setting(C, "lr schedule", "Garipov (as endpoints)", f"{TC}:194-202,245-246",
            lambda c: c["curve"].schedule, "garipov", "per batch here, per epoch theirs"),
    Setting(C, "t sampling", "t ~ U(0,1) once per batch, same t for attack and step",
            "utils/attack_curve.py:31-32,42,52", lambda c: "per batch", "per batch",
            "fixed in robustpath.paths.fit"),
    Setting(C, "attack in the loop", "PGD-5 L-inf 8/255, step 2/255, random start",
            f"{TC}:179-191", lambda c: (c["curve"].attack.steps, c["curve"].attack.norm),
            (5, "linf")),
    Setting(C, "BatchNorm in training", "train mode: batch statistics", "utils/utils.py:54",
            lambda c: "batch statistics", "batch statistics", "fixed in robustpath.paths.fit"),
    Setting(C, "crop + flip", "as endpoints ('Adversarial' transform)", f"{TC}:33,105-113",
            lambda c: c["curve"].augment, None,
            "crop + flip as theirs, padded by reflection as the endpoints (see above)"),
    Setting(C, "rotation angle", "RandomAffine(degrees=15), as endpoints",
            f"{TC}:33,105-113; utils/data.py:30", lambda c: c["curve"].affine_degrees, 15.0,
            "order: crop, flip, rotate, as the endpoints (deviation above)"),
    # ------------------------------------------------------------ evaluation
    Setting(V, "t points", "65, evenly spaced in [0, 1]", f"{EV}:42-43,160",
            lambda c: c["cfg"].t_points, 65),
    Setting(V, "attack", "PGD-5 L-inf 8/255, step 2/255, random start, 1 restart",
            f"{EV}:136-157", lambda c: (c["cfg"].eval_attack().name, c["cfg"].eval_steps,
                                        c["cfg"].restarts), ("pgd", 5, 1)),
    Setting(V, "test set", "all 10,000 test images", "utils/data.py:195-196",
            lambda c: c["cfg"].test_subset, 0),
    Setting(V, "BN recomputed at each t on", "the whole training set (cumulative average)",
            f"{EV}:175-176; utils/utils.py:563-586",
            lambda c: f"{c['cfg'].bn_batches} x {c['cfg'].batch_size} of "
            f"{c['cfg'].train_subset or 'all'} training images",
            "391 x 128 of all training images",
            "theirs: 98 batches of 512, with training augmentation"),
    Setting(V, "BN batches augmented", "yes: the training loader with the 'Adversarial' "
            "transform (rotate, flip, crop), a new draw at every t", f"{EV}:175; utils/data.py:28-33",
            lambda c: "no: the same unaugmented batches at every t", None,
            "kept: fixed batches make the statistics at every t deterministic and comparable "
            "across t (robustpath.paths.bn, robustpath.paths.evaluate); matching would change what the "
            "committed paper-fmnist run computes"),
    Setting(V, "BN inputs", "adversarial (PGD-5 on the training batches)",
            f"{EV}:176; utils/utils.py:578-582", lambda c: c["cfg"].bn_inputs, "adv"),
    Setting(V, "BN attack mode", "train mode: every forward pass inside the PGD call (its 5 "
            "steps and the final one) runs on batch statistics and adds to the running "
            "averages", "utils/utils.py:564-582; utils/attack_curve.py:30-50",
            lambda c: "eval mode, clean-statistics copy", None,
            "kept: robustpath.paths.bn.recompute_bn attacks a frozen copy with clean statistics and "
            "accumulates statistics from the final adversarial batches only; theirs also "
            "average in the intermediate PGD iterates' statistics"),
    Setting(V, "average accuracy", "arc-length weighted along the curve", f"{EV}:202-207",
            lambda c: "arc length", "arc length", "robustpath.stats.barrier: trapz(A speed)/trapz(speed)"),
    # ------------------------------------------------------------ PAM
    Setting(P, "objective", "clean cross-entropy at theta(t), t ~ U(0,1) per batch",
            f"{PM}:253-255; utils/utils.py:116-141", lambda c: c["pam"].objective, "clean"),
    Setting(P, "outer iterations", "1", f"{PM}:60", lambda c: c["pam"].outer_iters, 1),
    Setting(P, "permutation epochs", "20", f"{PM}:62", lambda c: c["pam"].perm_epochs, 20),
    Setting(P, "curve epochs", "250", f"{PM}:64", lambda c: c["pam"].curve_epochs, 250),
    Setting(P, "permutation lr", "0.05 (lr/2), plain SGD", f"{PM}:169-171",
            lambda c: c["pam"].perm_lr, 0.05),
    Setting(P, "permutation lr decay", "0.5^(epoch // 20) * 0.9996^epoch", f"{PM}:180",
            lambda c: (c["pam"].lr_halve_every, c["pam"].lr_decay), (20, 0.9996)),
    Setting(P, "proximal weight nu", "1e3", f"{PM}:254,298", lambda c: c["pam"].nu, 1e3),
    Setting(P, "doubly stochastic projection", "20 alternating steps after every update",
            "utils/utils.py:158-159,262-273", lambda c: c["pam"].ds_iters, 20),
    Setting(P, "candidates", "Hungarian projection, previous permutation, 32 BvN samples "
            "(11 largest coefficients)", f"utils/utils.py:198-259; {PM}:267",
            lambda c: (c["pam"].bvn_samples, c["pam"].bvn_top), (32, 11)),
    Setting(P, "candidates scored on", "the training loader (shuffled, with the script's "
            "training transform)", f"{PM}:267; utils/utils.py:198-259",
            lambda c: "fixed unaugmented selection batches, t = linspace(0, 1)", None,
            "kept: every candidate is scored on the same batches, so the choice does not "
            "depend on which random batches a candidate drew (robustpath.pam.tatro.select_loss)"),
    Setting(P, "BvN tolerance", "entries with abs(S) < 5e-4 zeroed after every subtraction",
            "utils/birkhoff.py:37,259", lambda c: "1e-9, negatives zeroed",
            None, "kept: robustpath.pam.birkhoff decomposes to 1e-9 (coefficients sum to 1 "
            "within rounding) and drops the projection's negative entries; only the 11 "
            "largest coefficients are sampled, far above either tolerance"),
    Setting(P, "curve step", "lr 0.1, Nesterov 0.9, L2 5e-4 on theta(t), proximal nu 1e3",
            f"{PM}:173-178,297-298", lambda c: (c["pam"].curve_lr, c["pam"].weight_decay),
            (0.1, 5e-4)),
    # ------------------------------------------------------------ models
    Setting(M, "TinyTen parameters (CIFAR-10)", "86,778 ('0.09M')", "models/tiny_ten.py:41-71",
            lambda c: c["params"]["tinyten"], 86778),
    Setting(M, "ResNet32 parameters (CIFAR-10)", "466,906 ('0.47M')", "models/resnet.py:113-157",
            lambda c: c["params"]["resnet32"], 466906),
]


NOTES = [
    "## Facts about the seed code that a reproduction must know",
    "",
    "- Their PAM table (README.md:216-234: e.g. TinyTen CIFAR-10 minimum accuracy "
    "82.8 unaligned -> 84.0 PAM unaligned) is for *standard* training: "
    "`training/train_curve_pam.py` reads `model_dicts/basic_models/` (line 25) with the "
    "`TinyTen` transform (line 35) and a clean objective; there is no adversarial PAM script.",
    "- With `--outer_iters 1` (README.md:174) the one permutation step runs before any "
    "curve training, with the offset phi = 0: it optimises the permutation for the "
    "*line* between A and P B (`train_curve_pam.py:191,233-267`).",
    "- The scripts do not run as published: `utils/utils.py:10` imports "
    "`utils.attack_ensemble` and `models/__init__.py:1` imports `models.tiny_six`, "
    "neither in the repository; `training/train_model_adversarial.py:172` passes an "
    "undefined `amp_flag`; its final clean evaluation (line 200) feeds normalised "
    "images (`test_clean`) to a model trained without normalisation.",
    "- In `training/train_model_adversarial.py` a `LambdaLR` step scheduler is built "
    "(lines 153-154) but never stepped; the Garipov schedule set by hand each epoch "
    "(lines 177-178) is the one in effect.",
    "- Their average accuracy weights the 65 points by arc length of the curve in its "
    "plane (`eval_adversarial_curve.py:191-207`), not by t.",
]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def render(preset: str = "paper") -> str:
    """The Markdown page: one table per section, then how it was made."""
    ctx = context(preset)
    out = [f"# Tatro et al. 2020's protocol vs `--preset {preset}`", "",
           f"Generated by `python -m robustpath.report.protocol` from `robustpath/report/protocol.py` and "
           f"the resolved `{preset}` preset; do not edit by hand. Sources are files and lines "
           f"of [{REPO}](https://github.com/{REPO}) at commit `{COMMIT}`. *same*: the preset "
           "holds the seed code's value (checked by `tests/test_protocol.py`); *deviation*: "
           "what robustpath does instead, and why.", ""]
    counts = {"same": 0, "deviation": 0, "DIFFERS": 0}
    section = None
    for s in SETTINGS:
        if s.section != section:
            section = s.section
            out += ["", f"## {section}", "",
                    "| setting | theirs | source | robustpath | status | note |",
                    "|---|---|---|---|---|---|"]
        st = s.status(ctx)
        counts[st] += 1
        out.append(f"| {s.name} | {s.theirs} | `{s.source}` | {_fmt(s.value(ctx))} | {st} | "
                   f"{s.note} |")
    out += ["", f"{counts['same']} settings the same, {counts['deviation']} deviations, "
            f"{counts['DIFFERS']} differing.", "", *NOTES, ""]
    return "\n".join(out)


@cli_main
def main(argv: list[str] | None = None) -> int:
    from robustpath.cli import ArgumentParser

    p = ArgumentParser(prog="python -m robustpath.report.protocol",
                       description="Print docs/paper_protocol.md from the preset.")
    p.add_argument("--preset", default="paper", help="preset compared with Tatro et al.'s "
                   "protocol (paper, paper-fmnist, modern, quick)")
    p.add_argument("--check", action="store_true", help="exit 1 if docs/paper_protocol.md is stale")
    p.add_argument("--write", action="store_true", help="write docs/paper_protocol.md")
    args = p.parse_args(argv)
    text = render(args.preset)
    if args.check:
        ok = DOC.is_file() and DOC.read_text() == text
        print("docs/paper_protocol.md is " + ("current" if ok else "stale"))
        return 0 if ok else 1
    if args.write:
        from robustpath.io.store import atomic_write_text

        atomic_write_text(DOC, text)
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
