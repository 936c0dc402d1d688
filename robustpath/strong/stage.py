"""The strong stage: standard AutoAttack and many-restart PGD at a path's endpoints
and at its worst t, a transfer check, and AutoAttack's own checks.

PGD with few steps (Tatro et al. use PGD-5; robustpath's quick preset PGD-10) can
overestimate robustness, more so at interior points of a path whose loss surface
nobody trained to be smooth. For every evaluated path, on a fixed, seeded subset of
``StrongSettings.examples`` test examples (RobustBench's ``n_examples``; the same
examples at every point and on every path, so differences are paired):

* at t = 0, t = 1 and the path's worst t (the lowest PGD robust accuracy over the
  grid *and* its refinement, :func:`robustpath.paths.evaluate.refine_minimum`) - and with
  ``StrongSettings.at = "grid"`` (``--strong-at grid``) at every grid t too, roles
  ``grid1`` ... (:data:`STRONG_AT`) - the network
  is prepared exactly as the path evaluation prepared it (:class:`PointSetup`: the same
  BatchNorm batches) and attacked by

  - the evaluation attack (PGD): its per-example outcome is taken from the path
    evaluation itself (same network, attack and examples);
  - standard AutoAttack from Croce & Hein's code (:mod:`robustpath.attacks.autoattack`),
    resumable per sub-attack through robustpath's own state file
    (``<point>.aa-state.json`` beside the point's cache entry; pyautoattack 0.2.0's
    ``EvaluationState`` cannot resume), with its own checks' warnings recorded;
  - PGD with ``pgd_steps`` steps and ``pgd_restarts`` restarts (default PGD-50 x 10,
    step 2.5 eps / steps, Madry et al.'s rule), in accuracy-only mode
    (:class:`robustpath.attacks.base.PGD` ``early_stop``: an example stops being attacked
    at the first iterate that breaks it, so robust examples get the whole budget and
    the robust accuracy is the same as, or lower than, the full attack's);

* a transfer check: adversarial examples made by the evaluation attack (same budget
  and restarts as the direct attack) against each endpoint are evaluated at the point,
  each source separately. A source is flagged only when it beats the direct attack by
  more than sampling error: a one-sided exact McNemar test on the same examples
  (discordant pairs), Bonferroni-corrected over the tests of the path, level 0.05.
  At t = 0 the source-A examples *are* the direct attack's, so nothing is flagged there.
  A source is made once per endpoint *function* (``endpoint_ids``) and cached in the
  stage's folder, so the aligned and unaligned paths of a pair share it.

A point's cache key holds the AutoAttack engine's version (``pyautoattack X.Y.Z``, from
:meth:`robustpath.attacks.autoattack.StandardAutoAttack.describe`), and a cached point whose
recorded engine differs from the installed one is recomputed, said in one line.

Results per path: :class:`StrongPath` (per-example arrays per point + metadata); written
by :mod:`robustpath.strong.files` as ``strong_eval.{csv,md}``, ``strong_examples.npz``
and one RobustBench-style card per point in ``cards/``.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest
from torch import nn

from robustpath import progress as progress_mod
from robustpath.attacks.base import Attack, AttackConfig, build_attack, eval_mode
from robustpath.attacks.metrics import per_example
from robustpath.errors import UserError
from robustpath.io.store import atomic_write_json, config_hash
from robustpath.paths.bn import recompute_bn
from robustpath.paths.evaluate import PathResult, PointCache, min_point
from robustpath.registry import Registry

ModelAt = Callable[[float], nn.Module]
ALPHA = 0.05  # family-wise level of the transfer (gradient-masking) test of one path


@dataclass
class StrongSettings:
    """Settings of the strong stage (bench flags in brackets).

    ``examples`` [--strong-examples]: test examples attacked (a seeded subset of the
    evaluation's test examples, seed ``seed``); ``aa_version`` [--aa-version]:
    standard | plus | rand | custom; ``aa_attacks`` [--aa-attacks]: custom's list;
    ``pgd_steps`` / ``pgd_restarts`` [--strong-pgd-steps / --strong-pgd-restarts]:
    the many-restart PGD; ``extra_t``: more t to attack besides the endpoints and the
    worst t; ``at`` [--strong-at]: which points (:data:`STRONG_AT`: ``ends-worst``, the
    default, or ``grid``, every grid t as well). ``at`` is not in a point's key: a
    point's numbers do not depend on which other points are attacked.
    """

    examples: int = 200
    aa_version: str = "standard"
    aa_attacks: list[str] | None = None
    pgd_steps: int = 50
    pgd_restarts: int = 10
    seed: int = 0
    extra_t: list[float] = field(default_factory=list)
    at: str = "ends-worst"

    def validate(self) -> StrongSettings:
        from robustpath.attacks.autoattack import check_version

        STRONG_AT.get(self.at)  # an unknown --strong-at: one line listing the known ones

        if int(self.examples) < 1:
            raise UserError(f"--strong-examples must be >= 1, got {self.examples} "
                            "(--no-strong turns the strong stage off)")
        self.examples = int(self.examples)
        version, attacks = check_version(self.aa_version, self.aa_attacks)
        self.aa_version, self.aa_attacks = version, list(attacks) if attacks else None
        for name in ("pgd_steps", "pgd_restarts"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--strong-{name.replace('_', '-')} must be >= 1, "
                                f"got {getattr(self, name)}")
        for t in self.extra_t:
            if not 0.0 <= float(t) <= 1.0:
                raise UserError(f"strong-attack t must lie in [0, 1], got {t}")
        return self

    def aa_config(self, norm: str, eps: float) -> AttackConfig:
        return AttackConfig(name="autoattack", norm=norm, eps=eps, seed=self.seed,
                            aa_version=self.aa_version, aa_attacks=self.aa_attacks)

    def pgd_config(self, norm: str, eps: float) -> AttackConfig:
        """The many-restart PGD, accuracy-only (``early_stop``): the strong stage keeps
        only whether each example survives, and freezing an example once broken can only
        break as many or more than the full attack with the same seed."""
        return AttackConfig(name="pgd", norm=norm, eps=eps, steps=self.pgd_steps,
                            step_size=2.5 * float(eps) / self.pgd_steps,
                            restarts=self.pgd_restarts, seed=self.seed, early_stop=True)

    @property
    def pgd_name(self) -> str:
        return f"pgd{self.pgd_steps}x{self.pgd_restarts}"

    def to_dict(self) -> dict:
        return asdict(self)


def subset_indices(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """``min(n, n_total)`` sorted indices into the test examples, drawn with ``seed``."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


@dataclass
class PointSetup:
    """How a network on a path is made ready to be measured, exactly as
    :func:`robustpath.paths.evaluate.evaluate_path` does it: moved to ``device``, BatchNorm
    statistics re-estimated on the first ``bn_batches`` batches of ``bn_loader`` (clean
    or adversarial inputs from ``bn_attack``); ``recompute_ends=False`` keeps t = 0 and
    t = 1 as given (published models). ``bn_loader=None`` skips BN."""

    bn_loader: Iterable | None = None
    bn_batches: int = 10
    bn_inputs: str = "clean"
    bn_attack: Attack | None = None
    device: str | torch.device = "cpu"
    batch_size: int = 500
    recompute_ends: bool = True

    def __post_init__(self):
        # the same batches at every call, as evaluate_path takes them once per path
        if self.bn_loader is not None:
            self.bn_loader = list(itertools.islice(iter(self.bn_loader), self.bn_batches))

    def recomputes(self, t: float) -> bool:
        return self.bn_loader is not None and (self.recompute_ends or 0.0 < float(t) < 1.0)

    def prepare_model(self, model: nn.Module, t: float) -> nn.Module:
        model = model.to(self.device)
        if self.recomputes(t):
            recompute_bn(model, self.bn_loader, batches=self.bn_batches, inputs=self.bn_inputs,
                         attack=self.bn_attack)
        return model.eval()

    def prepare(self, model_at: ModelAt, t: float) -> nn.Module:
        return self.prepare_model(model_at(float(t)), t)


#: which points of a path the strong stage attacks besides the endpoints, the worst t and
#: ``extra_t``: name -> ``result -> [(role, t)]`` (``--strong-at``)
STRONG_AT: Registry[Callable[[PathResult], list[tuple[str, float]]]] = Registry("--strong-at")
STRONG_AT.register("ends-worst")(lambda result: [])


@STRONG_AT.register("grid")
def _grid_points(result: PathResult) -> list[tuple[str, float]]:
    """Every interior grid t of ``result`` (not its refinement points): roles ``grid<i>``
    with i the grid index, so the AA barrier can be a maximum over the path."""
    ts = result.grid().ts if hasattr(result, "grid") else result.ts
    return [(f"grid{i}", round(float(t), 10)) for i, t in enumerate(ts) if 0.0 < t < 1.0]


def strong_ts(result: PathResult | None = None, extra: Sequence[float] = (),
              endpoints: bool = True, at: str = "ends-worst") -> list[tuple[str, float]]:
    """The points to attack: ``("a", 0)``, ``("b", 1)``, ``("worst", t*)`` with t* the
    lowest robust accuracy of ``result`` over grid and refinement
    (:func:`robustpath.paths.evaluate.min_point`), the points of ``at`` (:data:`STRONG_AT`)
    and ``("extra", t)`` for ``extra``."""
    pts: list[tuple[str, float]] = [("a", 0.0), ("b", 1.0)] if endpoints else []
    if result is not None and len(result.ts):
        pts.append(("worst", round(min_point(result)[0], 10)))
        pts += STRONG_AT.get(at)(result)
    for t in extra:
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise UserError(f"strong-attack t must lie in [0, 1], got {t}")
        pts.append(("extra", round(t, 10)))
    return pts


@dataclass
class StrongPoint:
    """One attacked point: ``role`` (a | b | worst | extra), ``t``, per-example bool
    arrays over the subset (``clean``, ``pgd`` = the evaluation attack, ``aa``,
    ``pgd_many``, ``transfer_<source>``) and metadata (AutoAttack's per-sub-attack
    accuracy, warnings, gradient passes per example; transfer p-values)."""

    role: str
    t: float
    arrays: dict[str, np.ndarray]
    meta: dict

    def acc(self, name: str) -> float:
        return float(np.asarray(self.arrays[name], dtype=np.float64).mean())


@dataclass
class StrongPath:
    """The strong stage's outcome on one path: its points and the subset's indices."""

    points: list[StrongPoint]
    indices: np.ndarray
    settings: dict

    def point(self, role: str) -> StrongPoint:
        return next(p for p in self.points if p.role == role)


def mcnemar_p(direct: np.ndarray, transfer: np.ndarray) -> float:
    """One-sided exact McNemar p-value that the transfer attack breaks more examples
    than the direct one: among discordant examples, ``b`` = robust to the direct attack
    but broken by the transfer one, ``c`` = the reverse; P(X >= b), X ~ Bin(b + c, 1/2)."""
    direct, transfer = np.asarray(direct, bool), np.asarray(transfer, bool)
    b = int((direct & ~transfer).sum())
    c = int((~direct & transfer).sum())
    if b == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)


def adversarial_examples(model: nn.Module, x, y, attack: Attack, batch_size: int,
                         device) -> torch.Tensor:
    """``attack(model, x, y)`` in batches of ``batch_size`` (the same batches as the path
    evaluation, so seeded random starts match); the examples on the CPU."""
    out = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            out.append(attack(model, xb, yb).detach().cpu())
    return torch.cat(out) if out else x.clone()


def _source_examples(path: Path | None, n: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A transfer source's adversarial examples on the subset: read from ``<path>.npz``
    (verified, :func:`robustpath.io.cache.load_npz`) or made by ``make()`` and saved there,
    under the entry's lock (sweep tasks of one pair share it: one makes, the others
    load). ``path=None``: made, not cached."""
    from robustpath.io.cache import load_npz, recompute_notice, save_npz
    from robustpath.io.lock import entry_lock
    from robustpath.io.store import CacheError

    if path is None:
        return make()
    spec = {"source": path.name}
    with entry_lock(path.with_suffix(".npz")):
        try:
            got = load_npz(path.with_suffix(".npz"), spec)
            if got is not None and got.get("x_adv") is not None and len(got["x_adv"]) == n:
                return torch.from_numpy(np.ascontiguousarray(got["x_adv"]))
        except CacheError as e:
            recompute_notice(e, "transfer source")
        x_adv = make()
        save_npz(path.with_suffix(".npz"), {"x_adv": x_adv.numpy()}, spec)
        return x_adv


def _save(path: Path, arrays: dict, meta: dict) -> None:
    """``<key>.meta.json``, then ``<key>.npz`` and its verified sidecar ``<key>.json``
    (:func:`robustpath.io.cache.save_npz`, written last: marks the point done)."""
    from robustpath.io.cache import save_npz

    atomic_write_json(path.with_suffix(".meta.json"), meta)
    save_npz(path.with_suffix(".npz"), arrays, {"point": path.name})


def _load(path: Path, n: int, engine: str | None = None) -> tuple[dict, dict] | None:
    """A verified cached point (sidecar bound to this point's key, checksum, shapes);
    None when absent, or damaged (said in one line, then recomputed), or made by another
    AutoAttack ``engine`` than this one (``"pyautoattack 0.2.0"``; said in one line)."""
    from robustpath.io.cache import load_npz, recompute_notice
    from robustpath.io.store import CacheError

    try:
        arrays = load_npz(path.with_suffix(".npz"), {"point": path.name})
        if arrays is None:
            return None
        meta = json.loads(path.with_suffix(".meta.json").read_text())
        if any(len(v) != n for v in arrays.values()) or "aa" not in arrays \
                or not isinstance(meta, dict):
            raise CacheError(f"{path.with_suffix('.npz')} holds another subset",
                             (path.with_suffix(".npz"), path.with_suffix(".json")))
        got = (meta.get("aa") or {}).get("engine")
        if engine is not None and got != engine:
            made = got or "an unrecorded AutoAttack version"
            print(f"note: strong point {path.name} was made with {made}, this is {engine}: "
                  "recomputed", file=sys.stderr)
            return None
        return arrays, meta
    except (OSError, ValueError) as e:
        recompute_notice(CacheError(f"{path.with_suffix('.meta.json')} is unreadable "
                                    f"({type(e).__name__})", (path.with_suffix(".npz"),
                                                               path.with_suffix(".json"))),
                         "strong point")
    except CacheError as e:
        recompute_notice(e, "strong point")
    return None


class PointAttacker:
    """What the points of one path's strong stage share (:func:`strong_path`; the
    engine's strong nodes, :mod:`robustpath.strong.nodes`, attack one point each with
    it): the seeded subset, the attacks, the key of the settings (``skey``, with the
    AutoAttack engine's version), the transfer sources (made lazily, cached in
    ``folder``) and how a point is keyed and attacked. Arguments as
    :func:`strong_path`'s."""

    def __init__(self, model_at: ModelAt, x_test: torch.Tensor, y_test: torch.Tensor, *,
                 settings: StrongSettings, eval_attack: AttackConfig, setup: PointSetup,
                 folder: str | Path, num_classes: int, progress: bool = True,
                 desc: str = "strong", endpoint_ids: dict[str, str] | None = None,
                 path_key: str | None = None):
        settings.validate()
        self.model_at, self.x_test, self.y_test = model_at, x_test, y_test
        self.settings, self.eval_attack, self.setup = settings, eval_attack, setup
        self.folder, self.progress, self.desc = Path(folder), progress, desc
        self.endpoint_ids, self.path_key = endpoint_ids or {}, path_key
        self.idx = idx = subset_indices(len(y_test), settings.examples, settings.seed)
        self.x, self.y = x_test[idx], y_test[idx]
        self.aa = build_attack(settings.aa_config(eval_attack.norm, eval_attack.eps), num_classes)
        self.many = build_attack(settings.pgd_config(eval_attack.norm, eval_attack.eps),
                                 num_classes)
        self.direct_attack = build_attack(eval_attack, num_classes)
        self.engine = self.aa.describe()["engine"]  # "pyautoattack 0.2.0": the version is in the key
        strong = {k: v for k, v in settings.to_dict().items() if k != "at"}
        self.skey = config_hash({"strong": strong, "attack": eval_attack.to_dict(),
                                 "n_test": len(y_test), "pgd_many": settings.pgd_config(
                                     eval_attack.norm, eval_attack.eps).to_dict(),
                                 "engine": self.engine})
        self.sources: dict[str, torch.Tensor] = {}

    def bn_key(self, t: float):
        setup = self.setup
        return setup.recomputes(t) and config_hash({"b": setup.bn_batches, "i": setup.bn_inputs})

    def source_path(self, name: str, t: float) -> Path | None:
        """Where the transfer source ``name`` (a | b) is cached: keyed by the endpoint's
        function (shared by every path of the pair) or else by the path; with neither,
        None (made for this call only)."""
        fn = self.endpoint_ids.get(name) or (
            self.path_key and config_hash({"path": self.path_key, "t": float(t)}))
        return self.folder / config_hash({"s": self.skey, "source": fn, "bn": self.bn_key(t)}) \
            if fn else None

    def source(self, name: str, t: float) -> torch.Tensor:
        """The evaluation attack's examples made against the path's point at ``t`` (an
        endpoint), on the subset."""
        if name not in self.sources:  # made lazily: a fully cached path needs no attack at all
            setup, idx = self.setup, self.idx

            def make() -> torch.Tensor:
                m = setup.prepare(self.model_at, t)
                # made on every test example in the evaluation's batches, then subset: at
                # the source's own endpoint these are exactly the direct attack's examples
                return adversarial_examples(m, self.x_test, self.y_test, self.direct_attack,
                                            setup.batch_size, setup.device)[torch.as_tensor(idx)]

            self.sources[name] = _source_examples(self.source_path(name, t), len(idx), make)
        return self.sources[name]

    def net_id(self, role: str, t: float) -> str | None:
        """The id of the network at a point, when known without building it: the
        endpoint's function (roles a, b) or the path and t."""
        net = self.endpoint_ids.get(role) if role in ("a", "b") else None
        if net is None and self.path_key is not None:
            net = config_hash({"path": self.path_key, "t": round(float(t), 10)})
        return net

    def attack(self, role: str, t: float, net: str | None = None) -> tuple[dict, dict, Path]:
        """The point at ``t``: its per-example arrays (``clean``, ``aa``, ``pgd_many``,
        ``transfer_a``, ``transfer_b``) and metadata, cached in ``folder`` under a key of
        the settings and the network (``net``, default :meth:`net_id`; else the weights'
        hash) before BatchNorm recomputation, and at an endpoint the pair (its transfer
        sources); and the entry's path."""
        setup, device, x, y = self.setup, self.setup.device, self.x, self.y
        settings, eval_attack = self.settings, self.eval_attack
        raw = None
        net = net or self.net_id(role, t)
        if net is None:
            raw = self.model_at(float(t)).to(device)
        spec = {"s": self.skey, "net": net or PointCache.key(raw), "bn": self.bn_key(t)}
        if role in ("a", "b") and self.endpoint_ids:
            # its transfer columns are against this pair's endpoints: a model A of pairs
            # (0, 1) and (0, 2) is a point of each (one entry served both before)
            spec["pair"] = [self.endpoint_ids.get("a"), self.endpoint_ids.get("b")]
        pkey = config_hash(spec)
        got = _load(self.folder / pkey, len(self.idx), self.engine)
        if got is not None:
            return got[0], got[1], self.folder / pkey
        model = setup.prepare_model(raw if raw is not None else self.model_at(float(t)), t)
        res = self.aa.run(model, x.to(device), y.to(device),
                          state_path=self.folder / f"{pkey}.aa-state.json",
                          batch_size=setup.batch_size, progress=self.progress,
                          desc=f"{self.desc} t={float(t):.3g} AA")
        m = per_example(model, x, y, self.many, batch_size=setup.batch_size, device=device)
        arrays = {"clean": res.clean.numpy(), "aa": res.robust.numpy(),
                  "pgd_many": m.correct.numpy()}
        for name, ts_ in (("a", 0.0), ("b", 1.0)):
            r = per_example(model, self.source(name, ts_), y, None, batch_size=setup.batch_size,
                            device=device)
            arrays[f"transfer_{name}"] = r.correct.numpy()
        meta = {"aa_after": res.after, "aa_warnings": res.warnings,
                "aa_grad_passes": res.grad_passes, "aa_queries": res.queries,
                "aa_attacks": res.attacks, "aa_resumed": res.resumed,
                "aa": self.aa.describe(), "pgd_many": settings.pgd_config(
                    eval_attack.norm, eval_attack.eps).to_dict()}
        _save(self.folder / pkey, arrays, meta)
        (self.folder / f"{pkey}.aa-state.json").unlink(missing_ok=True)
        return arrays, meta, self.folder / pkey


def finish_point(role: str, t: float, arrays: dict, meta: dict, result: PathResult,
                 idx: np.ndarray, n_tests: int) -> StrongPoint:
    """A path's :class:`StrongPoint` from an attacked point's arrays and metadata: the
    path evaluation's own PGD outcome at ``t`` (``pgd``), whether the clean outcome
    matches the path's, and the transfer tests (McNemar, Bonferroni over ``n_tests``)."""
    i = int(np.argmin(np.abs(result.ts - t)))
    pgd = np.asarray(result.robust_correct[i], dtype=bool)[idx]
    grid_clean = np.asarray(result.clean_correct[i], dtype=bool)[idx]
    arrays = {**{k: np.asarray(v, dtype=bool) for k, v in arrays.items()}, "pgd": pgd}
    meta = dict(meta)
    meta["clean_matches_path"] = bool((arrays["clean"] == grid_clean).all())
    for name in ("a", "b"):
        p = mcnemar_p(pgd, arrays[f"transfer_{name}"])
        meta[f"transfer_p_{name}"] = p
        meta[f"transfer_flag_{name}"] = bool(p < ALPHA / n_tests)
    return StrongPoint(role, float(t), arrays, meta)


def strong_path(model_at: ModelAt, result: PathResult, x_test: torch.Tensor,
                y_test: torch.Tensor, *, settings: StrongSettings, eval_attack: AttackConfig,
                setup: PointSetup, folder: str | Path, num_classes: int,
                progress: bool = True, desc: str = "strong",
                endpoint_ids: dict[str, str] | None = None,
                path_key: str | None = None) -> StrongPath:
    """Run the strong stage on one path (module docstring); ``result`` is the path's
    evaluation on ``x_test``/``y_test`` (grid + refinement, same examples, same order).

    Each point is cached in ``folder`` by the settings and the exact network (before
    BatchNorm recomputation), so a point shared by several paths (model A) is attacked
    once and a killed run resumes (AutoAttack inside a point, by sub-attack).

    ``endpoint_ids`` (``{"a": id, "b": id}``) names the *function* at t = 0 / t = 1 when
    several paths end at permuted copies of one model (the aligned B computes B's logits;
    :func:`robustpath.align.equivalence.check_same_function` checks it when the alignment is
    made): those endpoints are then attacked once and shared by every path.
    ``path_key`` (the path evaluation's cache key) keys the other points by path and t,
    so that a fully cached path needs no network at all (``model_at`` is not called).
    """
    settings.validate()
    if result.robust_correct.shape[1] != len(y_test):
        raise UserError(f"strong stage: the path result has {result.robust_correct.shape[1]} "
                        f"examples but {len(y_test)} were given")
    att = PointAttacker(model_at, x_test, y_test, settings=settings, eval_attack=eval_attack,
                        setup=setup, folder=folder, num_classes=num_classes, progress=progress,
                        desc=desc, endpoint_ids=endpoint_ids, path_key=path_key)
    pts = strong_ts(result, settings.extra_t, at=settings.at)
    out: list[StrongPoint] = []
    for role, t in progress_mod.bar(pts, desc=desc, unit="pt", progress=progress):
        arrays, meta, _ = att.attack(role, t)
        out.append(finish_point(role, t, arrays, meta, result, att.idx, 2 * len(pts)))
    return StrongPath(points=out, indices=att.idx, settings=settings.to_dict())
