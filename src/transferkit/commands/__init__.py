"""One module per subcommand, each with ``register(subparsers)``; the order is the --help order."""
from __future__ import annotations

import argparse

COMMANDS = ["models", "data", "train", "eval", "predict", "demo"]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the problem (still exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(subparsers, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
