"""The ``transferkit`` command line: ``main(argv) -> exit status``.

Each subcommand lives in ``transferkit/commands/<name>.py`` with ``register(subparsers)``;
heavy imports (torch, timm) happen inside the command, so ``--help`` is instant.
A user mistake exits 2 with one line on stderr (``transferkit <command>: error: ...``);
a traceback means a bug in transferkit.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from transferkit.commands import COMMANDS, Parser
from transferkit.errors import UserError


PLUGIN_HELP = ("import FILE.py first; it may register backbones with @transferkit.register_backbone('name'). "
               "This runs FILE.py's code: only use plugins you trust")


def build_parser() -> argparse.ArgumentParser:
    from transferkit import __version__

    parser = Parser(prog="transferkit", description="Transfer learning for image classification with PyTorch.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help=PLUGIN_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"transferkit.commands.{name}").register(sub)
    for command in sub.choices.values():
        # Also accepted after the subcommand (`transferkit train --plugin p.py ...`). Its own
        # dest: a subparser's default would otherwise overwrite the global flag's value.
        command.add_argument("--plugin", action="append", default=[], dest="command_plugins", metavar="FILE.py",
                             help=PLUGIN_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    from transferkit.cputuning import tune_malloc

    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from transferkit.plugins import load_plugins

        load_plugins(args.plugin + getattr(args, "command_plugins", []))
        return args.run(args)
    except UserError as exc:
        print(f"transferkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"transferkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
