"""Issue 19 part 2: merging N >= 3 models (robustpath.soup.merge), the soup and the triangle
(robustpath.soup.triangle), the ternary plots and the CLI. Tiny models, seconds each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustpath.align import apply, permutation_spec, random_permutation
from robustpath.attacks.base import AttackConfig, build_attack
from robustpath.attacks.metrics import per_example
from robustpath.models import create
from robustpath.soup.merge import merge, merge_many, mix, perms_from_arrays, perms_to_arrays
from robustpath.soup.triangle import (
    PointEval,
    accuracy_rows,
    barycentric_grid,
    line_weights,
    pair_lines,
    triangle,
)


def _copies(arch: str, width: float, n: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    m = create(arch, "fashion-mnist", width=width).eval()
    if arch == "cnn-small":  # non-trivial BN statistics, so buffers must move with units
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    spec = permutation_spec(m, x[:2])
    copies = [apply(m, random_permutation(spec=spec, seed=100 + s)) for s in range(n)]
    return m, copies, spec, x


@pytest.mark.parametrize("arch,width", [("mlp", 0.125), ("cnn-small", 0.5)])
def test_merge_many_of_permuted_copies_returns_the_original(arch, width):
    m, copies, spec, x = _copies(arch, width)
    res = merge(copies, "weight", spec=spec)
    with torch.no_grad():
        ref = m(x)
        soup = mix(res.models, [1 / len(copies)] * len(copies))(x)
        unaligned = mix(copies, [1 / len(copies)] * len(copies))(x)
        for aligned, orig in zip(res.models, copies):  # each keeps its own function
            assert torch.allclose(aligned(x), orig(x), atol=1e-5)
    assert (soup - ref).abs().max() < 1e-5
    assert (unaligned - ref).abs().max() > 1e-2  # the test needs the alignment
    assert res.spread[-1] < 1e-8 < res.spread[0]
    assert all(b <= a + 1e-9 for a, b in zip(res.spread, res.spread[1:]))  # monotone


def test_activation_merge_onto_model0_returns_the_original():
    m, copies, spec, x = _copies("mlp", 0.125, n=3)
    batches = [(x, torch.zeros(len(x), dtype=torch.long))]
    res = merge(copies, "activation", spec=spec, data=batches)
    with torch.no_grad():
        assert (mix(res.models, [1 / 3] * 3)(x) - m(x)).abs().max() < 1e-5
        assert torch.equal(res.models[0](x), copies[0](x))  # the reference stays as it is
    assert all(after > 0.999 for _, after in res.similarity.values())


def test_merge_many_stops_and_perms_round_trip():
    _, copies, spec, _ = _copies("mlp", 0.125, n=3)
    params = [{k: v.double() for k, v in c.named_parameters()} for c in copies]
    perms, sweeps, history = merge_many(spec, params, seed=3, max_sweeps=50)
    assert sweeps < 50 and len(history) == sweeps + 1
    res = merge(copies, "weight", spec=spec)
    back = perms_from_arrays(spec, perms_to_arrays(res.perms))
    assert all(torch.equal(a[g], b[g]) for a, b in zip(res.perms, back) for g in spec.groups)


def test_merge_needs_models_of_one_architecture():
    from robustpath.errors import UserError

    a = create("mlp", "fashion-mnist", width=0.125)
    b = create("mlp", "fashion-mnist", width=0.25)
    with pytest.raises(UserError, match="another architecture"):
        merge([a, a, b], "weight", example_input=torch.rand(2, 1, 28, 28))
    with pytest.raises(UserError, match="unknown merge method"):
        merge([a, a, a], "bogus", example_input=torch.rand(2, 1, 28, 28))


def test_barycentric_grid():
    g = barycentric_grid(8)
    assert g.shape == (45, 3)
    assert np.allclose(g.sum(1), 1.0) and (g >= 0).all()
    assert len({tuple(r) for r in np.round(g * 8).astype(int)}) == 45
    for v in np.eye(3):
        assert any(np.array_equal(r, v) for r in g)
    assert barycentric_grid(1).shape == (3, 3)
    assert barycentric_grid(3, vertices=4).shape == (20, 4)


def test_triangle_vertices_are_the_models_and_edges_the_lines(fmnist):
    _, _, x_te, y_te = fmnist
    x, y = x_te[:120], y_te[:120]
    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(create("mlp", "fashion-mnist", width=0.125).eval())
    attack = build_attack(AttackConfig(eps=0.1, steps=2, seed=0), 10)
    point = PointEval(x, y, attack)
    k = 4
    tri = triangle(models, k, point, progress=False)
    assert tri["weights"].shape == (15, 3) and tri["robust_correct"].shape == (15, 120)
    acc = accuracy_rows(tri)
    for i, m in enumerate(models):
        row = int(np.flatnonzero(tri["weights"][:, i] == 1.0)[0])
        own_clean, own_robust = per_example(m, x, y), per_example(m, x, y, attack)
        assert np.array_equal(tri["clean_correct"][row], own_clean.correct.numpy())
        assert np.array_equal(tri["robust_correct"][row], own_robust.correct.numpy())
        assert acc["robust_acc"][row] == pytest.approx(own_robust.accuracy, abs=1e-6)
    # the edge 0-1 of the grid uses the same floats as the line between 0 and 1
    lw = line_weights(3, 0, 1, k)
    for w in lw:
        assert any(np.array_equal(w, r) for r in tri["weights"])
    recs = pair_lines(models, k, point, "none", progress=False)
    assert [r.endpoints for r in recs] == [(0, 1), (0, 2), (1, 2)]
    r01 = recs[0].result
    edge = [int(np.flatnonzero((tri["weights"] == w).all(1))[0]) for w in lw]
    assert np.array_equal(r01.robust_correct, tri["robust_correct"][edge])


def test_cached_entry_is_reused_and_a_swapped_one_recomputed(tmp_path, capsys):
    from robustpath.io.cache import cached_npz as cached

    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(3)}

    p = tmp_path / "x.npz"
    cached(p, {"k": 1}, compute, "x")
    assert np.array_equal(cached(p, {"k": 1}, compute, "x")["a"], np.arange(3))
    assert len(calls) == 1
    cached(p, {"k": 2}, compute, "x")  # another spec: refused, recomputed
    assert len(calls) == 2 and "recomputing x" in capsys.readouterr().err


def test_ternary_and_matrix_figures(tmp_path):
    import pandas as pd

    from robustpath.soup.ternary import plot_barrier_matrix, plot_triangles, to_xy

    assert np.allclose(to_xy(np.eye(3)), [[0, 0], [1, 0], [0.5, 3 ** 0.5 / 2]])
    g = barycentric_grid(4)
    panel = {"weights": g, "clean_acc": g[:, 0], "robust_acc": g[:, 1]}
    out = plot_triangles({"none": panel, "weight": panel}, ["a", "b", "c"], 4, tmp_path / "t")
    out += plot_triangles({"none": panel}, ["a", "b", "c"], 4, tmp_path / "t", shared=False)
    assert (tmp_path / "t_none.png").is_file()
    frame = pd.DataFrame([{"align": "none", "index_a": 0, "index_b": 1, "robust_acc_barrier": 0.1},
                          {"align": "none", "index_a": 0, "index_b": 2, "robust_acc_barrier": 0.2}])
    out += plot_barrier_matrix(frame, ["a", "b", "c"], tmp_path / "m")
    assert all(p.stat().st_size > 1000 for p in out) and len(out) == 6


@pytest.mark.parametrize("argv,msg", [(["--models", "2"], "--models must be >= 3"),
                                      (["--align", "bogus"], "unknown merge method"),
                                      (["--grid", "0"], "--grid must be"),
                                      (["--renorm", "bogus"], "unknown --renorm")])
def test_cli_bad_values_one_line_exit_2(argv, msg, capsys):
    from robustpath.soup.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and msg in err


def test_cli_help_names_the_flags(capsys):
    from robustpath.soup.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--models" in text and "MergeMany" in text and "--grid" in text


def test_simplex_repair_hits_the_mixed_statistics_and_leaves_vertices():
    from robustpath.paths.repair import find_units, measure
    from robustpath.soup.triangle import SimplexRepair

    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(create("cnn-small", "fashion-mnist", width=0.25).eval())
    g = torch.Generator().manual_seed(5)
    batches = [(torch.rand(64, 1, 28, 28, generator=g), torch.zeros(64, dtype=torch.long))
               for _ in range(2)]
    rep = SimplexRepair("repair", models, batches)
    x = [b[0] for b in batches]
    units = find_units(models[0], x[0][:2])
    w = np.array([0.5, 0.25, 0.25])
    fixed = rep(mix(models, w), w)
    got = measure(fixed, units, x)
    own = [measure(m, units, x) for m in models]
    plain = measure(mix(models, w), units, x)
    for u, (mean, std) in enumerate(got):
        t_mean = sum(wk * o[u][0] for wk, o in zip(w, own))
        t_std = sum(wk * o[u][1] for wk, o in zip(w, own))
        assert torch.allclose(mean, t_mean, atol=1e-4) and torch.allclose(std, t_std, atol=1e-4)
    # the plain mix is off its target somewhere (else the check above proves nothing)
    assert any(not torch.allclose(p[1], sum(wk * o[u][1] for wk, o in zip(w, own)), atol=1e-3)
               for u, p in enumerate(plain))
    v = np.array([0.0, 1.0, 0.0])
    with torch.no_grad():
        assert torch.equal(rep(mix(models, v), v)(x[0]), models[1](x[0]))


def _three_mlps():
    """Three narrow random MLPs (seeds 0-2) and a one-step PGD: a cheap triangle."""
    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(create("mlp", "fashion-mnist", width=0.125).eval())
    return models, build_attack(AttackConfig(eps=0.1, steps=1, seed=0), 10)


def test_points_resume_from_their_cache(tmp_path, fmnist):
    from robustpath.io.cache import BoundPointCache

    _, _, x_te, y_te = fmnist
    models, attack = _three_mlps()
    cache = BoundPointCache(tmp_path / "points")
    first = triangle(models, 2, PointEval(x_te[:50], y_te[:50], attack, cache=cache),
                     progress=False)

    def broken(*_):  # a rerun must not attack again: every point is cached
        raise AssertionError("recomputed a cached point")

    again = triangle(models, 2, PointEval(x_te[:50], y_te[:50], broken, cache=cache),
                     progress=False)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    with pytest.raises(AssertionError, match="recomputed"):
        triangle(models, 3, PointEval(x_te[:50], y_te[:50], broken, cache=cache), progress=False)


def test_module_entry_point_exit_2(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "robustpath.soup", "--models", "2"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--models must be >= 3" in r.stderr


def test_triangle_killed_midway_resumes_at_the_next_point(tmp_path, fmnist):
    """A kill (KeyboardInterrupt from the 4th point's attack) keeps the 3 finished points;
    the rerun attacks only the 3 missing ones and equals an uninterrupted run."""
    from robustpath.io.cache import BoundPointCache

    _, _, x_te, y_te = fmnist
    models, attack = _three_mlps()
    calls = []

    def counted(kill_at):
        def atk(*a, **k):
            calls.append(1)
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            return attack(*a, **k)
        return atk

    cache = BoundPointCache(tmp_path / "points")
    with pytest.raises(KeyboardInterrupt):
        triangle(models, 2, PointEval(x_te[:50], y_te[:50], counted(4), cache=cache),
                 progress=False)
    calls.clear()
    resumed = triangle(models, 2, PointEval(x_te[:50], y_te[:50], counted(0), cache=cache),
                       progress=False)
    assert len(calls) == 3  # 6 points, 3 cached before the kill
    fresh = triangle(models, 2, PointEval(x_te[:50], y_te[:50], attack), progress=False)
    assert all(np.array_equal(resumed[k], fresh[k]) for k in fresh)
