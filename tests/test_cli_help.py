"""A command line that explains itself: every option of every subcommand has a help line,
options with a fixed set of values list exactly the registry's names, ``--version`` prints
the package's version, and an unknown choice is one ``error:`` line listing the choices."""

import argparse
import importlib.metadata
import re
import subprocess
import sys

import pytest

import branchnas
from branchnas.cli import build_parser, main


def _parsers(parser, path=("branchnas",)):
    """(command path, parser) of the root parser and every subcommand, recursively."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def _options():
    """(command, action) for every argument a user can give, positional or optional."""
    for command, parser in _parsers(build_parser()):
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                yield command, action


def _name(action):
    return "/".join(action.option_strings) or action.dest


def _explains(text):
    """Help that says something besides its default."""
    if not text or text == argparse.SUPPRESS:
        return False
    rest = re.sub(r"\(default:[^)]*\)", "", text)
    return len(re.findall(r"[A-Za-z]{2,}", rest)) >= 2


def test_every_option_of_every_command_has_a_help_line():
    missing = [f"{command} {_name(a)}" for command, a in _options() if not _explains(a.help)]
    assert not missing, "options without a help line: " + ", ".join(missing)


def test_every_command_has_a_help_line():
    for command, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                silent = [c.dest for c in action._choices_actions if not _explains(c.help)]
                assert not silent, f"{command}: commands without help: {silent}"
                assert len(action._choices_actions) == len(action.choices)


def _registries():
    from branchnas.affinity.measures import list_measures
    from branchnas.models.baselines import list_baselines
    from branchnas.pipeline.executor import list_executors
    from branchnas.pipeline.resolve import list_profiles
    from branchnas.search import list_strategies
    from branchnas.training import config
    from branchnas.training.weighting import list_weightings

    return {
        "train_weighting": list_weightings(),
        "train_optimizer": config.OPTIMIZERS,
        "train_schedule": config.SCHEDULES,
        "train_amp": config.AMP_MODES,
        "train_monitor": getattr(config, "MONITORS", None),
        "measure": list_measures(),
        "strategy": ["auto", *list_strategies()],
        "baselines": list_baselines(),
        "profile": list_profiles(),
        "executor": list_executors(),
    }


def test_options_with_fixed_values_list_the_registry_names():
    expected = {k: v for k, v in _registries().items() if v is not None}
    seen = set()
    for command, action in _options():
        if action.dest in expected:
            seen.add(action.dest)
            assert action.choices is not None, f"{command} {_name(action)} lists no choices"
            assert sorted(action.choices) == sorted(expected[action.dest]), f"{command} {_name(action)}"
    baseline = dict(_parsers(build_parser()))["branchnas baseline"]
    positional = next(a for a in baseline._actions if a.dest == "name")
    from branchnas.models.baselines import list_baselines

    assert sorted(positional.choices) == sorted(list_baselines())
    # each of these is an option of some command (weighting, optimizer, ... are training options)
    assert seen >= {"train_weighting", "train_optimizer", "train_schedule", "train_amp", "measure",
                    "strategy", "baselines", "profile"}


def _help_text(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_shows_the_choices(capsys):
    from branchnas.affinity.measures import list_measures
    from branchnas.search import list_strategies
    from branchnas.training.config import OPTIMIZERS
    from branchnas.training.weighting import list_weightings

    text = _help_text("run", capsys)
    assert f"(one of: {', '.join(list_weightings())})" in text
    assert "--optimizer {" + ",".join(OPTIMIZERS) + "}" in text
    assert f"affinity measure: {', '.join(list_measures())};" in text
    assert f"tree search: {', '.join(['auto', *list_strategies()])};" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"branchnas {branchnas.__version__}\n"
    try:  # installed: the package metadata agrees (setup.cfg reads branchnas.__version__)
        assert importlib.metadata.version("branchnas") == branchnas.__version__
    except importlib.metadata.PackageNotFoundError:
        pass


@pytest.mark.parametrize("argv, option", [
    (["train", "--tree", "t.json", "--weighting", "nope"], "weighting"),
    (["search", "--strategy", "nope"], "strategy"),
    (["run", "--measure", "nope"], "measure"),
    (["run", "--baselines", "shared", "nope"], "baselines"),
    (["baseline", "nope"], "name"),
    (["train-single", "--optimizer", "nope"], "optimizer"),
])
def test_unknown_choice_is_one_error_line_listing_the_choices(argv, option, capsys, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    choices = next(a.choices for c, a in _options()
                   if c == f"branchnas {argv[0]}" and a.dest.endswith(option))
    assert all(repr(c) in lines[0] or c in lines[0] for c in choices), lines[0]
    assert f"branchnas {argv[0]} --help" in lines[0]
    assert captured.out == "" and not any(tmp_path.iterdir())  # nothing written


def test_top_level_help_does_not_import_torch():
    code = ("import sys\nfrom branchnas.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
