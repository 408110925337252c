"""The ``transferkit`` command line: ``main(argv) -> exit status``.

The flags of every subcommand are in ``parser.py`` (it imports nothing heavy, so ``--help``
answers at once); the work of ``transferkit NAME`` is ``run(args)`` in ``cli/NAME.py``, imported
only when NAME runs. A user mistake exits 2 with one line on stderr
(``transferkit <command>: error: ...``); a traceback means a bug in transferkit.
"""
from __future__ import annotations

import errno
import importlib
import os
import sys

from transferkit.cli.parser import build_parser
from transferkit.core.cputuning import tune_malloc
from transferkit.core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    tune_malloc()
    args = build_parser().parse_args(argv)
    try:
        # The one deferred import of the package's own code: a command's module (and torch with
        # it) loads only when that command runs, never for --help or a usage error.
        command = importlib.import_module(f"transferkit.cli.{args.module}")
        plugins = importlib.import_module("transferkit.models.plugins")
        plugins.load_plugins(args.plugin + getattr(args, "command_plugins", []))
        with importlib.import_module("transferkit.models.usercode").trusting_code(getattr(args, "trust_code", False)):
            status = command.run(args)
        sys.stdout.flush()  # a reader that left shows here, inside the handler below
        return status
    except UserError as exc:
        print(f"transferkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"transferkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_left()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return _reader_left()
        raise


def _reader_left() -> int:
    """``transferkit models | head``: the reader closed the pipe; stop quietly, as Unix tools do.

    stdout is pointed at /dev/null first, so that the interpreter's own flush at exit does not
    raise the same error again (Python's documented recipe for SIGPIPE).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a command stopped by a closed pipe


__all__ = ["main"]
