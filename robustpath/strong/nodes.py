"""The strong stage as engine nodes (:mod:`robustpath.engine.path_stages`), one per
attacked point, keyed by what it attacks so that paths share them.

Per path (``--no-strong`` off) the stage asks for

* ``source-a`` / ``source-b``: the evaluation attack's examples made against endpoint A
  / B (the transfer check's sources), keyed by the endpoint's function (its key): one
  node per endpoint, shared by every path that has it as an end;
* ``a``: the point t = 0, model A, keyed by A's endpoint key and the pair (its transfer
  columns are against the pair's endpoints): one node shared by every path of the pair;
* ``b``: the point t = 1, keyed by B's endpoint key and the pair: one node shared by
  every path of the pair, aligned or not. An aligned path ends at a permutation of B,
  which computes B's function (the equivalence invariant of :mod:`robustpath.align`,
  checked on every alignment); the strong point is B's, as the strong stage has always
  cached it (the committed runs' t = 1 entries are B's), and attacking each permuted copy
  again would only add float-rounding noise at the cost of one AutoAttack per method;
* ``interior``: the path's own points (PGD's worst t, every grid t with
  ``--strong-at grid``, ``extra_t``), which depend on its evaluation.

Every key holds the strong settings, BatchNorm / ``--renorm`` handling, the example
subset and the AutoAttack engine's version (:class:`robustpath.strong.stage.PointAttacker`:
the point's cache entry is keyed by these and the network). A shared node runs once,
from the first path that asks for it (whose curve at t = 0 is model A exactly, at t = 1
its aligned B exactly: :meth:`robustpath.paths.curves.Curve.flat_at` skips terms of
weight 0). The path's :class:`robustpath.strong.stage.StrongPath` is assembled from its
points (``collect``), with its own PGD outcome and transfer tests.
"""

from __future__ import annotations

from robustpath.engine.path_stages import Part, PathStage, register


def _common(cfg) -> dict:
    """What every strong node depends on besides the network: the point folder's spec
    (BatchNorm, --renorm, subsets) and the settings except ``at`` (which points are
    attacked is not a point's property)."""
    from robustpath.engine.keys import strong_spec

    settings = {k: v for k, v in cfg.strong_settings().__dict__.items() if k != "at"}
    return {"strong": strong_spec(cfg), **settings, "eval_attack": cfg.eval_attack().to_dict()}


def parts(info) -> list[Part]:
    cfg, (ka, kb) = info.cfg, info.endpoint_keys
    common = _common(cfg)
    src = ("source-a", "source-b")
    return [Part("source-a", {"strong_source": ka, **common}, params={"role": "a", "t": 0.0}),
            Part("source-b", {"strong_source": kb, **common}, params={"role": "b", "t": 1.0}),
            Part("a", {"strong_point": ka, "pair": [ka, kb], **common}, ("curve", *src)),
            Part("b", {"strong_point": kb, "pair": [ka, kb], **common}, ("curve", *src)),
            Part("interior", {"strong_path": info.eval_key, **common, "at": cfg.strong_at},
                 ("curve", "eval", *src))]


def run(inp) -> dict:
    """One strong node: a transfer source, or the points of its part."""
    from robustpath.engine.keys import eval_key
    from robustpath.engine.sources import SOURCES
    from robustpath.engine.stages import strong_attacker
    from robustpath.strong.stage import strong_ts

    curve = inp.curve
    # the zoo's interior points are keyed by path and t (its caches' keys), a seed's by
    # the network's weights
    by_path = (eval_key(inp.cfg, inp.curve_key)
               if SOURCES.get(inp.params["source"]).strong_by_path else None)
    att = strong_attacker(inp.cfg, lambda t: curve().model_at(t), inp.root, inp.data,
                          inp.device, inp.progress, inp.desc, endpoint_keys=inp.endpoint_keys,
                          path_key=by_path)
    root = inp.root
    if inp.part.startswith("source-"):
        role, t = inp.params["role"], inp.params["t"]
        att.source(role, t)
        p = att.source_path(role, t)
        return {"files": [str(p.with_suffix(x).relative_to(root)) for x in (".npz", ".json")]}
    if inp.part == "a":
        pts, nets = [("a", 0.0)], [None]
    elif inp.part == "b":
        pts, nets = [("b", 1.0)], [None]  # B's entry: keyed by its endpoint key
    else:
        s = inp.cfg.strong_settings()
        pts = strong_ts(inp.eval, s.extra_t, endpoints=False, at=s.at)
        nets = [None] * len(pts)
    out, files = [], []
    for (role, t), net in zip(pts, nets):
        arrays, meta, path = att.attack(role, t, net)
        out.append((role, t, arrays, meta))
        files += [str(path.with_suffix(x).relative_to(root)) for x in (".npz", ".json")]
    return {"points": out, "files": files}


def collect(ref, results: dict[str, dict]):
    """The path's ``(identity, StrongPath)`` from its points' nodes, in the order
    :func:`robustpath.strong.stage.strong_ts` lists them."""
    import numpy as np

    from robustpath.strong.stage import StrongPath, finish_point, strong_ts, subset_indices

    settings = ref.cfg.strong_settings().validate()
    res = ref.result
    pts = strong_ts(res, settings.extra_t, at=settings.at)
    raw = [results["a"]["points"][0], results["b"]["points"][0], *results["interior"]["points"]]
    idx = subset_indices(int(np.asarray(res.robust_correct).shape[1]), settings.examples,
                         settings.seed)
    points = [finish_point(role, t, r[2], r[3], res, idx, 2 * len(pts))
              for (role, t), r in zip(pts, raw)]
    return ref.identity, StrongPath(points=points, indices=idx, settings=settings.to_dict())


def write(run_dir, cfg, entries) -> None:
    """``strong_eval.{csv,md}``, ``strong_examples.npz``, ``cards/``
    (:func:`robustpath.strong.files.write`)."""
    from robustpath.strong import files

    files.write(run_dir, entries, cfg=cfg.to_dict())


register(PathStage(
    name="strong", label="strong",
    # the default quick run (timings.json, 2 workers of one thread): 291.5 s for 24 nodes,
    # transfer sources ~3 s, AutoAttack points ~15 s
    seconds=12.1, work=lambda cfg: float(cfg.strong_examples),
    applies=lambda info: bool(info.cfg.strong), parts=parts, run=run, collect=collect,
    write=write))
