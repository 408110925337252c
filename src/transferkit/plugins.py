"""Plugins: ``--plugin file.py`` and the ``transferkit.backbones`` entry-point group.

Both run the plugin's code (that is their purpose): only use plugins you trust. A plugin
registers names with ``@transferkit.register_backbone("name")``.
"""
from __future__ import annotations

from transferkit.errors import UserError

ENTRY_POINT_GROUP = "transferkit.backbones"
_loaded_entry_points = False


def load_entry_points() -> None:
    """Import every installed ``transferkit.backbones`` entry point once."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    from importlib.metadata import entry_points

    from transferkit.backbones import _REGISTRY

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break transferkit
            raise UserError(f"plugin entry point {ep.name} ({ep.value}) failed to load: {exc}") from None
        if callable(obj) and ep.name not in _REGISTRY:
            # An entry point may name a factory directly: it becomes --model <entry point name>.
            _REGISTRY.setdefault(ep.name, obj)


def load_plugins(files: list[str]) -> None:
    from transferkit.usercode import load_module

    for path in files:
        load_module(path)
    load_entry_points()
