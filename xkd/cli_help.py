"""The help format of every command-line tool: the module docstring as written, and each flag's
default shown after its help unless the help already states it."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = "default" in text.lower() or "%(default)" in text
        meaningful = action.default not in (None, False, True, [], argparse.SUPPRESS) and not action.required
        if action.option_strings and meaningful and not shown:
            text += " (default: %(default)s)"
        return text
