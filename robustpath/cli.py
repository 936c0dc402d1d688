"""Shared pieces of the command-line interfaces (bench, report, train, zoo, soup, sweep).

Every command has ``--version``; the commands that run one configuration (bench, zoo
compare, soup, train) also ``--config FILE`` (a run folder's ``config.json``, or a
YAML / TOML / JSON file of config fields, read as if its fields were typed first) and
``--print-config`` (the resolved, validated configuration as JSON; nothing runs). The
shared vocabulary: ``--threat-model Linf|L2`` (RobustBench's names; stored as ``norm``
linf/l2), ``--eps`` per dataset when left out (:func:`robustpath.config.default_eps`),
``--steps`` the evaluation attack, ``--train-steps`` training. Old spellings
(``--norm``, the zoo's ``--threat``, train's ``--steps`` / ``--method``) still work
through :class:`Deprecated`, with one ``note:`` line naming the new flag.

Why argparse and not jsonargparse (measured on this project, 2 shared cores):
``import jsonargparse`` took 1.0-1.2 s against 0.009 s for argparse, paid by every
``--help`` and every one-line error; ``add_class_arguments(BenchConfig)`` names flags
``--cfg.eval_steps`` (field names with underscores), so the flags users know
(``--epochs``, ``--steps``, ``--no-strong``, ``--curvature``) need a rename per field
anyway, and its type errors are several lines (``Parser key "cfg.eval_steps":\n
Expected a <class 'int'>``) to be folded into the one-line errors of
:mod:`robustpath.errors`. What it would add - config files and printing them - is the
60 lines of :func:`load_config_file` / :func:`parse_with_config` below, which reuse
each command's own flags (so a file's values are checked and named exactly as typed
flags are).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robustpath.errors import UserError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once and only when it is true: appends
    ``(default: X)`` unless the help already states a default (the word "default"),
    the default is None (the help then says what None means, e.g. "the preset's"),
    or the option is a switch (``store_true``: off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # identity, not ``in``: 0 == False, and a default of 0 is a default to show
        hidden = action.default is None or action.default is False \
            or action.default == argparse.SUPPRESS or action.default == ""
        if "default" in text.lower() or hidden or not action.option_strings or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` that keeps the description's and epilog's line breaks."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line and exit code 2, like every
    other bad input (argparse's default prints the usage block first). Help shows
    every default once (:class:`HelpFormatter`) unless another formatter is given."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def data_root(text: str) -> str:
    """argparse ``type`` of ``--data-root``: an existing folder (issue 17). A missing one
    was ignored without a word: Fashion-MNIST then came from Debian's copy. Only a given
    flag is checked; unset, the default ``./data`` may be absent. To download a dataset
    into a new folder, create it first."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} does not exist (create it, or leave "
                                         "--data-root unset)")
    return text


def split_list(text: str) -> list[str]:
    """``"a,b c"`` -> ``["a", "b", "c"]``."""
    return [p for p in str(text).replace(",", " ").split() if p]


# ---------------------------------------------------------------- shared vocabulary
#: RobustBench's threat-model names -> the ``norm`` stored in configs and cache keys
THREAT_MODELS = {"linf": "linf", "l2": "l2"}


def threat_model(text: str) -> str:
    """argparse ``type`` of ``--threat-model``: RobustBench's ``Linf`` or ``L2`` (any
    case) -> the stored ``norm`` (``linf`` / ``l2``)."""
    norm = THREAT_MODELS.get(str(text).strip().lower())
    if norm is None:
        raise argparse.ArgumentTypeError(f"must be Linf or L2, got {text!r}")
    return norm


class Deprecated(argparse.Action):
    """An old spelling of a flag: stores into the new flag's ``dest`` (through its
    ``type``) and prints one ``note:`` line naming the new flag. Hidden from --help."""

    def __init__(self, option_strings, dest, new: str = "", convert=None, **kwargs):
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.convert = new, convert

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        print(f"note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        if self.convert is not None:
            try:
                values = self.convert(values)
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise UserError(f"argument {option_string}: {e}") from None
        setattr(namespace, self.dest, values)


def add_deprecated(p: argparse.ArgumentParser, old: str, new: str, dest: str,
                   convert=None, hint: str | None = None) -> None:
    """``old`` keeps working for now, as ``new`` (one notice line when used)."""
    p.add_argument(old, dest=dest, action=Deprecated, new=hint or new, convert=convert,
                   default=argparse.SUPPRESS)


def add_threat_flags(p: argparse.ArgumentParser, also: str = "also used in training") -> None:
    """``--threat-model`` (old ``--norm``), ``--eps`` and ``--step-size``, defined once for
    every command that trains or attacks (bench, soup, train; the zoo's ``--threat-model``
    also names the ``corruptions`` folder of its ``list``). None: the dataset's default
    (:func:`robustpath.config.default_eps`), L-inf."""
    p.add_argument("--threat-model", dest="norm", type=threat_model, default=None,
                   metavar="{Linf,L2}",
                   help="RobustBench threat model: Linf or L2 (default Linf)")
    add_deprecated(p, "--norm", "--threat-model", "norm", threat_model, "--threat-model Linf|L2")
    p.add_argument("--eps", default=None, help="attack radius in pixels, e.g. 8/255 or 0.1 "
                   "(default per dataset: 0.1 for 28x28 datasets, 8/255 for CIFAR, 0.5 for "
                   f"CIFAR L2); {also}")
    p.add_argument("--step-size", default=None, help="PGD step size (default eps/4)")


def add_field_flags(p: argparse.ArgumentParser, cls, flag_of, helps: dict,
                    default_text=None, skip: tuple[str, ...] = ()) -> list[str]:
    """A flag for every field of dataclass ``cls`` that ``p`` has none for yet (neither
    ``flag_of(field)`` nor its ``--no-`` switch), typed from the annotation: bool ->
    ``--x`` / ``--no-x``, list -> comma-separated, int, float (fractions like 1/255 too),
    str. Default None: the preset's / the dataclass's (``default_text(field)`` says which
    in --help). ``helps``: field -> help text; ``skip``: fields that are no flag. So a
    field added to the configuration is a flag without editing the parser. Returns the
    fields added."""
    from dataclasses import MISSING, fields

    from robustpath.numbers import parse_fraction

    known = p._option_string_actions  # noqa: SLF001 - argparse has no public lookup
    added = []
    for f in fields(cls):
        flag = flag_of(f.name)
        if flag in known or "--no-" + flag[2:] in known or f.name in skip:
            continue
        typ = str(f.type)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        text = helps.get(f.name) or f"setting {f.name} of {cls.__name__}"
        if default_text is not None:
            text += f" ({default_text(f.name)})"
        elif "default" not in text:
            text += f" (default: {default})"
        kw: dict = {"dest": f.name, "default": None, "help": text}
        if typ.startswith("bool"):
            kw["action"] = argparse.BooleanOptionalAction
        elif typ.startswith("list"):
            item = int if "int" in typ else float if "float" in typ else str
            kw["type"] = lambda t, item=item, flag=flag: _items(t, item, flag)
        elif typ.startswith("int"):
            kw["type"] = int
        elif typ.startswith("float"):
            kw["type"] = lambda t, flag=flag: parse_fraction(t, name=flag)
        p.add_argument(flag, **kw)
        added.append(f.name)
    return added


def _items(text: str, item, flag: str) -> list:
    try:
        return [item(v) for v in split_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes comma-separated "
                                         f"{item.__name__} values, got {text!r}") from None


def add_run_options(p: argparse.ArgumentParser, config: bool = True) -> None:
    """The options every command has: ``--version``; with ``config``, ``--config FILE``
    (a run folder's ``config.json``, the folder itself, or a YAML / TOML / JSON file of
    config fields; flags given beside it win) and ``--print-config`` (the resolved
    configuration as JSON, then exit, running nothing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:  # the installed distribution's version (pyproject.toml), without importing the
        __version__ = version("robustpath")  # front door and everything it reaches
    except PackageNotFoundError:  # pragma: no cover - run from a source tree, not installed
        __version__ = "unknown (not installed)"
    p.add_argument("--version", action="version", version=f"robustpath {__version__}",
                   help="print robustpath's version and exit")
    if config:
        p.add_argument("--config", default=None, metavar="FILE",
                       help="read settings from FILE: a run folder (its config.json) or a "
                       ".json / .yaml / .toml file of config fields (as --print-config writes "
                       "them); flags given on the command line override it")
        p.add_argument("--print-config", action="store_true",
                       help="print the resolved configuration as JSON and exit (runs nothing)")


def load_config_file(path: str) -> dict:
    """The config fields in ``path``: a run folder (its ``config.json``), or a JSON,
    YAML or TOML file holding one mapping."""
    import json

    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parser's error becomes one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--config {path}: not readable as {p.suffix.lstrip('.') or 'json'}: "
                        f"{first}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of config fields")
    return data


def _as_text(value) -> str:
    """A config value as its flag's text: lists comma-joined, pairs ``A:B``, a mapping
    ``NAME=VALUE``; floats by repr (exact round trip)."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(":".join(map(str, v)) if isinstance(v, (list, tuple)) else repr(v)
                        if isinstance(v, float) else str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def config_argv(p: argparse.ArgumentParser, values: dict, flag_of,
                defaults: dict | None = None) -> tuple[list[str], dict]:
    """``values`` (config fields) as command-line tokens of parser ``p``, to be put
    before the user's own (argparse: the last occurrence wins, so typed flags override
    the file). A bool field is a switch (``--x`` for True, ``--no-x`` for False where
    the parser has it). Returns the tokens and the fields no flag of ``p`` sets (the
    caller sets them on the resolved config). A field equal to its entry in
    ``defaults`` (what the command resolves without the flag) gives no token, so that
    settings of stages that are off (e.g. ``curvature_iters`` without ``--curvature``)
    are not flags the command would refuse."""
    known = p._option_string_actions  # noqa: SLF001 - argparse has no public lookup
    argv, rest = [], {}
    for name, value in values.items():
        if defaults is not None and name in defaults and defaults[name] == value:
            continue
        flag = flag_of(name)
        if isinstance(value, bool):
            on, off = flag, "--no-" + flag[2:]
            if value and on in known and known[on].nargs == 0:
                argv.append(on)
            elif not value and off in known:
                argv.append(off)
            elif not ((value and off in known) or (not value and on in known)):
                rest[name] = value  # no switch: neither given nor the parser's default
            continue
        if flag in known and not isinstance(known[flag], Deprecated):
            if value is None or value == [] or value == {}:
                continue
            argv += [flag, _as_text(value)]
        else:
            rest[name] = value
    return argv, rest


def parse_with_config(p: argparse.ArgumentParser, argv: list[str], flag_of,
                      legacy: dict | None = None,
                      defaults=None, sub: argparse.ArgumentParser | None = None,
                      transform=None) -> tuple[argparse.Namespace, dict]:
    """Parse ``argv``; with ``--config FILE`` the file's fields come first as flags
    (:func:`config_argv`), the typed flags after them. ``legacy`` renames fields of old
    config files; ``defaults(values) -> dict`` what the command resolves for fields
    left out (:func:`config_argv`). Returns the namespace and the file's fields that no
    flag sets. ``sub``: the subcommand parser (``argv[0]`` its name) whose flags the
    file sets; ``transform(values) -> values`` reshapes a command's file (e.g. nested
    attack settings to flat fields)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return p.parse_args(argv), {}
    values = load_config_file(known.config)
    if transform is not None:
        values = transform(values)
    for old, new in (legacy or {}).items():
        if old in values and new not in values:
            values[new] = values.pop(old)
    tokens, rest = config_argv(sub or p, values, flag_of,
                               defaults(values) if defaults else None)
    argv = list(argv)
    head, argv = (argv[:1], argv[1:]) if sub is not None else ([], argv)
    return p.parse_args(head + tokens + argv), rest
