"""The comparison itself: zoo endpoints through the shared stages.

A zoo model is an endpoint source (:class:`~robustpath.zoo.plan.ZooEndpoint`) beside the
bench's trained seeds; alignment, curve fitting, path evaluation (with the point cache and
``t_batch``), the strong stage and their caches are :mod:`robustpath.engine.stages`, the same
code the bench and sweeps run, configured by :func:`stage_config`. What is the zoo's own:
the equivalence record (the path's ends are the loaded models, the aligned B is B), the
transfer check along the whole path, the pairwise barrier matrix, ``models.json``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path

import pandas as pd
import torch

from robustpath.attacks.base import build_attack
from robustpath.config import BenchConfig, StageConfig
from robustpath.device import resolve
from robustpath.engine import keys as stage_keys
from robustpath.engine import stages, stages_align
from robustpath.errors import UserError
from robustpath.io import store
from robustpath.io.lock import run_lock
from robustpath.io.outputs import comparable
from robustpath.io.records import PathRecord
from robustpath.io.records import write as write_records
from robustpath.io.store import atomic_write_json, atomic_write_text, config_hash, provenance
from robustpath.paths.evaluate import PathResult
from robustpath.report.style import format_eps
from robustpath.zoo.access import checkpoint_path, describe
from robustpath.zoo.config import CompareConfig
from robustpath.zoo.matrix import barrier_matrix, plot_barrier_matrix
from robustpath.zoo.plan import ZooEndpoint, resolve_pairs


def stage_config(cfg: CompareConfig) -> BenchConfig:
    """The shared stages' settings for a comparison: the same dataclass the bench runs,
    every shared group (:class:`robustpath.config.StageConfig`) taken from the zoo's
    config as it is (``arch``/``seeds`` are unused: endpoints come from the zoo)."""
    shared = {f.name: getattr(cfg, f.name) for f in fields(StageConfig)}
    return BenchConfig(preset="zoo", arch="zoo", seeds=[], **copy.deepcopy(shared))


class CompareRun:
    """The stages of one comparison; every output is cached under ``<out>/ckpt/``.
    Models and data are loaded only when a stage has to be computed."""

    def __init__(self, cfg: CompareConfig, device: torch.device, progress: bool = True,
                 run_dir: Path | None = None):
        self.cfg, self.device, self.progress = cfg, device, progress
        self.scfg = stage_config(cfg)
        self.dir = Path(run_dir or cfg.out)
        self.endpoints = {m: ZooEndpoint(m, cfg) for m in cfg.models}
        self._data: stages.RunData | None = None

    def data(self) -> stages.RunData:
        if self._data is None:
            self._data = stages.RunData.load(self.scfg)
        return self._data

    def model(self, name: str):
        return self.endpoints[name].model()

    def key(self, name: str) -> str:
        return self.endpoints[name].key

    def eval_keys(self, pairs: list[tuple[str, str]]) -> list[str]:
        """The evaluation cache keys of every path of ``pairs``."""
        keys = []
        for a, b in pairs:
            ka, kb = self.key(a), self.key(b)
            for method in self.cfg.align:
                akey = stage_keys.align_key(self.scfg, method, ka, kb)
                keys += [stage_keys.eval_key(self.scfg, stages.curve_key(self.scfg, k, ka, akey))
                         for k in self.cfg.paths]
        return keys

    def align_report(self, method: str, key: str) -> dict:
        if method == "none":
            return {"method": "none"}
        try:
            path = self.dir / "ckpt" / "align" / f"{method}-{key}.json"
            return json.loads(path.read_text())["report"]
        except (OSError, ValueError, KeyError):
            return {}

    def transfer(self, c, res: PathResult, key: str, desc: str) -> pd.DataFrame:
        from robustpath.strong.transfer import transfer_check

        data = self.data()
        setup = stages.point_setup(self.scfg, data, self.device,
                                   recompute_ends=self.cfg.bn_endpoints)
        sources = {"a": setup.prepare(c.model_at, 0.0), "b": setup.prepare(c.model_at, 1.0)}
        frame, _ = transfer_check(c.model_at, res, data.x_test, data.y_test, sources,
                                  build_attack(self.cfg.eval_attack(), data.num_classes), setup,
                                  progress=self.progress, desc=desc)
        atomic_write_json(self.dir / "ckpt" / "transfer" / f"{key}.json",
                          frame.to_dict(orient="split"))
        return frame

    def cached_frame(self, stage: str, key: str) -> pd.DataFrame | None:
        """A table stored by :meth:`transfer` (columns in order)."""
        try:
            d = json.loads((self.dir / "ckpt" / stage / f"{key}.json").read_text())
            return pd.DataFrame(d["data"], columns=d["columns"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _comparable(d: dict) -> dict:
    """The bench's :func:`robustpath.io.outputs.comparable` (every ``Runtime`` field, where the
    run writes and reads data: dropped by construction), less where the zoo's checkpoints
    live and whether they are trusted (``--trust-checkpoints``: how they are read). A
    config.json written before the shared schema named ``eval_steps`` ``steps``."""
    d = dict(d)
    if "steps" in d:
        d.setdefault("eval_steps", d.pop("steps"))
    return {k: v for k, v in comparable(d).items() if k not in ("model_dir", "trust_checkpoints")}


def _labelled(frame: pd.DataFrame, a: str, b: str, align: str, curve: str) -> pd.DataFrame:
    frame = frame.copy()
    for i, (k, v) in enumerate((("model_a", a), ("model_b", b), ("align", align),
                                ("curve", curve))):
        frame.insert(i, k, v)
    return frame


def run_compare(cfg: CompareConfig, *, progress: bool = True, overwrite: bool = False,
                command: str | None = None) -> Path:
    """Compare every pair of ``cfg``; returns the run folder. Nothing is written before
    the pairs, checkpoints and data have been checked; one writer per folder (a second
    one fails naming the holder); the outputs appear together (:mod:`robustpath.io.runfolder`)."""
    from robustpath.io import runfolder

    device = resolve(cfg.device)
    pairs, skipped = resolve_pairs(cfg)
    run = CompareRun(cfg, device, progress)
    used = [m for m in cfg.models if any(m in p for p in pairs)]
    for m in used:  # fail (or download) before any work when a checkpoint file is missing
        run.endpoints[m].ensure_file()
    if not all(stages.cached_eval(run.scfg, k, run.dir) is not None
               for k in _curve_keys(run, pairs)):
        run.data()  # missing data fails here, before anything is written
    store.check_writable(run.dir)
    with run_lock(run.dir):
        runfolder.recover(run.dir)
        return _run_locked(run, cfg, pairs, skipped, used, overwrite, command)


def _curve_keys(run: CompareRun, pairs) -> list[str]:
    keys = []
    for a, b in pairs:
        ka, kb = run.key(a), run.key(b)
        for method in run.cfg.align:
            akey = stage_keys.align_key(run.scfg, method, ka, kb)
            keys += [stages.curve_key(run.scfg, k, ka, akey) for k in run.cfg.paths]
    return keys


def _run_locked(run: CompareRun, cfg: CompareConfig, pairs, skipped, used, overwrite,
                command) -> Path:
    from robustpath.align.equivalence import check_same_function
    from robustpath.io import runfolder
    from robustpath.report.run import build_report, format_summary
    from robustpath.strong import files as strong_io
    from robustpath.strong.transfer import write_transfer

    scfg = run.scfg
    entries = {m: describe(m, cfg.dataset, cfg.threat) for m in cfg.models}
    cfg_dict = dict(cfg.to_dict(), threat=cfg.threat,  # RobustBench's name, for readers
                    arch="+".join(sorted({entries[m].arch for p in pairs for m in p})))
    old = store.read_json(run.dir / "config.json")
    if isinstance(old, dict) and _comparable(old) != _comparable(cfg_dict) and not overwrite:
        raise UserError(f"{run.dir} holds a comparison with a different configuration; "
                        "use another --out or pass --overwrite")
    index = {m: i for i, m in enumerate(cfg.models)}
    records: list[PathRecord] = []
    strong_paths, transfer_frames, flagged, align_reports = {}, [], [], {}
    checks: dict[str, dict] = {}
    for a, b in pairs:
        ka, kb = run.key(a), run.key(b)
        for method in cfg.align:
            akey = stage_keys.align_key(scfg, method, ka, kb)
            held_b: dict = {}

            def aligned_b(method=method, a=a, b=b, held_b=held_b):
                if "b" not in held_b:
                    held_b["b"] = stages_align.alignment(scfg, method, run.model(a), run.model(b),
                                                   run.key(a), run.key(b), run.dir, run.data(),
                                                   run.device, run.progress)
                return held_b["b"][0]

            for kind in cfg.paths:
                ckey = stages.curve_key(scfg, kind, ka, akey)
                ekey = stage_keys.eval_key(scfg, ckey)
                desc = f"{method}/{kind} {a} vs {b}"
                held: dict = {}

                def curve(kind=kind, held=held, a=a, aligned_b=aligned_b, ka=ka, akey=akey):
                    if "c" not in held:
                        held["c"] = stages.curve(scfg, kind, run.model(a), aligned_b(), ka,
                                                 akey, run.dir, run.data(), run.device,
                                                 run.progress)[0].eval()
                    return held["c"]

                # the path's endpoints must be the loaded models, the aligned B must be B
                # (checked once per path and model files; a rerun reads the record)
                qpath = run.dir / "ckpt" / "equivalence" / f"{ekey}.json"
                check = store.read_json(qpath)
                if not (isinstance(check, dict) and {"aligned_b_vs_b", "t0_vs_a", "t1_vs_b"}
                        <= set(check)):
                    c0, x_chk = curve(), run.data().x_test
                    check = {
                        "aligned_b_vs_b": check_same_function(
                            run.model(b), aligned_b(), x_chk, what=f"{method} alignment of {b}"),
                        "t0_vs_a": check_same_function(
                            run.model(a), c0.model_at(0.0), x_chk, what=f"{desc} at t = 0"),
                        "t1_vs_b": check_same_function(
                            run.model(b), c0.model_at(1.0), x_chk, what=f"{desc} at t = 1")}
                    atomic_write_json(qpath, check)
                checks[f"{method}-{kind}:{a}:{b}"] = check
                res = stages.path_eval(scfg, curve, ckey, run.dir, run.data(), run.device,
                                       run.progress, desc=f"eval {desc}")
                records.append(PathRecord(method, kind, a, b, res))  # endpoints by model name
                if cfg.strong:
                    strong_paths[records[-1].path_id] = (
                        records[-1].identity,
                        stages.strong(scfg, lambda t, curve=curve: curve().model_at(t), res,
                                      run.dir, run.data(), run.device, run.progress,
                                      desc=f"strong {desc}", endpoint_keys=(ka, kb),
                                      path_key=ekey))
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
            align_reports[f"{method}:{a}:{b}"] = (held_b["b"][1] if "b" in held_b
                                                  else run.align_report(method, akey))
            held_b.clear()

    title = (f"{cfg.dataset} {cfg.threat} RobustBench zoo, {cfg.attack}-{cfg.eval_steps} "
             f"eps={format_eps(cfg.eps)}")
    sd = runfolder.begin(run.dir)  # every output staged, then committed together
    atomic_write_json(sd / "config.json", cfg_dict)
    atomic_write_json(sd / "provenance.json", provenance())
    atomic_write_text(sd / "command.txt", (command or "") + "\n")
    atomic_write_json(sd / "models.json", {
        str(index[m]): dict(entries[m].to_dict(), checkpoint=str(checkpoint_path(
            cfg.model_dir, cfg.dataset, cfg.threat, m)),
            key=run.key(m) if m in used else None,
            sha256=run.endpoints[m].sha256 if m in used else None)
        for m in cfg.models})
    atomic_write_json(sd / "alignment.json", align_reports)
    atomic_write_json(sd / "equivalence.json", checks)
    write_records(sd, records)
    if strong_paths:  # before build_report: the summary table reads strong_examples.npz
        strong_io.write(sd, strong_paths, cfg=cfg_dict)
    primary = runfolder.outputs(sd)
    summary = build_report(sd)
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
    runfolder.commit(run.dir, primary)
    print(format_summary(summary, cfg_dict))
    for a, b in skipped:
        print(f"skipped {a} vs {b}: different architectures")
    if strong_paths:
        s = strong_io.frame(strong_paths)
        print(f"\nAutoAttack ({cfg.aa_version}) vs {cfg.attack}-{cfg.eval_steps} on "
              f"{int(s['n'].iloc[0])} examples: largest gap {100 * s['gap_pgd_aa'].max():.1f} "
              f"points; see strong_eval.md and cards/")
    for f in flagged:
        print(f"WARNING: possible gradient masking on {f}: transfer attacks from the endpoints "
              "beat the direct attack (transfer.md)")
    print(f"\n{len(records)} path{'s' if len(records) != 1 else ''} over {len(pairs)} "
          f"pair{'s' if len(pairs) != 1 else ''}; outputs in {run.dir}/ "
          "(tables/summary.md, barrier_matrix.csv, plots/)")
    return run.dir
