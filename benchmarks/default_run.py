"""The default run's wall time with 1 and 2 workers (section ``run`` of ``python -m benchmarks``).

Runs ``python -m robustpath.bench --no-progress --workers N`` from scratch (a fresh
folder, so nothing is cached) for each N, in a subprocess with the environment a user
has (torch's threads as the bench sets them: one per node), and reports per N:

* wall seconds (what the user waits), and the speed-up of N workers over one;
* node-seconds per stage from the run's ``timings.json`` (summed over nodes, so with two
  workers they add up to more than the wall time) and the strong stage's share of the
  rest of the run (the budget of issue 29: at most a quarter);
* whether ``records.csv`` and ``examples.npz`` are byte-identical between the worker
  counts, and, for the default settings, against the committed run
  ``results/fashion-mnist-cnn-small-quick``.

About 45 minutes on 2 idle cores with the default settings (one serial run, one with two
workers), so the section is opt-in: ``python -m benchmarks --only run``.
``--run-args`` passes extra bench flags (``--quick`` uses a tiny setting: a smoke test).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from robustpath.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "results" / "fashion-mnist-cnn-small-quick"
COMPARED = ("records.csv", "examples.npz", "strong_examples.npz", "plane.npz")
#: the bench flags of ``--quick``: a seconds-long smoke test of the section, not a figure
TINY = ["--arch", "mlp", "--seeds", "0,1", "--align", "none,weight", "--paths", "line,bezier",
        "--train-subset", "300", "--test-subset", "40", "--epochs", "1", "--curve-epochs", "1",
        "--t-points", "3", "--train-steps", "1", "--steps", "2", "--bn-batches", "1",
        "--bootstrap", "20", "--plane-grid", "3", "--strong-examples", "6", "--aa-version",
        "custom", "--aa-attacks", "apgd-ce", "--strong-pgd-steps", "2",
        "--strong-pgd-restarts", "1", "--refine-rounds", "1"]


@dataclass
class RunTiming:
    """One bench run: its worker count, wall seconds and node-seconds per stage label."""

    workers: int
    wall: float
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def strong_share(self) -> float | None:
        """The strong stage's node-seconds over the rest of the run's (None without it)."""
        if "strong" not in self.stages:
            return None
        rest = sum(v for k, v in self.stages.items() if k != "strong")
        return self.stages["strong"] / rest if rest else None


@dataclass
class DefaultRun:
    """Both runs, the bench flags they used and the byte checks."""

    runs: list[RunTiming]
    bench_args: list[str]
    same_bytes: dict[str, bool]           # file -> equal across worker counts
    same_as_committed: dict[str, bool]    # file -> equal to the committed run (default flags)


#: flags the section sets itself on every bench it starts (a second value would win)
OWN_FLAGS = ("--workers", "--out")


def check_args(bench_args: list[str]) -> None:
    """Check the bench flags of ``--run-args`` as ``python -m robustpath.bench`` would,
    before any work (a typo would otherwise surface after the first, 20-minute run)."""
    from robustpath import bench

    for a in bench_args:
        flag = a.split("=", 1)[0]
        if flag in OWN_FLAGS or flag in ("-h", "--help", "--print-config"):  # no timed run
            raise UserError(f"--run-args: {flag} is not for section run (it times whole runs "
                            f"and sets {' and '.join(OWN_FLAGS)} itself)")
    try:
        bench.parse([*bench_args, "--out", str(Path(tempfile.gettempdir()) / "rp-check")])
    except UserError as e:
        raise UserError(f"--run-args: {e}") from None


def _bench(workers: int, out: Path, bench_args: list[str], log) -> RunTiming:
    cmd = [sys.executable, "-m", "robustpath.bench", "--no-progress", "--workers", str(workers),
           *bench_args, "--out", str(out)]
    log(f"  {shlex.join(cmd[1:])}")
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:  # its last line says why: its own `error:` line or the exception
        last = next((ln.strip() for ln in reversed(r.stderr.splitlines()) if ln.strip()),
                    "no output")
        raise UserError(f"section run: the bench with {workers} worker(s) failed (exit "
                        f"{r.returncode}): {last.removeprefix('error: ')}")
    timings = json.loads((out / "timings.json").read_text())
    return RunTiming(workers, wall, {s["stage"]: float(s["seconds"]) for s in timings["stages"]})


def _same(a: Path, b: Path) -> dict[str, bool]:
    """Each of :data:`COMPARED` that either folder has: equal bytes in both."""
    out = {}
    for f in COMPARED:
        if (a / f).is_file() or (b / f).is_file():
            out[f] = (a / f).is_file() and (b / f).is_file() and \
                (a / f).read_bytes() == (b / f).read_bytes()
    return out


def run(workers=(1, 2), bench_args: list[str] | None = None, log=print) -> DefaultRun:
    """Time the bench from scratch once per worker count (fresh folders)."""
    bench_args = list(bench_args or [])
    with tempfile.TemporaryDirectory(prefix="rp-default-run-") as tmp:
        timings = [_bench(w, Path(tmp) / f"w{w}", bench_args, log) for w in workers]
        first = Path(tmp) / f"w{workers[0]}"
        same = {}
        for w in workers[1:]:
            for f, ok in _same(first, Path(tmp) / f"w{w}").items():
                same[f] = same.get(f, True) and ok
        committed = _same(first, COMMITTED) if not bench_args else {}
    return DefaultRun(timings, bench_args, same, committed)


def section(d: DefaultRun, command: str, machine_note: str) -> list[str]:
    """The Markdown section of ``benchmarks/RESULTS.md``."""
    labels = list(dict.fromkeys(k for r in d.runs for k in r.stages))
    base = d.runs[0].wall
    what = ("the default run" if not d.bench_args else
            f"the bench with `{shlex.join(d.bench_args)}` (not the default run)")
    lines = [f"## Wall time of {what} with 1 and 2 workers", "",
             f"`{command}`; {machine_note}. Each run from scratch in a fresh folder; "
             "node-seconds are summed over a stage's nodes (with several workers they add up "
             "to more than the wall time).", "",
             "| workers | wall s | speed-up over 1 worker | " + " | ".join(
                 f"{k} node-s" for k in labels) + " | strong / rest |",
             "|---|---|---|" + "---|" * len(labels) + "---|"]
    for r in d.runs:
        share = "-" if r.strong_share is None else f"{100 * r.strong_share:.1f}%"
        lines.append(f"| {r.workers} | {r.wall:.0f} | {base / r.wall:.2f}x | " + " | ".join(
            f"{r.stages.get(k, 0.0):.0f}" for k in labels) + f" | {share} |")
    lines.append("")
    if d.same_bytes:
        lines.append("Byte-identical across worker counts: " + ", ".join(
            f"`{f}` {'yes' if ok else '**no**'}" for f, ok in d.same_bytes.items()) + ".")
    if d.same_as_committed:
        lines.append("Byte-identical to the committed `results/fashion-mnist-cnn-small-quick`: "
                     + ", ".join(f"`{f}` {'yes' if ok else '**no**'}"
                                 for f, ok in d.same_as_committed.items()) + ".")
    return lines + [""]
