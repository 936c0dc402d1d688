"""Figure labels, eps formatting, --help defaults, console precision and timings:
one test per defect of issue 18, on synthetic data (seconds in total)."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from robustpath import bench
from robustpath.engine.timing import StageTimer  # noqa: E402
from robustpath.io import outputs  # noqa: E402
from robustpath.io.records import PathRecord  # noqa: E402
from robustpath.paths.evaluate import PathResult  # noqa: E402
from robustpath.paths.plane import contour_levels, control_xy, planes_figure  # noqa: E402
from robustpath.report import plots  # noqa: E402
from robustpath.report.run import format_summary  # noqa: E402
from robustpath.report.style import attack_label, format_eps, paper_style  # noqa: E402
from robustpath.train import cli as train_cli  # noqa: E402


@pytest.mark.parametrize("eps,text", [(8 / 255, "8/255"), (2 / 255, "2/255"), (0.1, "0.1"),
                                      (0.2, "0.2"), (1.0, "1"), ("8/255", "8/255"),
                                      (0.031, "0.031")])
def test_eps_is_written_as_a_fraction_where_it_is_one(eps, text):
    assert format_eps(eps) == text
    assert text in attack_label("pgd", "linf", eps, 10)


def _records(pairs: int) -> list[PathRecord]:
    rng = np.random.default_rng(0)
    out = []
    for s in range(pairs):
        for align in ("none", "activation"):
            for curve in ("line", "bezier"):
                ts = np.linspace(0, 1, 5)
                correct = rng.random((5, 40)) < 0.7
                loss = rng.random((5, 40)).astype(np.float32)
                out.append(PathRecord(align, curve, 2 * s, 2 * s + 1,
                                      PathResult(ts, np.ones(5), correct, correct & (loss < .5),
                                                 loss, loss + 0.3)))
    return out


@pytest.mark.parametrize("pairs,band", [(1, "95% bootstrap CI"), (2, "± 1 std over seed pairs (n = 2)")])
def test_path_figure_has_one_legend_that_names_the_bands(pairs, band):
    with paper_style():
        fig = plots.paths_figure(_records(pairs), title=f"x, {attack_label('pgd', 'linf', 8 / 255)}",
                                 bootstrap=50)
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(band in t for t in labels), labels
    assert "unaligned, bezier" in labels and "aligned (act.), line" in labels
    assert "8/255" in fig._suptitle.get_text()
    assert fig.get_size_inches()[0] <= 7.0  # fits the text width of a two-column paper
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plot_paths_returns_the_figure_and_writes_a_pdf_beside_the_png(tmp_path):
    from matplotlib.figure import Figure

    fig = plots.plot_paths(_records(1), tmp_path / "paths", bootstrap=20)
    assert isinstance(fig, Figure) and (tmp_path / "paths.png").is_file()
    assert (tmp_path / "paths.pdf").read_bytes().startswith(b"%PDF")
    assert isinstance(plots.plot_paths(_records(1), bootstrap=20), Figure)  # no stem: no files
    assert sorted(f.name for f in tmp_path.iterdir()) == ["paths.pdf", "paths.png"]


def test_constant_series_gets_a_readable_axis():
    recs = []
    for curve in ("line", "bezier"):
        ts = np.linspace(0, 1, 5)
        never = np.zeros((5, 40), dtype=bool)  # 0 % robust accuracy everywhere
        loss = np.full((5, 40), 2.0, dtype=np.float32)
        recs.append(PathRecord("none", curve, 0, 1, PathResult(ts, np.ones(5), never | True,
                                                                never, loss, loss)))
    fig = plots.plot_paths(recs, bootstrap=20)
    lo, hi = fig.axes[1].get_ylim()  # robust accuracy (%)
    assert lo == 0.0 and hi >= 2.0
    lo, hi = fig.axes[0].get_ylim()  # clean accuracy 100 %: not above 100
    assert hi == 100.0 and hi - lo >= 2.0
    # the legend's line glyphs are long enough to show a dash pattern and a marker
    assert fig.legends[0].handlelength >= 3


def _plane(scale):
    xs, ys = np.linspace(-2, 12, 9) * scale, np.linspace(-2, 4, 7)
    gx, gy = np.meshgrid(xs, ys)
    z = 0.5 + 0.05 * (gx - 5) ** 2 + 0.4 * (gy - 1) ** 2
    t = np.linspace(0, 1, 41)[:, None]
    ctrl = np.array([5.0, 2.0])
    return {"xs": xs, "ys": ys, "clean_loss": z * scale, "robust_loss": 2 * z,
            "curve_xy": 2 * t * (1 - t) * ctrl + t ** 2 * np.array([10.0 * scale, 0]),
            "line_xy": np.array([[0.0, 0.0], [10.0 * scale, 0.0]]), "control_xy": ctrl}


def test_plane_figure_true_aspect_shared_scale_markers_and_labels():
    import matplotlib.pyplot as plt

    panels = {"unaligned": _plane(1.0), "aligned (act.)": _plane(0.7)}
    with paper_style():
        fig = planes_figure(panels, "t")
    axes = fig.axes[:4]  # rows: clean loss, robust loss; columns: the planes
    assert all(ax.get_aspect() == 1.0 for ax in axes)  # one unit is one length, both ways
    assert len({ax.get_xlim() for ax in axes}) == 1 and len({ax.get_ylim() for ax in axes}) == 1
    # panels of one row (clean or robust loss) share their contour levels
    fills = [[c for c in ax.collections if hasattr(c, "levels")] for ax in axes]
    for row in (0, 2):
        a, b = fills[row][0], fills[row + 1][0]
        assert np.allclose(a.levels, b.levels)
    assert not np.allclose(fills[0][0].levels, fills[2][0].levels)  # clean vs robust: own scale
    assert "L2 distance" in axes[2].get_xlabel() and "L2 distance" in fig._supylabel.get_text()
    assert "θ₁" in axes[2].get_xlabel()  # subscripted, not θ1
    markers = {ln.get_marker() for ax in axes for ln in ax.get_lines()}
    assert {"o", "D"} <= markers  # endpoints, control point
    texts = [t.get_text() for ax in axes for t in ax.texts]
    assert any(re.fullmatch(r"[0-9.]+", t) for t in texts)  # labelled contours, in loss units
    # contour labels keep clear of the drawn curve, line and markers (matplotlib's own
    # placement put them on the curve and under the control point)
    for ax, p in zip(axes, [panels["unaligned"], panels["aligned (act.)"]] * 2):
        avoid = np.vstack([p["curve_xy"], np.linspace(*p["line_xy"], 21), control_xy(p)[None]])
        for t in ax.texts:
            if re.fullmatch(r"[0-9.]+", t.get_text()):
                xy = np.asarray(t.get_position())
                gap = np.sqrt(((avoid - xy) ** 2).sum(1)).min()
                assert gap > 0.05 * np.ptp(ax.get_xlim()), (t.get_text(), xy, gap)
    cbar_labels = [ax.get_ylabel() for ax in fig.axes[4:]]
    assert cbar_labels == ["clean loss (nats)", "robust loss (nats)"], cbar_labels
    for cb in fig.axes[4:]:  # few, unrotated tick labels
        ticks = cb.get_yticklabels()
        assert len([t for t in ticks if t.get_text()]) <= 6
        assert all(t.get_rotation() == 0 for t in ticks)
    # one meaning per colour: above the top level (grey) and outside a grid (hatched)
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"above the top level", "outside this plane's grid", "line", "fitted curve"} <= legend
    plt.close(fig)


def test_plane_figure_adds_a_robust_error_row_and_smooth_contours():
    import matplotlib.pyplot as plt

    from robustpath.paths.plane import smooth_grid

    panels = {"unaligned": _plane(1.0), "aligned (act.)": _plane(0.7)}
    for p in panels.values():
        p["robust_err"] = np.clip(p["robust_loss"] / 20, 0, 1)
    with paper_style():
        fig = planes_figure(panels, "t")
    assert [ax.get_title() for ax in fig.axes[4:6]] == ["unaligned: robust error",
                                                       "aligned (act.): robust error"]
    assert "robust error (%)" in [ax.get_ylabel() for ax in fig.axes]
    plt.close(fig)
    p = panels["unaligned"]
    fx, fy, fz = smooth_grid(p["xs"], p["ys"], p["clean_loss"], factor=4)
    assert fz.shape == ((len(p["ys"]) - 1) * 4 + 1, (len(p["xs"]) - 1) * 4 + 1)
    assert np.allclose(fz[::4, ::4], p["clean_loss"], rtol=1e-6)  # through the measured values
    assert fz.min() >= p["clean_loss"].min() and fz.max() <= p["clean_loss"].max()


def test_contour_levels_are_log_spaced_above_the_minimum():
    v = np.linspace(0.3, 5.0, 100)
    lv = contour_levels([v], levels=9, clip_quantile=0.8)
    assert lv[0] == pytest.approx(0.3) and lv[-1] == pytest.approx(np.quantile(v, 0.8))
    ratios = np.diff(np.log(lv[1:] - lv[0]))
    assert np.allclose(ratios, ratios[0])


def test_control_point_recovered_for_grids_saved_without_it():
    p = _plane(1.0)
    assert np.allclose(control_xy({k: v for k, v in p.items() if k != "control_xy"}),
                       p["control_xy"], atol=1e-9)


def _summary(pairs):
    row = {"align": "activation", "curve": "bezier", "pairs": pairs}
    for name, v, lo, hi in (("clean_acc_ends", .796, .771, .819), ("clean_acc_min", .792, .761, .813),
                            ("robust_acc_ends", .651, .623, .679), ("robust_acc_min", .638, .605, .664),
                            ("robust_acc_avg", .647, .617, .675),
                            ("robust_loss_barrier", .045, .036, .054)):
        row.update({name: v, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_std": 0.0123})
    return pd.DataFrame([row])


def test_console_summary_has_the_precision_of_the_tables():
    text = format_summary(_summary(1))
    assert "0.045 [0.036, 0.054]" in text and "63.8 [60.5, 66.4]" in text
    assert "95% bootstrap CI" in text
    assert "0.045±0.012" not in text and "± 0.012" in format_summary(_summary(3))
    assert "over 3 seed pairs" in format_summary(_summary(3))


def test_stage_timer_accumulates_and_prints():
    import itertools

    now = itertools.chain([0.0, 1.0, 3.5, 4.0, 4.5], itertools.repeat(10.0))
    timer = StageTimer(clock=lambda: next(now))
    with timer("endpoint"):
        pass
    with timer("endpoint"):
        pass
    d = timer.to_dict()
    assert d["stages"] == [{"stage": "endpoint", "calls": 2, "seconds": 3.0}]
    assert d["total"] == 10.0
    lines = timer.table().splitlines()
    assert lines[1].split()[:3] == ["endpoint", "2", "3.0"] and lines[-1].split() == ["total", "10.0"]


def _helps(parser) -> dict[str, str]:
    """Option -> its rendered help text (wrapped lines joined)."""
    text = parser.format_help()
    out, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-[-\w]+(?:, --[-\w]+)?)(?: (?:\{[^}]*\}|[A-Z_,{}.\[\]]+))?(?:\s{2,}(.*))?$", line)
        if m:
            cur = m.group(1).split(", ")[-1]
            out[cur] = m.group(2) or ""
        elif cur and line.startswith("    "):
            out[cur] += " " + line.strip()
    return out


def _parsers():
    from robustpath.report.cli import main as _  # noqa: F401
    from robustpath.sweep.__main__ import parser as sweep_parser
    from robustpath.zoo.cli import parser as zoo_parser

    zp = zoo_parser()
    subs = zp._subparsers._group_actions[0].choices
    from robustpath.report import cli as report
    from robustpath.soup import cli as soup_cli

    return {"bench": bench.parser(), "train": train_cli._parser(), "sweep": sweep_parser(),
            "zoo compare": subs["compare"], "zoo list": subs["list"], "soup": soup_cli.parser(),
            "report": report.parser()}


@pytest.mark.parametrize("name", ["bench", "train", "sweep", "zoo compare", "zoo list", "soup",
                                  "report"])
def test_help_shows_each_default_once_and_never_none(name):
    parser = _parsers()[name]
    for opt, text in _helps(parser).items():
        t = text.replace("-\n", "").lower()
        assert t.count("default") <= 1, f"{name} {opt}: {text}"
        assert "(default: none)" not in t, f"{name} {opt}: {text}"
    for action in parser._actions:
        # identity for None/False: a default of 0 (soup --merge-seed) must be shown too
        if action.default is not None and action.default is not False \
                and action.default not in ("", "==SUPPRESS==") and action.option_strings \
                and action.nargs != 0 and action.help and "default" not in action.help.lower():
            shown = _helps(parser)[action.option_strings[-1]]
            assert f"(default: {action.default})" in " ".join(shown.split()).replace("- ", "-"), \
                f"{name} {action.option_strings[-1]}: {shown}"


def test_train_help_shows_every_default():
    helps = _helps(train_cli._parser())
    for opt, value in (("--arch", "cnn-small"), ("--batch-size", "128"), ("--schedule", "onecycle"),
                       ("--train-subset", "10000"), ("--test-subset", "1000")):
        assert value in helps[opt], (opt, helps[opt])


def test_bench_help_states_the_preset_values():
    helps = _helps(bench.parser())
    from robustpath.config import PRESETS

    assert f"quick {PRESETS.get('quick')['plane_grid']}" in helps["--plane-grid"]
    assert "quick fashion-mnist" in " ".join(helps["--dataset"].split()).replace("- ", "-")


def test_help_default_of_zero_is_shown():
    from robustpath.soup import cli as soup_cli
    from robustpath.sweep.__main__ import parser as sweep_parser

    assert "(default: 0)" in " ".join(_helps(soup_cli.parser())["--merge-seed"].split())
    assert "(default: 0)" in " ".join(_helps(sweep_parser())["--max-parallel"].split())


# flag -> config field for the preset-dependent settings whose help must state every
# preset's value (a help that said "quick 200" while the quick preset had 25 failed this)
PRESET_FLAGS = {"--steps": "eval_steps", "--train-steps": "train_steps", "--epochs": "endpoint_epochs",
                "--curve-epochs": "curve_epochs", "--schedule": "schedule",
                "--curve-schedule": "curve_schedule", "--attack-mode": "attack_mode",
                "--affine-degrees": "affine_degrees", "--train-subset": "train_subset",
                "--test-subset": "test_subset", "--t-points": "t_points",
                "--bn-inputs": "bn_inputs", "--bn-batches": "bn_batches",
                "--strong-examples": "strong_examples", "--plane-grid": "plane_grid",
                "--restarts": "restarts", "--bootstrap": "bootstrap"}


@pytest.mark.parametrize("name", ["bench", "soup"])
def test_preset_dependent_helps_state_the_true_preset_values(name):
    from dataclasses import fields

    from robustpath.config import PRESETS, BenchConfig

    base = {f.name: f.default for f in fields(BenchConfig)}
    helps = _helps(_parsers()[name])
    for flag, key in PRESET_FLAGS.items():
        if flag not in helps:
            continue
        text = " ".join(helps[flag].split()).replace("- ", "-")
        values = {n: PRESETS.get(n).get(key, base[key]) for n in PRESETS.names()}
        if len(set(map(str, values.values()))) == 1:
            assert f"default: {next(iter(values.values()))}" in text, (name, flag, text)
        else:
            for preset, v in values.items():
                assert f"{preset} {v}" in text, (name, flag, preset, v, text)


def test_zoo_heat_map_colour_bar_of_tied_values_shows_the_value(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from robustpath.zoo.matrix import plot_barrier_matrix

    seen = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (seen.append(fig), real_close(fig)))
    frame = pd.DataFrame([{"model_a": "a", "model_b": "b", "index_a": 0, "index_b": 1,
                           "align": "none", "curve": "line", "robust_loss_barrier": 0.25,
                           "robust_acc_min": 0.0}])
    plot_barrier_matrix(frame, ["a", "b"], tmp_path)
    fig = seen[0]
    cbars = [ax for ax in fig.axes if ax.get_ylabel() == "Robust min (grid) (%)"]  # metric_registry
    assert cbars, [ax.get_ylabel() for ax in fig.axes]
    lo, hi = cbars[0].get_ylim()
    assert lo < 0.0 < hi and hi - lo < 0.5  # around 0 %, not a 0-1 span read as percent
    assert [t.get_text() for t in cbars[0].get_yticklabels()] == ["0.0"]


def test_overwrite_refusal_names_the_settings_that_differ():
    from robustpath.config import from_preset

    old = from_preset("quick").to_dict()
    new = from_preset("quick", eps="8/255", seeds=[0, 1, 2, 3]).to_dict()
    text = outputs.config_changes(old, new)
    assert text == "eps: 0.1 -> 8/255, seeds: [0, 1, 2, 3, 4, 5] -> [0, 1, 2, 3]"
    assert outputs.config_changes(old, dict(old, device="cuda")) == ""  # not result-relevant


def test_sweep_dry_run_shows_the_folder_and_each_cells_settings(tmp_path, capsys):
    from robustpath.sweep.__main__ import main as sweep_main

    assert sweep_main(["sweeps/quick.toml", "--dry-run", "--out", str(tmp_path / "sw")]) == 0
    out = capsys.readouterr().out
    assert f"output folder: {tmp_path / 'sw'}/" in out
    cells = [ln for ln in out.splitlines() if ln.startswith("      ")]
    assert cells and all("seeds" in c and "ε = 0.1" in c and "epochs" in c for c in cells)
    assert not (tmp_path / "sw").exists()  # nothing run, nothing written
