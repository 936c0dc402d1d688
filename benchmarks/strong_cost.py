"""The strong stage's cost in a finished run: its share of the run's time and
AutoAttack's gradient passes per example.

``python -m benchmarks.strong_cost RUN [--out benchmarks/STRONG.md]`` reads the run
folder's ``timings.json`` (written by ``bench``: seconds per stage, measured in that
run) and ``strong_eval.csv`` (AutoAttack's gradient passes per attacked example at
each point), and writes a Markdown note. The share is a ratio of two stages timed in
the same run on the same machine, so it does not depend on how loaded the machine was
as much as an absolute time does. Cached stages cost ~0 s, so use a run made from
scratch (``--out`` to a fresh folder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from robustpath.io.store import atomic_write_text


def _stages(path: Path) -> dict[str, float]:
    t = json.loads(Path(path).read_text())
    st = t["stages"]
    items = st.items() if isinstance(st, dict) else ((e["stage"], e) for e in st)
    return {k: float(v["seconds"]) for k, v in items}


def cost(run: Path, rest_from: Path | None = None) -> dict:
    """``rest_from``: the ``timings.json`` of the same configuration's run from scratch,
    when ``run`` reused its cached stages and recomputed only the strong stage."""
    stages = _stages(run / "timings.json")
    strong = stages.get("strong", 0.0)
    rest_stages = _stages(rest_from) if rest_from else stages
    rest = sum(v for k, v in rest_stages.items() if k != "strong")
    total = strong + rest
    stages = {**rest_stages, "strong": strong}
    s = pd.read_csv(run / "strong_eval.csv")
    return {"total_s": total, "strong_s": strong, "rest_s": rest,
            "added": strong / max(total - strong, 1e-9), "stages": stages,
            "points": len(s), "examples": int(s["n"].iloc[0]),
            "grad_passes": s[["path_id", "role", "t", "robust_acc_aa",
                              "aa_grad_passes"]].to_dict(orient="records")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished bench run folder (made from scratch)")
    p.add_argument("--out", default="benchmarks/STRONG.md")
    p.add_argument("--rest-from", default=None, help="timings.json of the from-scratch run "
                   "whose cached stages RUN reused (the other stages' seconds come from it)")
    args = p.parse_args(argv)
    run = Path(args.run)
    c = cost(run, Path(args.rest_from) if args.rest_from else None)
    lines = [f"# Cost of the strong stage ({run})", "",
             f"Command: `python -m benchmarks.strong_cost {run}` on the run made by "
             f"`{(run / 'command.txt').read_text().strip()}` (from scratch).", "",
             f"- whole run: {c['total_s']:.0f} s (stages, summed); strong stage: {c['strong_s']:.0f} s over "
             f"{c['points']} attacked points x {c['examples']} examples; the strong stage "
             f"adds **{100 * c['added']:.0f} %** to the rest of the run "
             f"({c['rest_s']:.0f} s).",
             "- seconds per stage (same run): " + ", ".join(
                 f"{k} {v:.0f}" for k, v in c["stages"].items()), "",
             "AutoAttack (standard) gradient passes per attacked example at each point "
             "(examples broken early stop being attacked, so robust points cost most; "
             "an unbreakable example costs about 1,900: `tests/test_strong.py`):", "",
             "| path | point | t | AA robust acc. | grad passes / example |", "|---|---|---|---|---|"]
    for r in c["grad_passes"]:
        lines.append(f"| {r['path_id']} | {r['role']} | {r['t']:.3f} | "
                     f"{100 * r['robust_acc_aa']:.1f} | {r['aa_grad_passes']:.0f} |")
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
