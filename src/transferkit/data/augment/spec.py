"""``--augment``: a preset or a comma list of named transforms, parsed once into a canonical spec.

Grammar (one line, no spaces needed)::

    none | flip | light | strong | ITEM[,ITEM...]
    ITEM = NAME[:VALUE]   (a preset name as an item expands to its items)

    crop[:MIN_SCALE]   RandomResizedCrop to the input size, area scale (MIN_SCALE, 1); default 0.35
    flip[:P]           horizontal flip with probability P; default 0.5
    jitter[:S]         ColorJitter, brightness = contrast = saturation = S; default 0.4
    grayscale[:P]      RandomGrayscale with probability P; default 0.1
    blur[:K]           GaussianBlur, odd kernel K px, sigma 0.1-2; default 3
    rotate[:DEG]       RandomRotation within +-DEG degrees; default 15
    trivial            TrivialAugmentWide (Mueller & Hutter 2021; no value)
    erase[:P]          RandomErasing with probability P, filled with the mean colour; default 0.1

``light`` is ``crop:0.35,flip`` (torchvision's reference recipe: RandomResizedCrop + flip);
``strong`` is ``light,trivial,erase:0.1`` (the reference's newer recipe: TrivialAugmentWide and
random erasing at 0.1). The crop always runs first, whatever its place in the list, because it
sets the size; without one the image is resized to the input size first, so every other transform
works at the resolution the model sees. The others run in the order given.

``flip`` alone is special: a random flip is a choice between two fixed images, so the feature cache
holds both and trains exactly like the plain loop (train/paths.py). Every other spec with a random
transform is a *random augmentation*: through a frozen, cached front it is served as ``--views``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from transferkit.core.errors import UserError

# name -> (default value, kind, lowest, highest, lowest allowed itself)
TRANSFORMS = {
    "crop": (0.35, float, 0.0, 1.0, False),
    "flip": (0.5, float, 0.0, 1.0, False),
    "jitter": (0.4, float, 0.0, 1.0, False),
    "grayscale": (0.1, float, 0.0, 1.0, False),
    "blur": (3, int, 3, 99, True),
    "rotate": (15.0, float, 0.0, 180.0, False),
    "trivial": (None, None, None, None, None),
    "erase": (0.1, float, 0.0, 1.0, False),
}
PRESETS = {"flip": "flip:0.5", "light": "crop:0.35,flip:0.5", "strong": "crop:0.35,flip:0.5,trivial,erase:0.1"}
GRAMMAR = ("none | flip | light | strong | a comma list of crop[:MIN_SCALE], flip[:P], jitter[:S], grayscale[:P], "
           "blur[:ODD_K], rotate[:DEG], trivial, erase[:P] (e.g. crop:0.5,flip,jitter:0.3)")

# Built-in data sets whose classes change under a mirror (a mirrored 2 or 7 is no digit): the train
# log warns when a spec that flips is used on them. For your own data the rule is the same: do not
# flip text, digits, or anything whose class depends on left and right.
MIRROR_SENSITIVE = {"digits": "handwritten digits", "mnist-5k": "handwritten digits"}


@dataclass(frozen=True)
class AugmentSpec:
    """A parsed ``--augment``: ``items`` are ``(name, value)`` in the order they run (crop first)."""

    items: tuple = ()

    @property
    def canonical(self) -> str:
        """Every value spelled out: what cache keys and logs name (``light`` == ``crop:0.35,flip:0.5``)."""
        return ",".join(name if value is None else f"{name}:{value:g}" for name, value in self.items) or "none"

    @property
    def mirror_only(self) -> bool:
        """``--augment flip``: each image or its mirror image, nothing else."""
        return self.canonical == PRESETS["flip"]

    @property
    def random(self) -> bool:
        """A random augmentation served through the seeded pipeline (not none, not the two-view flip)."""
        return bool(self.items) and not self.mirror_only

    @property
    def flips(self) -> bool:
        return any(name == "flip" and value > 0 for name, value in self.items)

    @property
    def crops(self) -> bool:
        return any(name == "crop" for name, _ in self.items)

    def value(self, name: str):
        return next((v for n, v in self.items if n == name), None)


def _value(text: str, name: str, raw: str | None):
    default, kind, low, high, low_ok = TRANSFORMS[name]
    if kind is None:
        if raw is not None:
            raise UserError(f"--augment '{text}': {name} takes no value (got {name}:{raw})")
        return None
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UserError(f"--augment '{text}': {name}:{raw} needs {'an integer' if kind is int else 'a number'}, "
                        f"e.g. {name}:{default}") from None
    if not math.isfinite(value) or not (low <= value <= high) or (value == low and not low_ok):
        bound = f"[{low}, {high}]" if low_ok else f"({low:g}, {high:g}]"
        raise UserError(f"--augment '{text}': {name} must be in {bound}, got {raw}")
    if name == "blur" and value % 2 == 0:
        raise UserError(f"--augment '{text}': blur needs an odd kernel size (3, 5, 7...), got {raw}")
    return value


def parse_augment(text: str) -> AugmentSpec:
    """The spec ``text`` names; a mistake is one UserError naming the item and the grammar."""
    text = str(text).strip()
    if text.lower() in ("", "none"):
        return AugmentSpec()
    items, seen = [], set()
    for raw_item in text.split(","):
        item = raw_item.strip()
        name, _, raw = item.partition(":")
        name = name.strip().lower()
        if not item:
            raise UserError(f"--augment '{text}': an empty item; give {GRAMMAR}")
        if name == "none":
            raise UserError(f"--augment '{text}': 'none' cannot be combined with other transforms")
        if name in PRESETS and name != "flip" and not raw:
            expanded = [part.partition(":") for part in PRESETS[name].split(",")]
        elif name in TRANSFORMS:
            expanded = [(name, ":", raw.strip() if raw else None)]
        else:
            raise UserError(f"--augment '{text}': unknown transform '{name}'; give {GRAMMAR}")
        for part_name, _, part_raw in expanded:
            if part_name in seen:
                raise UserError(f"--augment '{text}': {part_name} appears twice")
            seen.add(part_name)
            items.append((part_name, _value(text, part_name, part_raw or None)))
    items.sort(key=lambda item: item[0] != "crop")  # stable: the crop first, the rest as given
    return AugmentSpec(tuple(items))


def mirror_note(data: str) -> str | None:
    """What ``data check`` says of a built-in data set that must not be flipped."""
    what = MIRROR_SENSITIVE.get(str(data).strip().lower())
    return (f"{data} is {what}: do not train it with flips (a mirrored digit is another shape): --augment flip, light "
            "and strong mirror images; crop:0.5,rotate:10 does not") if what else None


def mirror_warning(data: str, spec: AugmentSpec) -> str | None:
    """A warning line when ``spec`` flips a built-in data set whose classes a mirror changes."""
    what = MIRROR_SENSITIVE.get(str(data).strip().lower())
    if what and spec.flips:
        return (f"warning: --augment {spec.canonical} mirrors images, and {data} is {what}: a mirrored digit is "
                "another shape. Leave flip out (e.g. --augment crop:0.5,rotate:10)")
    return None
