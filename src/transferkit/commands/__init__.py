"""One module per subcommand, each with ``register(subparsers)``; the order is the --help order."""
from __future__ import annotations

import argparse

COMMANDS = ["models", "data", "train", "lr_find", "eval", "report", "predict", "embed", "export", "serve", "demo"]


# For every command that loads a run: a run trained on users' code stores that code and runs it.
TRUSTED_RUN = ("a run directory. A run trained on your own model, head or plugin code keeps that code in "
               "RUN_DIR/code/ and runs it when loaded: load only runs you trust")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the problem (still exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(subparsers, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
