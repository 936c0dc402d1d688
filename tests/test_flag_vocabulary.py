"""One flag vocabulary (issue 26): every command spells and means the shared flags the
same way, old spellings still work with one notice line, ``--config`` reproduces a
run's configuration, and the zoo's stage settings are the shared groups."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from robustpath import bench
from robustpath.config import BenchConfig, StageConfig, default_eps
from robustpath.report import cli as report
from robustpath.soup import cli as soup_cli
from robustpath.sweep import __main__ as sweep_main
from robustpath.train import cli as train_cli
from robustpath.zoo import cli as zoo_cli

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN = ROOT / "results" / "fashion-mnist-cnn-small-quick"


PARSERS = {"bench": bench.parser(), "zoo": zoo_cli.parser(), "soup": soup_cli.parser(),
           "train": train_cli._parser()}


def _resolved(name: str, argv: list[str]) -> dict:
    """The shared settings a command resolves from ``argv``, in one common view."""
    if name == "bench":
        c = bench.parse(argv)[1]
    elif name == "zoo":
        from robustpath.zoo.config import config_from_args

        args = PARSERS["zoo"].parse_args(["compare", "--models", "a,b", *argv])
        args.norm = zoo_cli.threat_norm(args.threat)
        c = config_from_args(args)
    elif name == "soup":
        c = soup_cli.config_from_args(PARSERS["soup"].parse_args(argv))
    else:
        t = train_cli.config_from_args(PARSERS["train"].parse_args(argv))
        return {"dataset": t.dataset, "norm": t.attack.norm, "eps": t.attack.eps,
                "train_steps": t.attack.steps, "eval_steps": t.eval_attack.steps,
                "step_size": t.attack.step_size, "eval_norm": t.eval_attack.norm,
                "eval_eps": t.eval_attack.eps}
    return {"dataset": c.dataset, "norm": c.norm, "eps": c.eps, "train_steps": c.train_steps,
            "eval_steps": c.eval_steps, "step_size": c.step_size,
            "eval_norm": c.eval_attack().norm, "eval_eps": c.eval_attack().eps}


#: shared flag, value typed -> what every command must resolve it to
SHARED = [(["--threat-model", "L2"], {"norm": "l2", "eval_norm": "l2"}),
          (["--threat-model", "linf"], {"norm": "linf"}),
          (["--eps", "4/255"], {"eps": 4 / 255, "eval_eps": 4 / 255}),
          (["--train-steps", "3"], {"train_steps": 3}),
          (["--steps", "7"], {"eval_steps": 7}),
          (["--step-size", "1/255"], {"step_size": 1 / 255}),
          (["--dataset", "cifar100"], {"dataset": "cifar100", "eps": 8 / 255}),
          (["--threat-model", "L2", "--dataset", "cifar10"], {"eps": 0.5})]


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_shared_flags_mean_the_same_everywhere(name):
    """Each command's parser is parsed with each shared flag and the resolved settings
    compared: the same spelling sets the same setting to the same value everywhere."""
    acts = getattr(PARSERS[name], "compare", PARSERS[name])._option_string_actions
    for flag in ("--threat-model", "--eps", "--train-steps", "--step-size", "--dataset",
                 "--device", "--data-root", "--config", "--print-config", "--version"):
        assert flag in acts, (name, flag)
    dataset = [] if name == "zoo" else ["--dataset", "fashion-mnist"]
    for argv, want in SHARED:
        if name == "train" and argv[0] == "--steps":
            # train's --steps was its training steps: an old spelling of --train-steps now
            assert type(acts["--steps"]).__name__ == "Deprecated"
            continue
        if name == "zoo" and "--dataset" not in argv:
            argv = [*argv]  # the zoo's default dataset is cifar10 (RobustBench's)
        got = _resolved(name, [*dataset, *argv] if "--dataset" not in argv else argv)
        for k, v in want.items():
            assert got[k] == pytest.approx(v) if isinstance(v, float) else got[k] == v, \
                (name, argv, k, got[k])
    # --attack is the evaluation attack wherever it exists: train's is --train-attack
    assert "--attack" not in acts or name != "train"


def test_every_command_has_version(capsys):
    for main in (bench.main, report.main, train_cli.main, zoo_cli.main, soup_cli.main,
                 sweep_main.main):
        with pytest.raises(SystemExit) as e:
            main(["--version"])
        assert e.value.code == 0
    assert capsys.readouterr().out.count("robustpath ") == 6


@pytest.mark.parametrize("main,argv,notice", [
    (bench.main, ["--norm", "l2"], "--norm is deprecated; use --threat-model"),
    (train_cli.main, ["--steps", "3"], "--steps is deprecated; use --train-steps"),
    (train_cli.main, ["--method", "fgsm"], "--method is deprecated; use --train-attack"),
    (zoo_cli.main, ["compare", "--models", "a,b", "--threat", "L2"],
     "--threat is deprecated; use --threat-model"),
])
def test_old_spellings_work_with_one_notice(main, argv, notice, capsys):
    assert main([*argv, "--print-config"]) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"note: {notice}"), lines
    cfg = json.loads(out)
    flat = cfg.get("attack") if main is train_cli.main else cfg
    if "--norm" in argv or "--threat" in argv:
        assert flat["norm"] == "l2"
    if "--steps" in argv:
        assert flat["steps"] == 3
    if "--method" in argv:
        assert cfg["method"] == "fgsm"


def test_eps_defaults_per_dataset_in_train_too(capsys):
    assert train_cli.main(["--dataset", "cifar10", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["attack"]["eps"] == cfg["eval_attack"]["eps"] == 8 / 255
    assert default_eps("fashion-mnist", "linf") == 0.1
    assert default_eps("cifar10", "l2") == 0.5


def test_bad_threat_model_is_one_line_exit_2(capsys):
    assert bench.main(["--threat-model", "L3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threat-model" in err[0] and "Linf or L2" in err[0]


def test_errors_name_the_typed_flag(capsys):
    assert bench.main(["--epochs", "0", "--print-config"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_config_reproduces_the_committed_default_run(capsys):
    """``--config <run>/config.json`` resolves to that run's configuration, field for
    field (also fields no bench flag sets, e.g. lr); a typed flag wins over the file."""
    stored = json.loads((DEFAULT_RUN / "config.json").read_text())
    _, cfg = bench.parse(["--config", str(DEFAULT_RUN / "config.json")])
    got = cfg.to_dict()
    # a field added after the run was made is absent from its file: it must be at its default
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(type(cfg))}
    assert {k: got[k] for k in stored} == stored
    assert all(got[k] == defaults[k] for k in set(got) - set(stored))
    _, cfg = bench.parse(["--config", str(DEFAULT_RUN), "--steps", "3"])
    got = cfg.to_dict()
    assert cfg.eval_steps == 3 and {k: got[k] for k in stored} == dict(stored, eval_steps=3)


def test_config_reads_yaml_and_toml(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("eval_steps: 7\nnorm: l2\nlr: 0.03\n")
    (tmp_path / "c.toml").write_text('eval_steps = 7\nnorm = "l2"\nlr = 0.03\n')
    for f in ("c.yaml", "c.toml"):
        _, cfg = bench.parse(["--config", str(tmp_path / f)])
        assert (cfg.eval_steps, cfg.norm, cfg.lr) == (7, "l2", 0.03)
    (tmp_path / "bad.json").write_text("{nope")
    assert bench.main(["--config", str(tmp_path / "bad.json")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_zoo_config_round_trips_and_reads_old_names(tmp_path, capsys):
    assert zoo_cli.main(["compare", "--models", "a,b", "--threat-model", "L2", "--steps", "3",
                         "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    (tmp_path / "config.json").write_text(json.dumps(printed))
    assert zoo_cli.main(["compare", "--config", str(tmp_path), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    # a comparison's config.json from before the shared schema: threat / steps
    old = {k: v for k, v in printed.items() if k not in ("norm", "eval_steps")}
    (tmp_path / "config.json").write_text(json.dumps(dict(old, threat="L2", steps=3)))
    assert zoo_cli.main(["compare", "--config", str(tmp_path), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == printed


def test_zoo_stage_config_is_the_shared_groups():
    """The zoo's stage settings are its own shared fields, nothing copied by hand."""
    from dataclasses import fields

    from robustpath.zoo.config import CompareConfig
    from robustpath.zoo.source import stage_config

    cfg = CompareConfig(models=["a", "b"], eval_steps=3, norm="l2").validate()
    scfg = stage_config(cfg)
    assert isinstance(scfg, BenchConfig)
    for f in fields(StageConfig):
        assert getattr(scfg, f.name) == getattr(cfg, f.name), f.name
    assert scfg.eval_attack() == cfg.eval_attack() and scfg.eps == 0.5


def test_renorm_and_alignment_registries_carry_the_metadata():
    from robustpath.align import methods
    from robustpath.paths.repair import RENORMS

    assert [n for n in RENORMS.names() if RENORMS.get(n).recomputes_bn] == ["bn-reset"]
    assert [n for n in RENORMS.names() if not RENORMS.get(n).in_key] == ["bn-reset"]
    assert methods.ORDER == methods.ALIGN.registered() and methods.ORDER[0] == "none"


def test_sweep_files_take_the_flags_names(tmp_path):
    """A sweep file may name settings as the flags do (threat_model, steps)."""
    from robustpath.errors import UserError
    from robustpath.sweep.spec import load_sweep

    f = tmp_path / "tm.toml"
    f.write_text('[grid]\nthreat_model = ["Linf", "L2"]\nseeds = [0, 1]\n'
                 '[overrides]\nsteps = 3\n')
    cells = load_sweep(f, results_root=tmp_path).cells
    assert [(c.cfg.norm, c.cfg.eval_steps) for c in cells] == [("linf", 3), ("l2", 3)]
    f.write_text('[grid]\nseeds = [0, 1]\n[overrides]\nsteps = 3\neval_steps = 4\n')
    with pytest.raises(UserError, match="set it in one place"):
        load_sweep(f, results_root=tmp_path)


def test_soup_and_train_config_round_trip(tmp_path, capsys):
    """What --print-config writes, --config reads back to the same configuration (soup:
    its run folder's config.json is that dict; train: a checkpoint's .json holds it)."""
    assert soup_cli.main(["--models", "4", "--threat-model", "L2", "--steps", "3",
                          "--print-config"]) == 0
    (tmp_path / "soup").mkdir()
    (tmp_path / "soup" / "config.json").write_text(printed := capsys.readouterr().out)
    assert soup_cli.main(["--config", str(tmp_path / "soup"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(printed)
    assert train_cli.main(["--dataset", "cifar10", "--train-steps", "2", "--print-config"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "ep.json").write_text(json.dumps({"config": json.loads(printed)}))
    assert train_cli.main(["--config", str(tmp_path / "ep.json"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(printed)


def test_alignment_registries_name_the_same_methods():
    """Metadata (methods.ALIGN), pairwise matchers (align.MATCHERS) and N-model mergers
    (merge.MERGERS) hold different callables, so they stay three registries; a one-shot
    method registered in one must be in the others (PAM refines a one-shot start)."""
    from robustpath.align import MATCHERS, methods
    from robustpath.soup.merge import MERGERS

    assert set(methods.ONE_SHOT) == set(MATCHERS.names()) == set(MERGERS.names())
    assert set(methods.PAM.values()) <= set(methods.ONE_SHOT)
