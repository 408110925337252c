"""transferkit: transfer learning for image classification with PyTorch."""
__version__ = "0.1.0"

from transferkit.backbones import register_backbone  # noqa: E402  (light: no torch import at module level)

__all__ = ["__version__", "register_backbone", "create_model"]


def create_model(name: str, num_classes: int, weights: str = "imagenet", head: str = "linear"):
    """A pretrained backbone with a new head; see transferkit.modeling.create_model."""
    from transferkit.modeling import create_model as _create

    return _create(name, num_classes, weights, head)
