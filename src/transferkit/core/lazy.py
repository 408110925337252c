"""Libraries imported on first use, not when transferkit starts.

torchvision and timm take about two seconds to import on a laptop CPU (``torchvision.ops`` pulls
in ``torch._dynamo``, and timm imports torchvision). A run of a user's own model, ``cache list`` or
``predict`` on an exported engine never touches them, and on a decoded-image cache that was
already built those two seconds are most of the time to the first training step.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands for module ``name``: the first attribute asked for imports it."""

    def __init__(self, name: str):
        self._name = name

    def _module(self) -> ModuleType:
        return importlib.import_module(self._name)  # after the first time, a dict look-up in sys.modules

    def __getattr__(self, attr: str):
        return getattr(self._module(), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name}>"


def version_of(distribution: str) -> str:
    """An installed package's version from its metadata, without importing it.

    The same answer whether or not the package was imported (cache keys depend on it), though
    the metadata may lack a build tag that ``__version__`` carries (``+cu130``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"
