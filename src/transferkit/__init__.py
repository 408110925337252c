"""transferkit: transfer learning for image classification with PyTorch."""
__version__ = "0.1.0"

import sys as _sys
import types as _types

from transferkit.backbones import register_backbone  # noqa: E402  (light: no torch import at module level)
from transferkit.api import create_model, evaluate, fit, predict  # noqa: E402  (torch imported inside)

__all__ = ["__version__", "register_backbone", "create_model", "fit", "evaluate", "predict"]


class _Package(_types.ModuleType):
    """Keeps ``transferkit.evaluate`` and ``transferkit.predict`` the API functions.

    Importing the submodules of the same names (``from transferkit.evaluate import ...``, which
    the CLI and trainer do) makes Python set them as attributes of this package, replacing the
    functions. The submodules stay importable by name; only the package attribute is kept.
    """

    def __setattr__(self, name, value):
        current = self.__dict__.get(name)
        if isinstance(value, _types.ModuleType) and isinstance(current, _types.FunctionType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
