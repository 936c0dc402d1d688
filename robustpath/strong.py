"""Strong evaluation along a path: AutoAttack beside PGD, and a transfer check.

PGD with few steps (Tatro et al. use PGD-5) can overestimate robustness, and more so
at interior points of a path, whose loss surface nobody trained to be smooth. Two
checks, usable by any caller that has a path ``model_at(t) -> nn.Module``:

* :func:`strong_eval` - at chosen t (by default the endpoints and the t where PGD
  found the lowest robust accuracy, :func:`strong_ts`) the network is prepared once
  (BatchNorm recomputed, :class:`PointSetup`) and attacked with both the weak attack
  and the strong one (AutoAttack, standard version: APGD-CE, APGD-T, FAB-T, Square;
  Croce & Hein 2020) on the same examples. Columns ``robust_acc_pgd``,
  ``robust_acc_aa`` and ``gap = robust_acc_pgd - robust_acc_aa`` (how much PGD
  overestimates), plus ``robust_acc_worst`` (examples that survive both).
* :func:`transfer_check` - adversarial examples are made once against the path's
  endpoints (PGD) and evaluated, without further attack, at every t. A transfer
  (black-box) attack should never beat the white-box attack on the model itself; where
  it does by more than ``margin`` the direct gradients are suspect: *possible gradient
  masking* (Athalye et al. 2018, "Obfuscated gradients"). Columns ``direct_acc``,
  ``transfer_acc_<source>``, ``transfer_acc`` (examples that survive every source),
  ``transfer_only`` (fraction robust to the direct attack but broken by a transfer one)
  and ``stronger``.

:func:`write_strong` and :func:`write_transfer` write ``strong_eval.{csv,md}`` and
``transfer.{csv,md}`` atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks import Attack, eval_mode
from .bn import recompute_bn
from .errors import UserError
from .evaluate import PathResult
from .metrics import per_example
from .store import atomic_write_text

ModelAt = Callable[[float], nn.Module]


@dataclass
class PointSetup:
    """How a network on a path is made ready to be measured, exactly as
    :func:`robustpath.evaluate.evaluate_path` does it: moved to ``device`` and its
    BatchNorm statistics re-estimated on ``bn_batches`` batches of ``bn_loader``
    (clean or adversarial inputs from ``bn_attack``). ``bn_loader=None`` skips BN."""

    bn_loader: Iterable | None = None
    bn_batches: int = 10
    bn_inputs: str = "clean"
    bn_attack: Attack | None = None
    device: str | torch.device = "cpu"
    batch_size: int = 500

    def prepare(self, model_at: ModelAt, t: float) -> nn.Module:
        model = model_at(float(t)).to(self.device)
        if self.bn_loader is not None:
            recompute_bn(model, self.bn_loader, batches=self.bn_batches, inputs=self.bn_inputs,
                         attack=self.bn_attack)
        return model.eval()


def strong_ts(result: PathResult | None = None, extra: Sequence[float] = (),
              endpoints: bool = True) -> list[float]:
    """The t at which to run the strong attack: the endpoints, the t of the lowest
    robust accuracy in ``result`` (first one on ties) and ``extra``; sorted, unique."""
    ts: set[float] = {0.0, 1.0} if endpoints else set()
    if result is not None and len(result.ts):
        acc = result.robust_correct.astype(np.float64).mean(1)
        ts.add(float(result.ts[int(np.argmin(acc))]))
    for t in extra:
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise UserError(f"strong-attack t must lie in [0, 1], got {t}")
        ts.add(t)
    return sorted(round(t, 10) for t in ts)


def strong_eval(model_at: ModelAt, ts: Sequence[float], x: torch.Tensor, y: torch.Tensor,
                weak: Attack, strong: Attack, setup: PointSetup | None = None, *,
                weak_name: str = "pgd", strong_name: str = "aa", progress: bool = True,
                desc: str = "strong eval") -> pd.DataFrame:
    """Weak vs strong attack at each t of ``ts`` on the same examples ``x`` [N,C,H,W],
    ``y`` [N] and the same prepared network. One row per t: ``t``, ``clean_acc``,
    ``robust_acc_<weak_name>``, ``robust_acc_<strong_name>``, ``gap`` (weak - strong),
    ``robust_acc_worst`` (robust to both), ``robust_loss_<name>`` and ``n``."""
    setup = setup or PointSetup()
    rows = []
    for t in tqdm(list(ts), desc=desc, disable=not progress, unit="t", leave=False):
        model = setup.prepare(model_at, t)
        kw = {"batch_size": setup.batch_size, "device": setup.device}
        clean = per_example(model, x, y, None, **kw)
        w = per_example(model, x, y, weak, **kw)
        s = per_example(model, x, y, strong, **kw)
        rows.append({"t": float(t), "clean_acc": clean.accuracy,
                     f"robust_acc_{weak_name}": w.accuracy,
                     f"robust_acc_{strong_name}": s.accuracy,
                     "gap": w.accuracy - s.accuracy,
                     "robust_acc_worst": float((w.correct & s.correct).float().mean()),
                     f"robust_loss_{weak_name}": w.mean_loss,
                     f"robust_loss_{strong_name}": s.mean_loss, "n": len(y)})
    return pd.DataFrame(rows)


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack,
                         batch_size: int = 500, device: str | torch.device = "cpu") -> torch.Tensor:
    """``attack(model, x, y)`` batch by batch; returns the examples on the CPU."""
    out = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            out.append(attack(model, xb, yb).detach().cpu())
    return torch.cat(out) if out else x.clone()


def transfer_check(model_at: ModelAt, result: PathResult, x: torch.Tensor, y: torch.Tensor,
                   sources: dict[str, nn.Module], attack: Attack,
                   setup: PointSetup | None = None, *, margin: float = 0.02,
                   progress: bool = True, desc: str = "transfer") -> tuple[pd.DataFrame, bool]:
    """Transfer attacks from ``sources`` (e.g. ``{"a": endpoint_a, "b": endpoint_b}``)
    evaluated at every t of ``result`` (the direct attack's per-example outcomes on the
    same ``x``, ``y``, in the same order).

    Returns ``(frame, flagged)``; ``flagged`` is true when at some t the transfer
    accuracy is below the direct robust accuracy by more than ``margin`` (possible
    gradient masking).
    """
    setup = setup or PointSetup()
    if result.robust_correct.shape[1] != len(y):
        raise UserError(f"transfer check: the path result has {result.robust_correct.shape[1]} "
                        f"examples but {len(y)} were given")
    if not sources:
        raise UserError("transfer check needs at least one source model")
    adv = {name: adversarial_examples(m.to(setup.device), x, y, attack, setup.batch_size,
                                      setup.device) for name, m in sources.items()}
    rows, flagged = [], False
    for i, t in enumerate(tqdm(result.ts, desc=desc, disable=not progress, unit="t", leave=False)):
        model = setup.prepare(model_at, float(t))
        direct = torch.from_numpy(np.asarray(result.robust_correct[i], dtype=bool))
        survive = torch.ones(len(y), dtype=torch.bool)
        row = {"t": float(t), "direct_acc": float(direct.float().mean())}
        for name, xa in adv.items():
            r = per_example(model, xa, y, None, batch_size=setup.batch_size, device=setup.device)
            row[f"transfer_acc_{name}"] = r.accuracy
            survive &= r.correct
        row["transfer_acc"] = float(survive.float().mean())
        row["transfer_only"] = float((direct & ~survive).float().mean())
        row["stronger"] = bool(row["transfer_acc"] < row["direct_acc"] - margin)
        row["n"] = len(y)
        flagged |= row["stronger"]
        rows.append(row)
    return pd.DataFrame(rows), flagged


# ---------------------------------------------------------------- output
def _markdown(frame: pd.DataFrame, pct: Sequence[str]) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in frame.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in pct:
                cells.append(f"{100 * float(v):.2f}")
            elif isinstance(v, (bool, np.bool_)):
                cells.append("yes" if v else "")
            elif isinstance(v, (float, np.floating)):
                cells.append(f"{float(v):.4g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if "acc" in c or c in ("gap", "transfer_only")]


def write_strong(frame: pd.DataFrame, out_dir: str | Path, *, title: str = "") -> None:
    """``strong_eval.csv`` (fractions) and ``strong_eval.md`` (percent) in ``out_dir``."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "strong_eval.csv", frame.to_csv(index=False, float_format="%.6f"))
    head = f"{title}\n\n" if title else ""
    note = ("Accuracies in percent; gap = robust_acc_pgd - robust_acc_aa (how much the weak "
            "attack overestimates robustness).\n\n")
    atomic_write_text(out_dir / "strong_eval.md",
                      head + note + _markdown(frame, _pct_columns(frame)))


def write_transfer(frame: pd.DataFrame, out_dir: str | Path, flagged: bool, *,
                   margin: float = 0.02, title: str = "") -> None:
    """``transfer.csv`` (fractions) and ``transfer.md`` (percent, with the verdict)."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "transfer.csv", frame.to_csv(index=False, float_format="%.6f"))
    verdict = (f"**WARNING: possible gradient masking** - at some t, adversarial examples "
               f"transferred from the endpoints beat the direct attack by more than "
               f"{100 * margin:.1f} points (rows marked 'stronger'); robust accuracy there is "
               "overestimated." if flagged else
               f"No sign of gradient masking: transfer attacks from the endpoints never beat the "
               f"direct attack by more than {100 * margin:.1f} points.")
    head = f"{title}\n\n" if title else ""
    atomic_write_text(out_dir / "transfer.md",
                      head + verdict + "\n\n" + _markdown(frame, _pct_columns(frame)))
