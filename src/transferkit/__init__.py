"""transferkit: transfer learning for image classification with PyTorch.

    import transferkit as tk
    run = tk.fit("path/to/images", model="resnet18", epochs=5, out="runs/pets")

The public names load on first use (PEP 562), so ``import transferkit`` and the command line's
``--help`` do not pay for importing torch.
"""
import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {"fit": "transferkit.api", "rank": "transferkit.api", "evaluate": "transferkit.api", "predict": "transferkit.api",
           "create_model": "transferkit.api", "register_backbone": "transferkit.models.families.custom"}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'transferkit' has no attribute '{name}'")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value
