"""``python -m robustpath.zoo``: ``list`` and ``compare``."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from robustpath.cli import (
    ArgumentParser,
    HelpFormatter,
    add_deprecated,
    add_run_options,
    parse_with_config,
)
from robustpath.config import flag_of
from robustpath.errors import UserError, cli_main
from robustpath.io.lock import RUN_LOCK
from robustpath.zoo.access import (
    DEFAULT_MODEL_DIR,
    NORM_OF_THREAT,
    checkpoint_path,
    list_entries,
    parse_dataset,
    parse_threat,
    registry,
)
from robustpath.zoo.config import (
    LEGACY_FIELDS,
    CompareConfig,
    add_compare_arguments,
    config_from_args,
    file_defaults,
)
from robustpath.zoo.run import run_compare


# ---------------------------------------------------------------- CLI
def threat_norm(name: str) -> str:
    """``--threat-model`` of ``compare`` -> the stored ``norm``: Linf or L2 only (the zoo's
    ``list`` also knows ``corruptions``)."""
    threat = parse_threat(name)
    if threat not in NORM_OF_THREAT:
        raise UserError(f"compare supports the Linf and L2 threat models, not {threat}")
    return NORM_OF_THREAT[threat]


def parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    p = ArgumentParser(prog="python -m robustpath.zoo", description="Paths between published robust models of RobustBench.",
                formatter_class=fmt)
    add_run_options(p, config=False)
    sub = p.add_subparsers(dest="command", metavar="{list,compare}", parser_class=ArgumentParser)
    sub.required = True

    def common(q):
        q.add_argument("--dataset", default="cifar10",
                       help="RobustBench dataset: cifar10, cifar100 (list also: imagenet)")
        q.add_argument("--threat-model", dest="threat", default="Linf", metavar="{Linf,L2}",
                       help="RobustBench threat model: Linf or L2 (list also: corruptions)")
        add_deprecated(q, "--threat", "--threat-model", "threat")
        q.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                       help="RobustBench model folder, laid out <dir>/<dataset>/<threat>/<name>.pt "
                       "(env ROBUSTPATH_MODEL_DIR)")

    q = sub.add_parser("list", formatter_class=fmt,
                       help="zoo entries grouped by architecture",
                       description="List zoo entries grouped by architecture (class name and "
                       "parameter shapes, read from constructors run offline without weights, "
                       "parameters on the meta device) and say per entry whether robustpath "
                       "aligns it whole, partially (which units stay in place) or refuses it "
                       "(why), from its permutation spec; verdicts are cached per architecture "
                       "($ROBUSTPATH_ZOO_CACHE, default ~/.cache/robustpath/zoo_align). "
                       "'*' marks checkpoints present in --model-dir.")
    common(q)
    add_run_options(q, config=False)
    q.add_argument("--present", action="store_true",
                   help="only entries whose checkpoint file is in --model-dir")
    q.add_argument("--json", action="store_true", help="print the groups as JSON")
    q.add_argument("--no-align-check", dest="align_check", action="store_false",
                   help="skip the per-entry alignment verdict (architectures only)")

    q = sub.add_parser("compare", formatter_class=fmt, help="paths between same-architecture "
                       "models: align, evaluate, barrier matrix",
                       description="For every pair of same-architecture models: align, evaluate "
                       "the paths under the attack, write records, tables, plots and the pairwise "
                       "barrier matrix; optionally AutoAttack at chosen t and a transfer check.")
    common(q)
    add_compare_arguments(q)
    p.compare = q  # the subcommand whose flags a --config file sets
    return p


def cmdsplit_list(args) -> int:
    if Path(args.model_dir).exists() and not Path(args.model_dir).is_dir():
        raise UserError(f"--model-dir {args.model_dir} is a file, not a folder")
    dataset, threat = parse_dataset(args.dataset), parse_threat(args.threat)
    names = list(registry(dataset, threat))
    have = {n for n in names if checkpoint_path(args.model_dir, dataset, threat, n).is_file()}
    if args.present:
        names = [n for n in names if n in have]
    t0 = time.perf_counter()
    groups = list_entries(dataset, threat, names, align=args.align_check)
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({g: [dict(e.to_dict(), present=e.name in have) for e in es]
                          for g, es in groups.items()}, indent=2))
        return 0
    print(f"RobustBench {dataset} {threat}: {len(names)} entries, {len(have)} present in "
          f"{args.model_dir} (*)")
    for g, es in groups.items():
        print(f"\n{g}: {len(es)}")
        verdicts = {e.alignment.line() for e in es if e.alignment is not None}
        once = len(verdicts) == 1 and len(es) > 1 and g != "not usable here"
        if once:  # one architecture, one verdict
            print(f"  alignment: {verdicts.pop()}")
        for e in es:
            extra = f"  [{e.note}]" if e.note else f"  normalisation: {e.normalisation}"
            print(f"  {'*' if e.name in have else ' '} {e.name}{extra}")
            if e.alignment is not None and not once:
                print(f"      alignment: {e.alignment.line()}")
    if args.align_check:
        counts = Counter(e.alignment.status for es in groups.values() for e in es)
        print(f"\nalignment: {counts['whole']} whole, {counts['partial']} partial, "
              f"{counts['refused']} refused ({seconds:.1f} s)")
    return 0


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    if argv[:1] != ["compare"]:
        args = p.parse_args(argv)
        if args.command == "list":
            return cmdsplit_list(args)
    args, rest = parse_with_config(p, argv, flag_of, legacy=LEGACY_FIELDS,
                                   defaults=file_defaults, sub=p.compare)
    args.norm = threat_norm(args.threat)
    cfg = config_from_args(args)
    if rest:  # fields of the file that no flag sets
        unknown = set(rest) - set(CompareConfig.__dataclass_fields__)
        if unknown:
            raise UserError(f"--config: unknown config keys: {', '.join(sorted(unknown))}")
        cfg = replace(cfg, **rest).validate()
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    command = "python -m robustpath.zoo " + " ".join(shlex.quote(a) for a in argv)
    existed = Path(cfg.out).exists()
    try:
        run_compare(cfg, progress=not args.no_progress, overwrite=args.overwrite,
                    command=command.strip(), workers=args.workers)
    except BaseException:
        if not existed:  # a comparison that failed before writing leaves no empty folder
            with contextlib.suppress(OSError):
                (Path(cfg.out) / RUN_LOCK).unlink(missing_ok=True)
                Path(cfg.out).rmdir()
        raise
    return 0

