"""Plugins: ``--plugin file.py`` and the ``transferkit.backbones`` entry-point group.

Both run the plugin's code (that is their purpose): only use plugins you trust. A plugin
registers names with ``@transferkit.register_backbone("name")``; an entry point may also name
a factory directly (``tiny = "mypkg.nets:TinyNet"`` makes ``--model tiny``).

A run trained on a name registered from a plain file (``--plugin``, or a single-file module)
copies that file into ``RUN_DIR/code/`` so that eval/predict/export/serve need no ``--plugin``.
Names from installed packages (entry points) need that package installed where the run is used,
like torchvision or timm.
"""
from __future__ import annotations

import functools
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path

from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.models.families.custom import register, registered
from transferkit.models.usercode import copy_file_into_run, file_sha256, is_user_spec, load_module, parse_spec

ENTRY_POINT_GROUP = "transferkit.backbones"


@functools.cache
def load_entry_points() -> None:
    """Import every installed ``transferkit.backbones`` entry point once per process.

    Tests (or a notebook after ``pip install``) call ``load_entry_points.cache_clear()`` to rescan.
    """
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # one broken third-party plugin must not break every command
            log(f"transferkit: warning: plugin entry point {ep.name} ({ep.value}) failed to load, skipped: "
                f"{type(exc).__name__}: {exc}")
            continue
        if callable(obj):
            register(ep.name, obj, replace=False)  # a name a --plugin registered already keeps its own


def load_plugins(files: list[str]) -> None:
    for path in files:
        load_module(path)
    load_entry_points()


def plugin_file(name: str) -> Path | None:
    """The plain file that registered ``name``, when copying it makes a run self-contained.

    None for factories from installed packages (their modules may import siblings), for names an
    entry point gives a plain factory (importing its file registers nothing), and for ``__main__``
    (a script or notebook: copying it would rerun it).
    """
    entry = registered(name)
    if entry is None or entry[1] is None:  # not registered by the decorator
        return None
    factory = entry[0]
    module = sys.modules.get(getattr(factory, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    if module is None or file is None or module.__name__ == "__main__" or not file.endswith(".py"):
        return None
    from_file = module.__name__.startswith("transferkit_user_")
    single_file_module = "." not in module.__name__ and not Path(file).name == "__init__.py"
    installed = "site-packages" in Path(file).parts or "dist-packages" in Path(file).parts
    return Path(file) if from_file or (single_file_module and not installed) else None


def copy_plugin_into_run(name: str, run_dir: Path) -> str | None:
    """``@run/code/FILE.py`` holding the code that registered ``name``, or None (see plugin_file)."""
    file = plugin_file(name)
    return copy_file_into_run(file, run_dir) if file else None


def model_code_sha256(name: str) -> str | None:
    """A hash of the user code a model name is built from (user file or plugin), for cache keys."""
    if is_user_spec(name):
        path = parse_spec(name)[0]
        return file_sha256(path) if path.is_file() else None
    if (entry := registered(name)) is not None:
        try:
            return file_sha256(inspect.getsourcefile(entry[0]))
        except (TypeError, OSError):  # defined in a notebook cell or a C extension: no file to hash
            return None
    return None


def unknown_in_run(name: str) -> UserError:
    return UserError(f"this run was trained on the registered backbone '{name}', which is not registered now; "
                     f"pass the plugin that defines it (transferkit --plugin FILE.py ...), install the package "
                     f"that provides it, or call transferkit.register_backbone('{name}') before loading")
