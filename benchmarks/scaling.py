"""How much two cores give this machine: one node's work alone, as two concurrent
single-thread processes (what ``--workers 2`` does) and as one process with two torch
threads (what a serial run with torch's default threads does).

The work unit is a real stage computation: ``robustpath.train.loop.train_endpoint`` on
the quick preset's layers and attack (cnn-small, Fashion-MNIST, PGD-5 eps 0.1, batch 128)
for one epoch on ``images`` training images, then clean and PGD-10 accuracy on 200 test
images. Each round runs, in rotated order:

* ``alone``: one unit in one spawned process with one torch thread;
* ``workers``: ``n`` units at once in ``n`` spawned processes, one thread each, started
  together after a warm-up unit each (wall time from the first start to the last end,
  and each process's own time);
* ``threads``: one unit in one spawned process with ``n`` torch threads.

Reported per round: the workers' speed-up ``n x alone / workers wall`` (``n`` is the
ideal; walls from start to end, data loading included), each worker's training time
against the same training alone (1.0 is no contention), and the threads' speed-up
``alone / threads``. If two single-thread processes slow each other
down by a factor s, no schedule of independent one-thread nodes can run a plan faster
than ``node-seconds alone x s / n``: this bounds what issue 29's parallel runner can
reach on the machine (``python -m benchmarks --only scaling``).
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from dataclasses import dataclass, field


def _unit(images: int, threads: int, seed: int) -> float:
    """One work unit in this process with ``threads`` torch threads; its seconds."""
    import torch

    from robustpath import data as data_mod
    from robustpath.attacks.base import AttackConfig
    from robustpath.train.loop import TrainConfig, train_endpoint

    torch.set_num_threads(threads)
    data = data_mod.load_subsets("fashion-mnist", None, images, 200)
    cfg = TrainConfig(seed=seed, epochs=1, batch_size=128, lr=0.05, train_subset=images,
                      test_subset=200, attack=AttackConfig(name="pgd", eps=0.1, steps=5),
                      eval_attack=AttackConfig(name="pgd", eps=0.1, steps=10, seed=0))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_endpoint(cfg, f"{tmp}/ep", progress=False, data=data)
        return time.perf_counter() - start


def _process(images: int, threads: int, seed: int, barrier, results) -> None:
    """A spawned process: a warm-up unit (imports, first oneDNN primitives), then, once
    every process of the variant is ready, the timed unit; reports its start and end
    (wall clock, comparable across processes: start to end includes loading the data) and
    its own seconds (the training alone)."""
    _unit(128, threads, seed)
    barrier.wait()
    start = time.time()
    own = _unit(images, threads, seed)
    results.put((start, time.time(), own))


def _run(n_procs: int, threads: int, images: int) -> tuple[float, list[float]]:
    """``n_procs`` units started together in fresh spawned processes; (wall s from the
    first start to the last end, each unit's own s)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_process, args=(images, threads, i, barrier, results))
             for i in range(n_procs)]
    for p in procs:
        p.start()
    got = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a scaling process failed (exit {p.exitcode})")
    return max(g[1] for g in got) - min(g[0] for g in got), [g[2] for g in got]


@dataclass
class Scaling:
    n: int
    images: int
    alone: list[float] = field(default_factory=list)       # wall, start to end
    alone_own: list[float] = field(default_factory=list)   # the training alone
    workers_wall: list[float] = field(default_factory=list)
    workers_each: list[list[float]] = field(default_factory=list)
    threads: list[float] = field(default_factory=list)

    def workers_speedup(self) -> list[float]:
        return [self.n * a / w for a, w in zip(self.alone, self.workers_wall)]

    def slowdown(self) -> list[float]:
        return [statistics.mean(e) / a for a, e in zip(self.alone_own, self.workers_each)]

    def threads_speedup(self) -> list[float]:
        return [a / t for a, t in zip(self.alone, self.threads)]


def run(n: int = 2, images: int = 5000, rounds: int = 3, log=None) -> Scaling:
    out = Scaling(n, images)
    variants = ["alone", "workers", "threads"]
    for r in range(rounds):
        got = {}
        for v in variants[r % 3:] + variants[:r % 3]:
            got[v] = _run(n if v == "workers" else 1, n if v == "threads" else 1, images)
            if log:
                log(f"scaling round {r + 1}/{rounds}: {v} done")
        out.alone.append(got["alone"][0])
        out.alone_own.append(got["alone"][1][0])
        out.workers_wall.append(got["workers"][0])
        out.workers_each.append(got["workers"][1])
        out.threads.append(got["threads"][0])
    return out


def _fmt(xs: list[float]) -> str:
    return f"**{statistics.median(xs):.2f}x** ({min(xs):.2f}-{max(xs):.2f})"


def section(s: Scaling, command: str, machine_note: str) -> list[str]:
    """The Markdown section for ``benchmarks/RESULTS.md``."""
    return [
        "## Two cores: concurrent single-thread workers against two threads", "",
        (f"`benchmarks/scaling.py`: one unit = `train_endpoint` of cnn-small for one epoch on "
         f"{s.images} Fashion-MNIST images (PGD-5, batch 128) plus clean and PGD-10 accuracy "
         f"on 200 test images; {len(s.alone)} rounds, variants in rotated order, each in "
         "fresh spawned processes after a warm-up unit."), "",
        f"- command: `{command}`", f"- {machine_note}", "",
        "| quantity | median over rounds (range) | ideal |", "|---|---|---|",
        f"| one unit alone, 1 thread | {statistics.median(s.alone):.1f} s | - |",
        f"| {s.n} units at once, 1 thread each: speed-up {s.n} x alone / wall | "
        f"{_fmt(s.workers_speedup())} | {s.n:.2f}x |",
        f"| each concurrent unit's time / alone (contention) | {_fmt(s.slowdown())} | 1.00x |",
        f"| one unit with {s.n} threads: speed-up alone / it | {_fmt(s.threads_speedup())} | "
        f"{s.n:.2f}x |", "",
        ("A run of independent one-thread nodes on this machine can be at most the workers' "
         "speed-up faster than the same nodes run one after the other; the default run's "
         "serial node-seconds divided by it is the best wall time any schedule reaches."), ""]
