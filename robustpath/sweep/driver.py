"""Running a sweep: prepare the folder, plan, execute, write cells, aggregate.

Sweep folder (``--out``, default ``runs/<name>``)::

    sweep.json  sweep.toml  command.txt  provenance.json   what was asked, resolved
    ckpt/<stage>/...       the stage cache shared by all cells (robustpath.engine.stages)
    cells/<cell>/          one benchmark run folder per cell (as robustpath.bench
                           writes it) + done.json, written last
    aggregate/             the table across cells (robustpath.sweep.report.sweep_report)
    status.json            each cell's state, updated as the sweep runs
    tasks.json             this run's tasks: stage, seconds, computed or cached, host
    manifest.json          the commit record of the sweep's own outputs (below)

A cell whose ``done.json`` matches its configuration is skipped, so a rerun of a
finished sweep runs no task, and a rerun after a crash runs only the unfinished
cells, whose finished stages come from the stage cache.

Faults (issue 17): a sweep holds its folder's run lock (:func:`robustpath.io.lock.run_lock`)
from start to end, so a second sweep (or ``report``) into the same folder fails at
once with one line naming the holder, as ``robustpath.bench`` does. Each cell is an
atomic run folder of its own (:func:`robustpath.io.outputs.write_run`); the sweep's own
outputs - ``sweep.json``, ``sweep.toml``, ``command.txt``, ``provenance.json``,
``tasks.json`` and ``aggregate/`` - are written at the end into ``<out>/.staging/``
and published together by :func:`robustpath.io.runfolder.commit` (manifest last), so a
kill at any moment leaves the previous sweep's outputs or the new ones, never a
mix (a first sweep killed before its end has none yet; rerun it). Stage cache entries
under ``ckpt/``, shared by the cells and by Ray workers, are computed under
:func:`robustpath.io.lock.entry_lock`: one process computes, the others wait and load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from robustpath import data as data_mod
from robustpath.engine.assemble import cell_outputs
from robustpath.engine.executors import EXECUTORS
from robustpath.engine.nodes import Context, run_data
from robustpath.engine.plan import CellPlan, Plan, build_plan
from robustpath.errors import UserError
from robustpath.io import runfolder, store
from robustpath.io.lock import run_lock
from robustpath.io.outputs import comparable, write_run
from robustpath.io.store import atomic_write_json, atomic_write_text, config_hash, provenance
from robustpath.sweep.report import SWEEP_SOURCES, sweep_report
from robustpath.sweep.spec import Cell, Sweep
from robustpath.sweep.tracker import Tracker


@dataclass
class SweepResult:
    """What a sweep run did: cells done (including earlier runs), failed (name ->
    error), skipped because an earlier run finished them; tasks run; the plan."""

    out: Path
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    tasks: list[dict] = field(default_factory=list)
    plan: Plan | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def cell_hash(cell: Cell) -> str:
    return config_hash(comparable(cell.cfg.to_dict()))


def _place(sweep: Sweep, out: Path) -> None:
    """Point every cell at ``out/cells/<name>`` and make its data root absolute (the
    default ``./data`` or ``$ROBUSTPATH_DATA`` as seen from here), so Ray workers that
    start in another folder read the same files."""
    for cell in sweep.cells:
        cell.cfg.out = str(out / "cells" / cell.name)
        cell.cfg.data_root = str(Path(cell.cfg.data_root or data_mod.DEFAULT_DATA_ROOT).resolve())


def _finished_before(cell: Cell) -> bool:
    done = store.read_json(Path(cell.cfg.out) / "done.json") or {}
    return done.get("config") == cell_hash(cell) and (Path(cell.cfg.out) / "records.csv").is_file()


def _check_conflicts(sweep: Sweep, overwrite: bool) -> None:
    for cell in sweep.cells:
        old = store.read_json(Path(cell.cfg.out) / "config.json")
        if old and comparable(old) != comparable(cell.cfg.to_dict()) and not overwrite:
            raise UserError(f"{cell.cfg.out} holds a cell with a different configuration; "
                            "use another --out or pass --overwrite")


def write_cell(cp: CellPlan, results: dict[str, dict], command: str) -> None:
    """Write a cell's run folder (:func:`robustpath.io.outputs.write_run`), then ``done.json``."""
    cfg = cp.cell.cfg
    out = cell_outputs(cp, results)
    # done.json of an earlier run goes first: a kill between the commit of the new run
    # and its done.json must not leave the new records marked as the old cell's
    (Path(cfg.out) / "done.json").unlink(missing_ok=True)
    write_run(cfg.out, cfg, out, command=f"{command}  # cell {cp.cell.name}")
    atomic_write_json(Path(cfg.out) / "done.json", {"config": cell_hash(cp.cell),
                                                    "finished": time.time()})


def _attack_note(sweep: Sweep) -> str:
    from robustpath.report.style import attack_label

    notes = {attack_label(c.cfg.attack, c.cfg.norm, c.cfg.eps, c.cfg.eval_steps)
             for c in sweep.cells}
    return f"Evaluation attack: {notes.pop()}." if len(notes) == 1 else ""


def _write_meta(sweep: Sweep, out: Path, command: str) -> None:
    """What was asked, resolved (into the staging folder of the sweep's publication)."""
    meta = sweep.to_dict()
    for entry, cell in zip(meta["cells"], sweep.cells):  # which results belong to this sweep
        entry["config"] = cell_hash(cell)                # (report checks each cell's done.json)
    meta["attack_note"] = _attack_note(sweep)
    meta["bootstrap"] = sweep.cells[0].cfg.bootstrap
    atomic_write_json(out / "sweep.json", meta)
    atomic_write_text(out / "sweep.toml", sweep.text)
    atomic_write_text(out / "command.txt", command + "\n")
    atomic_write_json(out / "provenance.json", provenance())


def cell_settings(cfg) -> str:
    """A cell's resolved settings in one line (what ``--dry-run`` shows)."""
    from robustpath.report.style import attack_label

    atk = attack_label(cfg.attack, cfg.norm, cfg.eps, cfg.eval_steps)
    return (f"{cfg.dataset}/{cfg.arch} x{cfg.width:g}, seeds {','.join(map(str, cfg.seeds))}, "
            f"align {','.join(cfg.align)}, paths {','.join(cfg.paths)}, epochs "
            f"{cfg.endpoint_epochs}+{cfg.curve_epochs} (curve), train {cfg.train_subset or 'all'}"
            f" / test {cfg.test_subset or 'all'} examples, {cfg.t_points} t, {atk}, "
            f"plane grid {cfg.plane_grid or 'off'}")


def describe_plan(sweep: Sweep, plan: Plan, skipped: list[str], out: Path | None = None) -> str:
    """The plan in a few lines: the output folder, task counts, and per cell its task
    count, its resolved settings and its folder (finished cells are listed as such)."""
    counts = ", ".join(f"{k} {v}" for k, v in plan.counts().items())
    lines = [f"sweep {sweep.name}: {len(sweep.cells)} cells ({len(skipped)} finished before), "
             f"{len(plan.nodes)} tasks ({counts or 'none'})"]
    if out is not None:
        lines.append(f"output folder: {out}/ (cells in {out / 'cells'}/, table across cells in "
                     f"{out / 'aggregate'}/)")
    for cell in sweep.cells:
        cp = plan.cells.get(cell.name)
        state = f"{len(cp.nodes())} tasks" if cp is not None else "finished before"
        lines.append(f"  {cell.name}: {state}\n      {cell_settings(cell.cfg)}")
    return "\n".join(lines)


def _plan(sweep: Sweep, out: Path, overwrite: bool) -> SweepResult:
    """Check the cells against ``out``, plan the unfinished ones, print the plan."""
    _check_conflicts(sweep, overwrite)
    skipped = [c.name for c in sweep.cells if _finished_before(c)]
    todo = [c for c in sweep.cells if c.name not in skipped]
    plan = build_plan(todo)
    print(describe_plan(sweep, plan, skipped, out), flush=True)
    return SweepResult(out, skipped=list(skipped), plan=plan)


def _publish(sweep: Sweep, out: Path, command: str, tracker: Tracker) -> None:
    """The sweep's own outputs (``SWEEP_SOURCES`` + ``aggregate/``) staged in
    ``<out>/.staging/``, then committed together (:mod:`robustpath.io.runfolder`)."""
    stage = runfolder.begin(out)
    _write_meta(sweep, stage, command)
    atomic_write_json(stage / "tasks.json", tracker.tasks_record())
    sweep_report(out, rebuild=False, staging=stage)
    runfolder.commit(out, list(SWEEP_SOURCES))


def run_sweep(sweep: Sweep, out: str | Path, *, executor: str = "local",
              address: str | None = None, max_parallel: int = 0, workers: int = 1,
              progress: bool = True,
              overwrite: bool = False, command: str = "", dry_run: bool = False) -> SweepResult:
    """Run ``sweep`` into ``out`` with ``executor`` (``local`` or ``ray``), holding
    ``out``'s run lock; the sweep's outputs are published together at the end."""
    start = time.time()
    out = Path(out)
    from robustpath.engine import ray_executor  # noqa: F401  (registers "ray"; imports ray only when used)

    exe = EXECUTORS.get(executor)(address=address, max_parallel=max_parallel, workers=workers)
    _place(sweep, out)
    if dry_run:  # reads only: no lock, nothing written
        return _plan(sweep, out, overwrite)
    if executor == "local":  # missing data fails here, before anything is written (Ray:
        for cell in sweep.cells:  # in the task)
            if not _finished_before(cell):
                run_data(cell.cfg)
    store.check_writable(out)
    # one writer per sweep folder: a second sweep into it fails here, naming the holder
    with run_lock(out):
        runfolder.recover(out)  # finish or discard a publication a kill interrupted
        result = _plan(sweep, out, overwrite)
        plan = result.plan
        ctx = Context.from_env(out, progress and exe.stage_progress)
        slots = exe.prepare() if plan.nodes else 1.0
        tracker = Tracker(plan, out,
                          on_cell=lambda name, res: write_cell(plan.cells[name], res, command),
                          slots=slots, done_before=tuple(result.skipped), progress=progress)
        try:
            if plan.nodes:
                exe.execute(plan, ctx, tracker, sweep.resources)
        finally:
            tracker.close()
        result.done = [c for c, s in tracker.state.items() if s == "done"]
        result.failed = dict(tracker.errors)
        for c, s in tracker.state.items():  # a cell can only end unfinished if a task was lost
            if s not in ("done", "failed"):
                result.failed[c] = "did not finish"
        result.tasks = list(tracker.results.values())
        _publish(sweep, out, command, tracker)
    result.seconds = time.time() - start
    return result
