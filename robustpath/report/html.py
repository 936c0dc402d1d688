"""One document per run (and per sweep): ``report.md`` for GitHub and the same
content as a self-contained ``report.html`` (inline CSS, figures embedded as base64
PNG, no network access needed to open it).

The Markdown is the source: :func:`markdown_to_html` renders its small subset
(headings, paragraphs, lists, pipe tables, code blocks, images, inline code and
bold) and inlines every ``![caption](relative.png)`` from the run folder. Nothing
time-dependent goes in, so a rebuild from the same files gives the same bytes.

Sections of a run report: the summary tables with CIs (one per metric group), the
paired differences (``tables/paired.md``, when written), figures, the strong evaluation
(one row per path from ``strong_eval.csv``) and transfer results (``transfer.md``)
when present, warnings, the glossary of every column (:mod:`robustpath.report.metric_registry`),
stage timings (``timings.json`` when recorded), configuration, command, provenance.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from robustpath.io.store import atomic_write_text
from robustpath.report import metric_registry
from robustpath.report.escape import md_code, md_fence, md_text, md_untrusted
from robustpath.report.style import attack_label, format_eps

CSS = """
body{font:15px/1.5 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2328;
 max-width:1280px;margin:2em auto;padding:0 1.5em}
h1{font-size:1.6em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.3em;border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.1em}
table{border-collapse:collapse;margin:.8em 0;font-size:12px;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f6f8fa;white-space:normal;vertical-align:bottom} td:first-child,th:first-child,td:nth-child(2){text-align:left}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;background:#f6f8fa}
pre{padding:.8em;overflow-x:auto;border-radius:6px} code{padding:.1em .3em;border-radius:4px}
pre code{padding:0}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#59636e}
ul.warn li{color:#9a6700}
"""


#: the page loads nothing: images are inline data, styles inline, no script at all
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ---------------------------------------------------------------- Markdown -> HTML
def _inline(text: str) -> str:
    out, pos = [], 0
    for m in _CODE_SPAN.finditer(text):  # code spans of any fence length (escape.md_code)
        code = m.group(2)
        if len(code) > 2 and code.startswith(" ") and code.endswith(" "):
            code = code[1:-1]
        out += [_plain(text[pos:m.start()]), f"<code>{html.escape(code)}</code>"]
        pos = m.end()
    return "".join(out) + _plain(text[pos:])


_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")  # Markdown's backslash escapes (escape.md_text)


def _plain(text: str) -> str:
    kept: list[str] = []

    def keep(m):
        kept.append(m.group(1))
        return f"\ue000{len(kept) - 1}\ue001"

    e = html.escape(_ESCAPED.sub(keep, text), quote=False)
    e = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", e)
    return re.sub("\ue000(\\d+)\ue001", lambda m: html.escape(kept[int(m.group(1))]), e)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _image(caption: str, src: str, base: Path | None) -> str:
    """A figure embedding ``src`` as base64 PNG if it is a PNG file inside ``base`` (the
    run's own files); anything else (a URL, an absolute path, ``..``) becomes its caption
    alone, with no ``src``: the page never fetches or leaks a file (issue 25 S4)."""
    path = None
    if base is not None and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", src) \
            and not Path(src).is_absolute():
        path = base / src
        inside = base.resolve() in path.resolve().parents
        if not (inside and path.suffix.lower() == ".png" and path.is_file()):
            path = None
    cap = _inline(caption)
    if path is None:
        return f"<figure><figcaption>{cap} (image not embedded: only the run's own PNG " \
               f"files are)</figcaption></figure>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(_ESCAPED.sub(r"\1", caption))
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{cap}</figcaption></figure>")


def markdown_to_html(md: str, *, title: str = "report", base: str | Path | None = None) -> str:
    """A complete HTML page for the Markdown subset this module writes; PNG images are
    read from ``base`` and embedded."""
    base = Path(base) if base is not None else None
    lines = md.splitlines()
    out: list[str] = []
    i = 0
    para: list[str] = []

    def flush():
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s.startswith("```"):
            flush()
            fence = re.match(r"`+", s).group(0)  # closed only by a fence as long (CommonMark)
            j = i + 1
            while j < len(lines) and not re.fullmatch(fence + "`*", lines[j].strip()):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", s)
        img = re.match(r"^!\[(.*)\]\((.+)\)$", s)
        if m:
            flush()
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
        elif img:
            flush()
            out.append(_image(img.group(1), img.group(2), base))
        elif s.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$",
                                                                   lines[i + 1].strip()):
            flush()
            head = _cells(s)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            t = ["<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in head)
                 + "</tr></thead><tbody>"]
            t += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows]
            out.append("\n".join(t) + "</tbody></table>")
            continue
        elif re.match(r"^[-*]\s+", s):
            flush()
            cls = ' class="warn"' if out and out[-1] == "<h2>Warnings</h2>" else ""
            items = []
            while i < len(lines) and re.match(r"^[-*]\s+", lines[i].strip()):
                item = re.sub(r"^[-*]\s+", "", lines[i].strip())
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            out.append(f"<ul{cls}>" + "".join(items) + "</ul>")
            continue
        elif not s:
            flush()
        else:
            para.append(s)
        i += 1
    flush()
    body = "\n".join(out)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


# ---------------------------------------------------------------- pieces
def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _kv_table(d: dict, fmt=None) -> list[str]:
    lines = ["| Setting | Value |", "|---|---|"]
    for k in sorted(d):
        v = d[k]
        text = fmt(k, v) if fmt else None
        if text is None:
            text = ", ".join(map(str, v)) if isinstance(v, list) else (
                json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v))
        lines.append(f"| {md_text(k)} | {md_text(text)} |")
    return lines


def _config_value(k: str, v) -> str | None:
    if k in ("eps", "step_size") and v is not None:
        return format_eps(v)
    return None


def _embedded_md(path: Path, heading: str) -> list[str]:
    """A Markdown file of the run, under ``heading``, its own headings demoted."""
    if not path.is_file():
        return []
    text = md_untrusted(path.read_text().rstrip())
    # the file's own title repeating the section heading would read "Strong evaluation"
    # twice in a row
    text = re.sub(rf"\A#+\s*{re.escape(heading)}\s*\n+", "", text, flags=re.I)
    text = re.sub(r"^(#{1,4})\s", lambda m: "#" * min(6, len(m.group(1)) + 2) + " ", text,
                  flags=re.M)
    return [f"## {heading}", "", text, ""]


def _timings(d: dict | None) -> list[str]:
    if not d or not d.get("stages"):
        return []
    lines = ["## Stage timings", "", "| Stage | Calls | Seconds |", "|---|---|---|"]
    stages = d["stages"]
    if isinstance(stages, dict):  # {name: {calls, seconds}}
        stages = [{"stage": k, **v} for k, v in stages.items()]
    for s in stages:
        lines.append(f"| {md_text(s['stage'])} | {s['calls']} | {s['seconds']:.1f} |")
    if "total" in d:
        lines.append(f"| total (wall clock) |  | {d['total']:.1f} |")
    return lines + ["", "Cached stages take well under a second; a rerun shows only "
                    "the work that was redone.", ""]


def run_warnings(run_dir: Path, summary, cfg: dict) -> list[str]:
    """Facts a reader should not miss, from the run's own files."""
    out = []
    pairs = int(summary["pairs"].max()) if len(summary) else 0
    if pairs == 1:
        out.append("One seed pair: the CIs cover the sampling of test examples only, "
                   "not the variation between independently trained endpoints.")
    if cfg.get("preset") == "quick":
        out.append("Quick preset: small subsets and few epochs (a CPU smoke setting), not "
                   "the paper's setting.")
    ev = int(cfg.get("eval_steps") or 0)
    if ev and ev < 20:
        out.append(f"Evaluation attack {str(cfg.get('attack', '')).upper()}-{ev}: robust accuracy "
                   "is an upper bound; see the strong evaluation where present.")
    for name in ("transfer.md", "strong_eval.md"):
        p = run_dir / name
        if p.is_file():
            for line in p.read_text().splitlines():
                if "WARNING" in line or "masking" in line.lower() and "possible" in line.lower():
                    out.append(f"{name}: {line.strip().lstrip('-* ').strip()}")
    extra = _json(run_dir / "warnings.json")
    if isinstance(extra, list):
        out += [str(w) for w in extra]
    return out


#: the report's summary tables: (heading, metric_registry group)
SUMMARY_GROUPS = (("Accuracy along the path", "path"), ("Barriers", "barrier"),
                  ("AutoAttack at the worst point", "strong"))

#: the strong evaluation's per-path summary: (column of strong_eval.csv, role)
STRONG_CELLS = (("clean_acc", "ends"), ("robust_acc_pgd", "ends"), ("robust_acc_aa", "ends"),
                ("robust_acc_pgd", "worst"), ("robust_acc_aa", "worst"),
                ("robust_acc_pgd_many", "worst"), ("robust_acc_worst", "worst"))


def strong_summary(run_dir: Path) -> list[str]:
    """The strong evaluation as one row per path (``strong_eval.csv`` keeps one row per
    attacked point): accuracies at the endpoints (their mean) and at the worst t, and
    the masking flags; empty without ``strong_eval.csv``."""
    import pandas as pd

    from robustpath.report.tables import ALIGN_LABEL

    path = run_dir / "tables" / "strong_eval.csv"  # with exact intervals (strong_io.refresh)
    if not path.is_file():
        path = run_dir / "strong_eval.csv"
    if not path.is_file():
        return []
    try:
        f = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError):
        return []
    if f.empty or not {"path_id", "role", "t"} <= set(f.columns):
        return []
    header = ["Alignment", "Path", "Seeds", "n", "worst t"]
    header += [f"{metric_registry.label(c)} at {'ends' if r == 'ends' else 'worst t'}"
               for c, r in STRONG_CELLS]
    header += ["Masking flags"]
    rows = []
    for _, g in f.groupby("path_id", sort=False):
        ends, worst = g[g["role"].isin(["a", "b"])], g[g["role"] == "worst"]
        first = g.iloc[0]
        cells = [md_text(ALIGN_LABEL.get(first["align"], first["align"])), md_text(first["curve"]),
                 md_text(f"{first['endpoint_a']},{first['endpoint_b']}"), str(int(first["n"])),
                 f"{float(worst['t'].iloc[0]):.3f}" if len(worst) else "-"]
        for col, role in STRONG_CELLS:
            sel = ends if role == "ends" else worst
            cell = f"{100 * float(sel[col].mean()):.1f}" if len(sel) and col in sel else "-"
            if role != "ends" and len(sel) and f"{col}_lo" in sel:  # Clopper-Pearson, 95%
                cell += (f" [{100 * float(sel[col + '_lo'].iloc[0]):.1f}, "
                         f"{100 * float(sel[col + '_hi'].iloc[0]):.1f}]")
            cells.append(cell)
        flags = int(g["masking"].astype(str).str.lower().eq("true").sum()) \
            if "masking" in g else 0
        cells.append(f"**{flags} FLAG**" if flags else "none")
        rows.append(cells)
    extra = int((f["role"] == "extra").sum())
    md = ["## Strong evaluation", "",
          f"AutoAttack and a long PGD at each path's endpoints and at its worst t (the lowest "
          f"evaluation-attack accuracy over grid and refinement), on {int(f['n'].iloc[0])} "
          "test examples (a seeded subset, the same at every point). Accuracies in %; "
          "*ends*: the mean of the two endpoints. Masking flags: points where a transfer "
          "attack beat the direct attack beyond sampling error (a sign of gradient masking). "
          "Every attacked point" + (f" (including {extra} extra t)" if extra else "")
          + ", with transfer accuracies, McNemar p-values and AutoAttack's gradient passes: "
          "`strong_eval.csv`; model cards: `cards/`.", "",
          "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    mism = f[~f["clean_matches_path"].astype(str).str.lower().eq("true")] \
        if "clean_matches_path" in f else f.iloc[:0]
    if len(mism):
        md += ["", "WARNING: clean correctness differs from the path evaluation at "
               + ", ".join(f"{r.path_id} {r.role}" for r in mism.itertuples()) + "."]
    return md + [""]


def glossary(summary, run_dir: Path) -> list[str]:
    """The definitions of every column the report shows (robustpath.report.metric_registry)."""
    names = [m.name for m in metric_registry.ordered() if m.name in summary.columns]
    if (run_dir / "strong_eval.csv").is_file():
        names += [m.name for m in metric_registry.ordered("point")]
    if (run_dir / "plane.json").is_file():
        names += [m.name for m in metric_registry.ordered("plane")]
    return ["## Glossary", "", "Column: the name in the CSV files and `summary.json`; "
            "better: which direction is better; interval: how its uncertainty is computed.",
            "", metric_registry.glossary_markdown(names).rstrip(), ""]


# ---------------------------------------------------------------- run report
def run_markdown(run_dir: str | Path, summary, cfg: dict) -> str:
    """The run report as Markdown (figures as relative links)."""
    from robustpath.report.tables import ALIGN_LABEL, to_markdown

    run_dir = Path(run_dir)
    atk = attack_label(cfg.get("attack"), cfg.get("norm"), cfg.get("eps"), cfg.get("eval_steps"))
    pairs = int(summary["pairs"].max()) if len(summary) else 0
    md = [f"# {md_text(cfg.get('dataset', '?'))} / {md_text(cfg.get('arch', '?'))}: robust "
          "loss barriers", "",
          f"Run folder {md_code(Path(cfg.get('out') or run_dir).name)}; evaluation attack "
          f"{md_text(atk)}; preset {md_text(cfg.get('preset', '?'))}; {pairs} seed "
          f"pair{'s' if pairs != 1 else ''}.", "",
          "## Summary", ""]
    for heading, group in SUMMARY_GROUPS:  # one table per group: 17 columns do not read
        names = [m.name for m in metric_registry.ordered(group) if m.name in summary.columns]
        if names:
            md += [f"### {heading}", "", to_markdown(summary, names).rstrip(), ""]
    md += ["Accuracies in %, losses in nats. "
           + ("Value [95% bootstrap CI over test examples]." if pairs <= 1 else
              "Mean ± std over seed pairs.")
           + " Every column is defined in the glossary below; all of them in one table: "
           "`tables/summary.{md,csv,tex}`; machine-readable: `summary.json`.", ""]
    paired = run_dir / "tables" / "paired.md"
    if paired.is_file():  # robustpath.stats.paired: aligned - unaligned, curve - line
        md += ["## Paired differences", "", md_untrusted(paired.read_text().rstrip()), ""]
    md += ["## Figures", "", "![Clean and robust accuracy and loss along each path. "
           + ("Shaded: 95% bootstrap CI over test examples." if pairs <= 1 else
              f"Shaded: ± 1 std over {pairs} seed pairs.") + "](plots/paths.png)", ""]
    if (run_dir / "plots" / "plane.png").is_file():
        md += ["![Loss (and robust error, where the run stored it) on the plane through θ₀, "
               "the Bezier control point and θ₁ (first seed pair), at true aspect; axes are "
               "L2 distances in weight space; each row shares one colour scale with "
               "log-spaced levels above its minimum; grey: above the top level; hatched: "
               "outside that plane's grid.](plots/plane.png)", ""]
    plane = _json(run_dir / "plane.json")
    if plane:
        cols = [c for c in ("max_out_of_plane", "clean_loss_min", "robust_loss_min",
                            "robust_err_min") if all(c in v for v in plane.values())]
        md += ["| Plane | " + " | ".join(metric_registry.get(c).header for c in cols) + " |",
               "|---|" + "---|" * len(cols)]
        md += [f"| {md_text(ALIGN_LABEL.get(m, m))} | " + " | ".join(
            f"{v[c]:.2g}" if c == "max_out_of_plane" else
            f"{100 * v[c]:.1f}" if metric_registry.get(c).percent else f"{v[c]:.3f}"
            for c in cols) + " |" for m, v in plane.items()]
        md.append("")
    md += strong_summary(run_dir) or _embedded_md(run_dir / "strong_eval.md", "Strong evaluation")
    md += _embedded_md(run_dir / "transfer.md", "Transfer attacks")
    warns = run_warnings(run_dir, summary, cfg)
    if warns:
        md += ["## Warnings", ""] + [f"- {md_untrusted(w)}" for w in warns] + [""]
    md += glossary(summary, run_dir)
    md += _timings(_json(run_dir / "timings.json"))
    md += ["## Configuration", ""] + _kv_table(cfg, _config_value) + [""]
    command = (run_dir / "command.txt").read_text().strip() if (run_dir / "command.txt").is_file() \
        else ""
    if command:
        md += ["## Command", "", *md_fence(command), ""]
    prov = _json(run_dir / "provenance.json")
    if prov:
        flat = {k: v for k, v in prov.items() if k != "versions"}
        flat.update({f"version: {k}": v for k, v in (prov.get("versions") or {}).items()})
        md += ["## Provenance", ""] + _kv_table(flat) + [""]
    md += ["## Files", "", "- `tables/summary.{csv,md,tex}`, `tables/per_path.csv`: the tables",
           "- `summary.json`: the summary with dataset, threat model, attack, endpoints and "
           "each metric's interval (schema `robustpath.summary/1`, docs/summary_json.md)",
           "- `strong_eval.csv`: every attacked point of the strong stage (when run)",
           "- `records.csv`, `examples.npz`: per-t and per-example results (the source of "
           "truth; `python -m robustpath.report` rebuilds everything from them)",
           "- `plots/*.{png,pdf}`: figures (PDF for papers)", ""]
    return "\n".join(md)


def write_run_report(run_dir: str | Path, summary, cfg: dict) -> list[Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir``; returns both paths."""
    run_dir = Path(run_dir)
    md = run_markdown(run_dir, summary, cfg)
    title = f"robustpath: {cfg.get('dataset', '?')} / {cfg.get('arch', '?')}"
    atomic_write_text(run_dir / "report.md", md)
    atomic_write_text(run_dir / "report.html", markdown_to_html(md, title=title, base=run_dir))
    return [run_dir / "report.md", run_dir / "report.html"]


# ---------------------------------------------------------------- sweep report
def write_sweep_report(sweep_dir: str | Path, meta: dict, metrics=()) -> list[Path]:
    """``<sweep>/aggregate/report.{md,html}``: the table across cells, the cells'
    states, every aggregate figure, the command and provenance; ``metrics``: the
    cross-cell table's columns, for the glossary (:data:`robustpath.sweep.report.SWEEP_METRICS`)."""
    sweep_dir = Path(sweep_dir)
    agg = sweep_dir / "aggregate"
    md = [f"# Sweep {md_text(meta.get('name', sweep_dir.name))}", ""]
    table = agg / "summary.md"
    if table.is_file():
        md += ["## Summary across cells", "", md_untrusted(table.read_text().rstrip()), ""]
    cells = agg / "cells.csv"
    if cells.is_file():
        rows = [r.split(",") for r in cells.read_text().strip().splitlines()]
        if rows:
            md += ["## Cells", "", "| " + " | ".join(map(md_text, rows[0])) + " |",
                   "|" + "|".join("---" for _ in rows[0]) + "|"]
            md += ["| " + " | ".join(map(md_text, r)) + " |" for r in rows[1:]] + [""]
    figs = sorted((agg / "plots").glob("*.png")) if (agg / "plots").is_dir() else []
    if figs:
        md += ["## Figures", ""]
        md += [f"![{md_text(f.stem)}: accuracy and loss along each path; the legend says what the "
               f"bands are.](plots/{f.name})" for f in figs] + [""]
    if table.is_file():  # the cross-cell table's columns
        md += ["## Glossary", "", metric_registry.glossary_markdown(
            ["clean_acc_ends", "robust_acc_ends"] + list(metrics)).rstrip(), ""]
    command = (sweep_dir / "command.txt").read_text().strip() \
        if (sweep_dir / "command.txt").is_file() else ""
    if command:
        md += ["## Command", "", *md_fence(command), ""]
    toml = sweep_dir / "sweep.toml"
    if toml.is_file():  # its description is free text: a code block it cannot close
        md += ["## Sweep file", "", *md_fence(toml.read_text().rstrip()), ""]
    prov = _json(sweep_dir / "provenance.json")
    if prov:
        flat = {k: v for k, v in prov.items() if k != "versions"}
        flat.update({f"version: {k}": v for k, v in (prov.get("versions") or {}).items()})
        md += ["## Provenance", ""] + _kv_table(flat) + [""]
    text = "\n".join(md)
    atomic_write_text(agg / "report.md", text)
    atomic_write_text(agg / "report.html",
                      markdown_to_html(text, title=f"robustpath sweep {meta.get('name', '')}",
                                       base=agg))
    return [agg / "report.md", agg / "report.html"]
