"""Old spellings of flags, values and settings: accepted for one release, each use said in one line.

A renamed flag, a renamed value of a flag, and a renamed key of a YAML config or of ``fit(**settings)``
all go through here, so that every old spelling is handled, and warned about, the same way:

    --amp bf16 is deprecated; use --precision bf16
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Callable

from transferkit.core.errors import UserError


def warn(old: str, new: str) -> None:
    print(f"{old} is deprecated; use {new}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Renamed:
    """The setting ``new`` (a field name, underscored) once spelled otherwise; ``values`` maps the old
    setting's values onto the new one's (unlisted values are kept); ``choices``: the old flag's."""

    new: str
    values: dict = field(default_factory=dict)
    choices: tuple = ()

    def value(self, value):
        return self.values.get(value, value) if isinstance(value, (str, bool)) else value


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class RenamedFlag(argparse.Action):
    """An old flag that still works: it says what replaced it and stores into the new flag's ``dest``.

    ``nargs=0`` with ``const`` is a switch (``--no-cache`` stores False into ``feature_cache``).
    """

    def __init__(self, option_strings, dest, *, new: str, values: dict | None = None, nargs=None, const=None,
                 **kwargs):
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)
        self.new, self.values = new, values or {}

    def __call__(self, parser, namespace, value, option_string=None):
        if self.nargs == 0:
            warn(option_string, self.new)
            setattr(namespace, self.dest, self.const)
            return
        mapped = self.values.get(value, value)
        warn(f"{option_string} {value}", f"{self.new} {mapped}")
        setattr(namespace, self.dest, mapped)


def add_renamed_flags(parser, old: str, renamed: Renamed, boolean: bool = False) -> None:
    """``--old`` (and ``--no-old`` for a switch), hidden from ``--help``, storing into ``renamed.new``."""
    new = flag(renamed.new)
    if boolean:
        for prefix, value in (("", True), ("no-", False)):
            parser.add_argument(f"--{prefix}{old.replace('_', '-')}", action=RenamedFlag, nargs=0, const=value,
                                dest=renamed.new, new=f"--{prefix}{new[2:]}", help=argparse.SUPPRESS)
        return
    parser.add_argument(flag(old), action=RenamedFlag, dest=renamed.new, new=new, values=renamed.values,
                        choices=renamed.choices or None, help=argparse.SUPPRESS)


def renamed_value(option: str, renames: dict, convert: Callable = str) -> Callable:
    """An argparse ``type`` for a flag whose values were renamed: ``--format openvino`` -> ``openvino-ir``."""
    def parse(text: str):
        if text in renames:
            warn(f"{option} {text}", f"{option} {renames[text]}")
            return renames[text]
        return convert(text)
    parse.__name__ = option.lstrip("-")  # argparse names the type in its "invalid ... value" error
    return parse


def rename_settings(settings: dict, renames: dict, where: str) -> dict:
    """``settings`` with old keys under their new names (``where``: the file or call, for the warning).

    A setting given under both names is a mistake: which one was meant cannot be known.
    """
    out = dict(settings)
    for old, renamed in renames.items():
        if old not in out:
            continue
        if renamed.new in settings:
            raise UserError(f"{where}: '{old}' and '{renamed.new}' are the same setting: give only '{renamed.new}'")
        value = out.pop(old)
        out[renamed.new] = renamed.value(value)
        warn(f"{where}: '{old}'", f"'{renamed.new}'")
    return out
