"""Optional experiment tracking: a finished run folder's metrics logged to
TensorBoard event files (``bench --tensorboard``, off by default) and, when the
``wandb`` package is installed, to a Weights & Biases run in offline mode
(``bench --wandb-offline``; sync later with ``wandb sync``).

The run folder's CSV/JSON files stay the source of truth: this module only reads
them (``endpoints.json``, ``curves.json`` with per-epoch history, ``records.csv``,
``tables/summary.csv``), so ``python -m robustpath.report.tracking RUN`` logs an old run
the same way. Logged: per endpoint its final metrics; per fitted curve its
per-epoch training loss and accuracy; per path its clean and robust accuracy and
loss against t (step = round(1000 t)); per alignment x path family every summary
metric. TensorBoard writes to ``<run>/tensorboard/`` through
``torch.utils.tensorboard``, which needs the ``tensorboard`` package
(``pip install tensorboard``); nothing is sent over the network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from robustpath.errors import UserError, cli_main


def scalars(run_dir: str | Path) -> list[tuple[str, float, int]]:
    """``(tag, value, step)`` of everything this module logs, read from the run folder."""
    run_dir = Path(run_dir)
    out: list[tuple[str, float, int]] = []

    def _json(name):
        try:
            return json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            return {}

    for seed, m in sorted(_json("endpoints.json").items()):
        for k, v in sorted(m.items()):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((f"endpoint/seed{seed}/{k}", float(v), 0))
    for name, m in sorted(_json("curves.json").items()):
        for h in m.get("history", []) if isinstance(m, dict) else []:
            for k in ("train_loss", "train_acc"):
                if k in h:
                    out.append((f"curve/{name}/{k}", float(h[k]), int(h.get("epoch", 0))))
    if (run_dir / "records.csv").is_file():
        rec = pd.read_csv(run_dir / "records.csv")
        for pid, g in rec.groupby("path_id", sort=False):
            for _, r in g.iterrows():
                for k in ("clean_acc", "robust_acc", "clean_loss", "robust_loss"):
                    out.append((f"path/{pid}/{k}", float(r[k]), int(round(1000 * r["t"]))))
    if (run_dir / "tables" / "summary.csv").is_file():
        s = pd.read_csv(run_dir / "tables" / "summary.csv")
        skip = ("align", "curve", "pairs")
        for _, r in s.iterrows():
            for k, v in r.items():
                if k not in skip and not str(k).endswith(("_lo", "_hi", "_std")) and pd.notna(v):
                    out.append((f"summary/{r['align']}-{r['curve']}/{k}", float(v), 0))
    return out


def check_available(*, tensorboard: bool = False, wandb: bool = False) -> None:
    """Raise a one-line UserError when a requested tracker's package is missing."""
    import importlib.util

    if tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package "
                            "(pip install tensorboard)") from None
    if wandb and importlib.util.find_spec("wandb") is None:
        raise UserError("--wandb-offline needs the wandb package (pip install wandb)")


def log_tensorboard(run_dir: str | Path) -> Path:
    """Write the run's :func:`scalars` as TensorBoard events; returns the log folder."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package (pip install tensorboard)") \
            from None
    logdir = Path(run_dir) / "tensorboard"
    with SummaryWriter(log_dir=str(logdir)) as w:
        for tag, value, step in scalars(run_dir):
            w.add_scalar(tag, value, step)
        cfg = Path(run_dir) / "config.json"
        if cfg.is_file():
            w.add_text("config", "```\n" + cfg.read_text() + "\n```")
    return logdir


def log_wandb_offline(run_dir: str | Path, project: str = "robustpath") -> Path:
    """Log the run's :func:`scalars` to an offline W&B run in ``<run>/wandb/``."""
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb-offline needs the wandb package (pip install wandb)") from None
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() \
        else {}
    run = wandb.init(project=project, mode="offline", dir=str(run_dir), config=cfg,
                     name=run_dir.name, reinit=True)
    for tag, value, step in scalars(run_dir):
        run.log({tag: value, "step": step})
    run.finish()
    return run_dir / "wandb"


@cli_main
def main(argv: list[str] | None = None) -> int:
    from robustpath.cli import ArgumentParser

    p = ArgumentParser(prog="python -m robustpath.report.tracking",
                       description="Log a finished run folder to TensorBoard (and W&B offline).")
    p.add_argument("run", help="run folder (with records.csv)")
    p.add_argument("--wandb-offline", action="store_true", help="also log to W&B in offline mode")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not (Path(args.run) / "records.csv").is_file():
        raise UserError(f"{args.run} is not a run folder (no records.csv)")
    print(f"TensorBoard events: {log_tensorboard(args.run)}")
    if args.wandb_offline:
        print(f"W&B offline run: {log_wandb_offline(args.run)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
