"""The comparison: the engine's plan over zoo endpoints, and what is the zoo's own.

``python -m robustpath.zoo compare`` runs the plan bench and sweeps run: one cell whose
endpoints come from the ``zoo`` source (:mod:`robustpath.zoo.source`), built by
:func:`robustpath.engine.plan.build_plan`, executed by the engine's local executor
(:func:`robustpath.engine.run.execute`; ``--workers``), assembled by
:func:`robustpath.engine.assemble.cell_outputs` and written by the bench's writer
(:func:`robustpath.io.outputs.write_staged`). So every node type runs here as in the
bench: alignment, curves, evaluation (point cache, ``t_batch``), the strong stage,
``--curvature``, ``--plane-grid``, ``--renorm``. What is the zoo's own is post-processing
of the engine's results, cached under ``<out>/ckpt/``: the equivalence record (the path's
ends are the loaded models, the aligned B is B), the transfer check along the whole
path, the pairwise barrier matrix, ``models.json``, one report per pair.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robustpath import runtime
from robustpath.attacks.base import build_attack
from robustpath.device import resolve
from robustpath.engine import keys as stage_keys
from robustpath.engine import stages, stages_align
from robustpath.errors import UserError
from robustpath.io import store
from robustpath.io.lock import run_lock
from robustpath.io.outputs import comparable
from robustpath.io.records import write as write_records
from robustpath.io.store import atomic_write_json, atomic_write_text, config_hash
from robustpath.paths.evaluate import PathResult
from robustpath.report.style import format_eps
from robustpath.zoo.access import checkpoint_path, describe
from robustpath.zoo.config import CompareConfig
from robustpath.zoo.matrix import barrier_matrix, plot_barrier_matrix
from robustpath.zoo.plan import resolve_pairs
from robustpath.zoo.source import ZooStageConfig, endpoint, forget_endpoints, stage_config


@dataclass
class _Cell:
    """The comparison's one cell: the run folder's name and the engine's configuration."""

    name: str
    cfg: ZooStageConfig


class _PathNets:
    """One path's networks for the zoo's own checks, loaded on first use from the stage
    cache the plan filled (the stage functions return their stored outputs)."""

    def __init__(self, scfg: ZooStageConfig, method: str, kind: str, a: str, b: str,
                 run_dir: Path, data, device, progress: bool):
        self.scfg, self.method, self.kind, self.a, self.b = scfg, method, kind, a, b
        self.run_dir, self.data, self.device, self.progress = run_dir, data, device, progress
        self.held: dict = {}

    def model(self, name: str):
        return endpoint(self.scfg, name).model()

    def aligned_b(self):
        if "b" not in self.held:
            a, b = endpoint(self.scfg, self.a), endpoint(self.scfg, self.b)
            self.held["b"] = stages_align.alignment(
                self.scfg, self.method, a.model(), b.model(), a.key, b.key, self.run_dir,
                self.data, self.device, self.progress)
        return self.held["b"][0]

    def curve(self):
        if "c" not in self.held:
            a = endpoint(self.scfg, self.a)
            b_aligned, akey = self.aligned_b(), self.held["b"][2]
            self.held["c"] = stages.curve(self.scfg, self.kind, a.model(), b_aligned, a.key,
                                          akey, self.run_dir, self.data, self.device,
                                          self.progress)[0].eval()
        return self.held["c"]


def _equivalence(nets: _PathNets, ekey: str, desc: str) -> dict:
    """The path's endpoints must be the loaded models, the aligned B must be B (checked
    once per path and model files; a rerun reads the record)."""
    from robustpath.align.equivalence import check_same_function

    qpath = nets.run_dir / "ckpt" / "equivalence" / f"{ekey}.json"
    check = store.read_json(qpath)
    if isinstance(check, dict) and {"aligned_b_vs_b", "t0_vs_a", "t1_vs_b"} <= set(check):
        return check
    a, b = nets.model(nets.a), nets.model(nets.b)
    c0, x_chk = nets.curve(), nets.data.x_test
    check = {
        "aligned_b_vs_b": check_same_function(b, nets.aligned_b(), x_chk,
                                              what=f"{nets.method} alignment of {nets.b}"),
        "t0_vs_a": check_same_function(a, c0.model_at(0.0), x_chk, what=f"{desc} at t = 0"),
        "t1_vs_b": check_same_function(b, c0.model_at(1.0), x_chk, what=f"{desc} at t = 1")}
    atomic_write_json(qpath, check)
    return check


def _transfer(nets: _PathNets, cfg: CompareConfig, res: PathResult, ekey: str,
              desc: str) -> pd.DataFrame:
    """The transfer check along the whole path (:func:`robustpath.strong.transfer.transfer_check`),
    cached as ``ckpt/transfer/<key>.json``."""
    from robustpath.strong.transfer import transfer_check

    tkey = config_hash({"eval": ekey, "transfer": cfg.eval_attack().to_dict(), "test": "mcnemar"})
    path = nets.run_dir / "ckpt" / "transfer" / f"{tkey}.json"
    try:
        d = json.loads(path.read_text())
        return pd.DataFrame(d["data"], columns=d["columns"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    c, data = nets.curve(), nets.data
    setup = stages.point_setup(nets.scfg, data, nets.device, recompute_ends=cfg.bn_endpoints)
    sources = {"a": setup.prepare(c.model_at, 0.0), "b": setup.prepare(c.model_at, 1.0)}
    frame, _ = transfer_check(c.model_at, res, data.x_test, data.y_test, sources,
                              build_attack(cfg.eval_attack(), data.num_classes), setup,
                              progress=nets.progress, desc=f"transfer {desc}")
    atomic_write_json(path, frame.to_dict(orient="split"))
    return frame


def _comparable(d: dict) -> dict:
    """The bench's :func:`robustpath.io.outputs.comparable` (every ``Runtime`` field, where the
    run writes and reads data: dropped by construction), less where the zoo's checkpoints
    live and whether they are trusted (``--trust-checkpoints``: how they are read). A
    config.json written before the shared schema named ``eval_steps`` ``steps``."""
    d = dict(d)
    if "steps" in d:
        d.setdefault("eval_steps", d.pop("steps"))
    out = {k: v for k, v in comparable(d).items() if k not in ("model_dir", "trust_checkpoints")}
    if out.get("plane_grid", 0) == 0:  # the plane stage joined the zoo later: off is as before
        out.pop("plane_grid", None)
    return out


def _labelled(frame: pd.DataFrame, a: str, b: str, align: str, curve: str) -> pd.DataFrame:
    frame = frame.copy()
    for i, (k, v) in enumerate((("model_a", a), ("model_b", b), ("align", align),
                                ("curve", curve))):
        frame.insert(i, k, v)
    return frame


def run_compare(cfg: CompareConfig, *, progress: bool = True, overwrite: bool = False,
                command: str | None = None, workers: int | None = None) -> Path:
    """Compare every pair of ``cfg``; returns the run folder. Nothing is written before
    the pairs, checkpoints and data have been checked; one writer per folder (a second
    one fails naming the holder); the outputs appear together (:mod:`robustpath.io.runfolder`).
    ``workers``: processes running independent stage nodes (default 1: each worker would
    load its own copy of the models); the results do not depend on it."""
    from robustpath.engine import nodes
    from robustpath.engine.plan import build_plan
    from robustpath.io import runfolder
    from robustpath.paths.curvature import check_examples

    workers = 1 if workers is None else int(workers)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    device = resolve(cfg.device)
    pairs, skipped = resolve_pairs(cfg)
    entries = {m: describe(m, cfg.dataset, cfg.threat) for m in cfg.models}
    cfg_dict = dict(cfg.to_dict(), threat=cfg.threat,  # RobustBench's name, for readers
                    arch="+".join(sorted({entries[m].arch for p in pairs for m in p})))
    scfg = stage_config(cfg, written=cfg_dict)
    used = [m for m in cfg.models if any(m in p for p in pairs)]
    for m in used:  # fail (or download) before any work when a checkpoint file is missing
        endpoint(scfg, m).ensure_file()
    data = stages.RunData.load(scfg)  # missing data fails here, before anything is written
    check_examples(scfg, len(data.x_test))  # --curvature N > the test examples: before work
    from robustpath.paths.repair import plane_note

    if note := plane_note(scfg):  # loss planes ignore --renorm: say so before work
        print(note, file=sys.stderr)
    run_dir = Path(cfg.out)
    store.check_writable(run_dir)
    with run_lock(run_dir):
        runfolder.recover(run_dir)
        old = store.read_json(run_dir / "config.json")
        if isinstance(old, dict) and _comparable(old) != _comparable(cfg_dict) and not overwrite:
            raise UserError(f"{run_dir} holds a comparison with a different configuration; "
                            "use another --out or pass --overwrite")
        nodes.keep_data(scfg, data)  # in process: the data loaded above, not a second copy
        plan = build_plan([_Cell(run_dir.name, scfg)], source="zoo")
        try:
            with runtime.use(runtime.Runtime.of(scfg, progress=progress, workers=workers)):
                return _run_locked(plan, scfg, cfg, data, device, pairs, skipped, used,
                                   progress, command, workers)
        finally:
            forget_endpoints()


def _run_locked(plan, scfg: ZooStageConfig, cfg: CompareConfig, data, device, pairs, skipped,
                used, progress: bool, command, workers: int) -> Path:
    from robustpath.engine.assemble import cell_outputs, stage_timings
    from robustpath.engine.run import execute
    from robustpath.io import runfolder
    from robustpath.io.outputs import write_staged
    from robustpath.report.run import build_report, format_summary
    from robustpath.strong import files as strong_io
    from robustpath.strong.transfer import write_transfer

    start = time.perf_counter()
    run_dir = Path(cfg.out)
    results = execute(plan, run_dir, workers=workers, progress=progress,
                      threads=1 if device.type == "cpu" else None)
    cp = plan.cells[run_dir.name]
    out = cell_outputs(cp, results)
    out.timings = stage_timings(plan, results, time.perf_counter() - start)
    out.alignment = {f"{m}:{a}:{b}": results[n]["report"] for (m, (a, b)), n in cp.aligns.items()}
    # the zoo's own, from the engine's results: equivalence records and transfer checks
    checks: dict[str, dict] = {}
    transfer_frames, flagged = [], []
    for (method, kind, (a, b)), pn in cp.paths.items():
        nets = _PathNets(scfg, method, kind, a, b, run_dir, data, device, progress)
        ekey = stage_keys.eval_key(scfg, results[pn.curve]["key"])
        desc = f"{method}/{kind} {a} vs {b}"
        checks[f"{method}-{kind}:{a}:{b}"] = _equivalence(nets, ekey, desc)
        if cfg.transfer:
            frame = _transfer(nets, cfg, results[pn.eval]["result"], ekey, desc)
            if frame["stronger"].any():
                ts_bad = ", ".join(f"{t:.2f}" for t in frame.loc[frame["stronger"], "t"])
                flagged.append(f"{desc} (t = {ts_bad})")
            transfer_frames.append(_labelled(frame, a, b, method, kind))
    records = out.records
    cfg_dict = scfg.to_dict()
    entries = {m: describe(m, cfg.dataset, cfg.threat) for m in cfg.models}
    index = {m: i for i, m in enumerate(cfg.models)}
    title = (f"{cfg.dataset} {cfg.threat} RobustBench zoo, {cfg.attack}-{cfg.eval_steps} "
             f"eps={format_eps(cfg.eps)}")
    sd = runfolder.begin(run_dir)  # every output staged, then committed together
    atomic_write_json(sd / "models.json", {
        str(index[m]): dict(entries[m].to_dict(), checkpoint=str(checkpoint_path(
            cfg.model_dir, cfg.dataset, cfg.threat, m)),
            key=endpoint(scfg, m).key if m in used else None,
            sha256=endpoint(scfg, m).sha256 if m in used else None)
        for m in cfg.models})
    atomic_write_json(sd / "equivalence.json", checks)
    # config, records, strong, plane, curvature and the report: the bench's writer
    summary, primary = write_staged(sd, scfg, out, command)
    for a, b in pairs if len(pairs) > 1 else []:  # one pair: the run folder is its report
        pdir = sd / "pairs" / f"{a}__{b}"
        atomic_write_json(pdir / "config.json", dict(cfg_dict, arch=entries[a].arch, models=[a, b]))
        write_records(pdir, [r for r in records if r.endpoints == (a, b)])
        build_report(pdir)
    matrix = barrier_matrix(records, cfg.models, cfg.bootstrap)
    atomic_write_text(sd / "barrier_matrix.csv", matrix.to_csv(index=False, float_format="%.6f"))
    plot_barrier_matrix(matrix, cfg.models, sd / "plots", title)
    if transfer_frames:
        write_transfer(pd.concat(transfer_frames, ignore_index=True), sd, bool(flagged),
                       title=f"# {title}")
    runfolder.commit(run_dir, primary)
    print(format_summary(summary, cfg_dict))
    for a, b in skipped:
        print(f"skipped {a} vs {b}: different architectures")
    if out.stages.get("strong"):
        s = strong_io.frame(out.stages["strong"])
        print(f"\nAutoAttack ({cfg.aa_version}) vs {cfg.attack}-{cfg.eval_steps} on "
              f"{int(s['n'].iloc[0])} examples: largest gap {100 * s['gap_pgd_aa'].max():.1f} "
              f"points; see strong_eval.md and cards/")
    for f in flagged:
        print(f"WARNING: possible gradient masking on {f}: transfer attacks from the endpoints "
              "beat the direct attack (transfer.md)")
    print(f"\n{len(records)} path{'s' if len(records) != 1 else ''} over {len(pairs)} "
          f"pair{'s' if len(pairs) != 1 else ''}; outputs in {run_dir}/ "
          "(tables/summary.md, barrier_matrix.csv, plots/)")
    return run_dir
