"""Escaping of free text by output format: one function per format (issue 25 S4).

Free text in a run or sweep folder (folder names, labels, sweep descriptions, model
names, commands, config values) is data: it is written into Markdown, HTML, LaTeX and
CSV outputs only through these functions, so it can never become markup there (a
heading, a table column, an image, a closing code fence, a LaTeX command, a
spreadsheet formula).

* :func:`md_text` - inline Markdown text (one line; markup characters backslash-escaped,
  which GitHub and :func:`robustpath.report.html.markdown_to_html` both render as the
  characters themselves).
* :func:`md_code` - an inline code span around any text (a fence longer than any
  backtick run inside it).
* :func:`md_fence` - a fenced code block around any text, ditto (CommonMark: a block
  closes only at a fence at least as long as the opening one).
* :func:`md_untrusted` - Markdown written by this package but read back from a folder
  (``strong_eval.md``): raw HTML and image syntax outside code are neutralised.
* :func:`html_text` - HTML text and attribute values.
* :func:`latex` - LaTeX text (the ten special characters).
* :func:`csv_cell` / :func:`csv_frame` - CSV cells that a spreadsheet would run as a
  formula (leading ``= + - @``, tab, CR) get a leading ``'`` (OWASP's advice); numbers
  are left alone.
"""

from __future__ import annotations

import html
import re

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|~])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_NEWLINES = re.compile(r"[\r\n\u2028\u2029]+")


def md_text(value: object) -> str:
    """``value`` as one line of inline Markdown that renders as exactly its text."""
    text = _NEWLINES.sub(" ", str(value))
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def _longest_run(text: str, char: str = "`") -> int:
    return max((len(r) for r in re.findall(re.escape(char) + "+", text)), default=0)


def md_code(value: object) -> str:
    """``value`` as an inline code span (one line)."""
    text = _NEWLINES.sub(" ", str(value))
    fence = "`" * (_longest_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_fence(value: object) -> list[str]:
    """``value`` as the lines of a fenced code block that no line inside can close."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    fence = "`" * max(3, _longest_run(text) + 1)
    return [fence, *text.split("\n"), fence]


_CODE_SPAN = re.compile(r"(`+).+?(?<!`)\1(?!`)")


def md_untrusted(text: str) -> str:
    """Markdown read back from a folder, with raw HTML (``<``) and images (``![``)
    escaped outside code blocks and code spans; its tables and headings stay."""
    out, fence = [], None
    for line in str(text).split("\n"):
        m = re.match(r"\s*(`{3,})", line)
        if fence is not None:
            if m and len(m.group(1)) >= len(fence) and not line.strip().strip("`"):
                fence = None
            out.append(line)
            continue
        if m:
            fence = m.group(1)
            out.append(line)
            continue
        parts, pos = [], 0
        for span in _CODE_SPAN.finditer(line):
            parts.append(_neutral(line[pos:span.start()]) + span.group(0))
            pos = span.end()
        out.append("".join(parts) + _neutral(line[pos:]))
    return "\n".join(out)


def _neutral(text: str) -> str:
    return text.replace("<", "\\<").replace("![", "!\\[")


def html_text(value: object) -> str:
    """``value`` as HTML text or a quoted attribute value."""
    return html.escape(str(value), quote=True)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
          "^": r"\textasciicircum{}", "\n": " ", "\r": " "}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX))


def latex(value: object) -> str:
    """``value`` as LaTeX text (no command, group or math mode can start inside)."""
    return _LATEX_RE.sub(lambda m: _LATEX[m.group(0)], str(value))


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.I)


def csv_cell(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula; non-strings and numbers as they are."""
    if not isinstance(value, str) or not value or _NUMBER.fullmatch(value.strip()):
        return value
    return "'" + value if value[0] in "=+-@\t\r" else value


def csv_frame(frame):
    """A copy of a pandas frame with :func:`csv_cell` applied to its text columns."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(csv_cell)
    return out
