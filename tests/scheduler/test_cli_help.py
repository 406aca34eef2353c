"""Help text on every option, examples in every command's help, and a README whose command
reference matches the parser."""

from __future__ import annotations

import argparse
import re

from mono_quant.scheduler import cli
from tests.worker.harness import REPO


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every command and sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def test_every_option_has_help_and_every_command_has_examples():
    parser = cli.build_parser()
    missing, no_examples = [], []
    for path, sub in [((), parser), *_commands(parser)]:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{' '.join(path)} {action.option_strings or action.dest}")
        top_level = len(path) == 1
        if top_level and "example" not in (sub.epilog or ""):
            no_examples.append(" ".join(path))
    assert missing == []
    assert no_examples == []


def test_help_shows_defaults(capsys):
    for argv, shown in ((["run", "--help"], "local job processes (default: 1)"),
                        (["catalog", "list", "--help"], "at most N rows (0: all) (default: 100)"),
                        (["status", "--help"], "(default: 2.0)")):
        try:
            cli.main(argv)
        except SystemExit as e:
            assert e.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert shown in text, (argv, text)


def test_readme_command_reference_matches_the_parser():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Command reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `mono-quant ([a-z][a-z -]*?)(?: [A-Z\[<-].*?)?`",
                                section, flags=re.M))
    documented = {d.strip() for d in documented}
    parser = cli.build_parser()
    actual = set()
    for path, sub in _commands(parser):
        has_verbs = any(isinstance(a, argparse._SubParsersAction) and a.required
                        for a in sub._actions)
        if not has_verbs:
            actual.add(" ".join(path))
    assert documented == actual
