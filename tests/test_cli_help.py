"""Every command-line tool documents every flag: help text, and the default where there is one
(issue 17). The parsers are taken from the tools themselves, as users run them."""
from __future__ import annotations

import argparse
import importlib

import pytest

from xkd.cli_help import HelpFormatter

TOOLS = ["launch.pretrain", "launch.slurm_submit", "launch.export_encoders", "data_prep.make_shards",
         "data_prep.make_av_corpus", "eval.linear_svm", "eval.fc_tune", "eval.finetune", "eval.late_fusion",
         "eval.extract_features", "eval.random_init", "eval.report"]


class Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(tool: str, monkeypatch) -> argparse.ArgumentParser:
    def capture(self, args=None, namespace=None):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    module = importlib.import_module(tool)
    with pytest.raises(Parsed) as parsed:
        module.main([])
    return parsed.value.parser


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Flags without help, and flags whose default the --help text does not show."""
    formatter = parser.formatter_class(prog=parser.prog)
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        name = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip():
            missing.append(f"{name}: no help")
            continue
        has_default = action.default not in (None, False, True, [], argparse.SUPPRESS) and not action.required
        if has_default and action.option_strings and "default" not in formatter._get_help_string(action).lower():
            missing.append(f"{name}: default {action.default!r} not shown")
    return missing


@pytest.mark.parametrize("tool", TOOLS)
def test_every_flag_has_help_and_its_default(tool, monkeypatch):
    parser = parser_of(tool, monkeypatch)
    assert parser.formatter_class is HelpFormatter
    assert undocumented(parser) == []


def test_the_check_finds_an_undocumented_flag():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5, help="training epochs")
    parser.add_argument("--seed", type=int)
    assert undocumented(parser) == ["--epochs: default 5 not shown", "--seed: no help"]


def test_the_format_adds_a_default_once():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    parser.add_argument("--name", default=None, help="a name")
    text = " ".join(parser.format_help().split())
    assert "training epochs (default: 5)" in text and "learning rate (default 0.1)" in text
    assert text.count("default") == 2 and undocumented(parser) == []
