"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019): one uint8 RGB image in, one out, seeded.

The definitions come from ``imagecorruptions-imaug`` (Apache-2.0; the maintained fork of bethgelab's
``imagecorruptions``, which is ImageNet-C's own code made to work on images of any size): the same
functions, the same parameters per severity, installed by ``pip install 'transferkit[corrupt]'``.
Not ``imagecorruptions`` 1.1.2 itself (2020): on today's libraries it does not import (it needs
``pkg_resources``, gone from setuptools), fog uses ``np.float_`` (gone in NumPy 2), glass blur calls
scikit-image's ``gaussian(multichannel=True)`` (gone in 0.21), and it imports from SciPy's deprecated
``scipy.ndimage.interpolation``. The fork fixes exactly these, compiles glass blur's pixel shuffle
with numba (pure Python took ~1 s per 224-px image) and takes a seed for the two corruptions that
do not draw from NumPy's global generator. Its one change of definition: frost picks among all six
frost pictures (ImageNet-C's code drew from the first five).

Determinism: each call seeds NumPy's legacy global generator (whose stream NumPy keeps stable across
releases) and passes the same seed to glass blur and impulse noise, so an image gets the same
corruption in any process, in any order. The caller's own global NumPy state is put back.

Sizes: the library's ``corrupt()`` refuses images under 32 px; the functions themselves work down to
8 px, so they are called directly. Their parameters are in pixels (blur radii, frost crops, snow
flakes), as for ImageNet-C's 224-px images: on a smaller input the same severity covers more of the
picture.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import signal
import time
from functools import cache

import numpy as np
from PIL import Image

from transferkit.core.errors import UserError

NAMES = ("gaussian_noise", "shot_noise", "impulse_noise",
         "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
         "snow", "frost", "fog", "brightness",
         "contrast", "elastic_transform", "pixelate", "jpeg_compression")
FAMILIES = {"noise": NAMES[0:3], "blur": NAMES[3:7], "weather": NAMES[7:11], "digital": NAMES[11:15]}
SEVERITIES = (1, 2, 3, 4, 5)
DISTRIBUTION = "imagecorruptions-imaug"
INSTALL = "pip install 'transferkit[corrupt]'"


def family(name: str) -> str:
    return next(f for f, names in FAMILIES.items() if name in names)


def parse_corruptions(spec: str | None) -> tuple[str, ...]:
    """``None``/``all`` -> all 15; else a comma list of names and families (noise, blur, weather, digital)."""
    if spec in (None, "", "all"):
        return NAMES
    wanted = []
    for part in (p.strip() for p in str(spec).split(",")):
        if part in FAMILIES:
            wanted += FAMILIES[part]
        elif part in NAMES:
            wanted.append(part)
        elif part:
            raise UserError(f"--corruptions: unknown corruption '{part}'; use names among {', '.join(NAMES)} "
                            f"or the families {', '.join(FAMILIES)}")
    if not wanted:
        raise UserError("--corruptions is empty; name corruptions or families (noise, blur, weather, digital)")
    return tuple(n for n in NAMES if n in wanted)  # ImageNet-C's order, each once


def parse_severity(spec: str | int | None) -> tuple[int, ...]:
    """``"3"`` -> ``(3,)``; ``"all"`` -> ``(1, 2, 3, 4, 5)``."""
    if str(spec) == "all":
        return SEVERITIES
    if str(spec).strip() in {str(s) for s in SEVERITIES}:
        return (int(spec),)
    raise UserError(f"--corrupt takes a severity 1-5 or all, got '{spec}' (usage: transferkit eval RUN_DIR --corrupt 3)")


def library() -> str:
    """``"imagecorruptions-imaug VERSION"`` once it imports, or a UserError saying how to install it."""
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"--corrupt needs the ImageNet-C corruptions of {DISTRIBUTION}: {INSTALL}") from None
    load()
    return f"{DISTRIBUTION} {version}"


@cache
def load() -> dict:
    """name -> (function, whether it takes ``seed``), imported on first use."""
    try:
        from imagecorruptions import corruptions
    except ImportError as exc:  # not installed, or OpenCV without its system libraries (libGL)
        raise UserError(f"--corrupt could not import {DISTRIBUTION} ({exc}); {INSTALL}") from None
    if "seed" not in inspect.signature(corruptions.glass_blur).parameters:
        raise UserError("the 'imagecorruptions' module installed is the unmaintained 1.1.2, which fails on NumPy 2 "
                        f"and scikit-image >= 0.21: pip uninstall -y imagecorruptions {DISTRIBUTION}; {INSTALL}")
    shuffle = getattr(corruptions, "_shuffle_pixels_njit_glass_blur", None)
    if hasattr(shuffle, "enable_caching"):
        # numba compiles glass blur's shuffle in every new process (~8 s); its on-disk cache makes
        # that once per machine (it is keyed by the library's source file, so an upgrade recompiles).
        shuffle.enable_caching()
    return {name: (getattr(corruptions, name), "seed" in inspect.signature(getattr(corruptions, name)).parameters)
            for name in NAMES}


def image_seed(seed: int, name: str, severity: int, position: int) -> int:
    """The seed of one image's corruption: the image's place in its split, the corruption and severity."""
    return int(np.random.SeedSequence([seed, NAMES.index(name), severity, position]).generate_state(1)[0])


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> the same image under corruption ``name`` at ``severity`` (1-5), as uint8."""
    if name not in NAMES:
        raise UserError(f"unknown corruption '{name}'; use one of {', '.join(NAMES)}")
    function, takes_seed = load()[name]
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        out = function(Image.fromarray(image), severity, **({"seed": seed} if takes_seed else {}))
    finally:
        np.random.set_state(saved)
    return np.uint8(out)  # the library's corrupt() and ImageNet-C's files truncate the same way


def start_worker() -> None:
    """A corruption worker's start: here, not in views.py, so that a spawned worker imports no torch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no traceback per worker
    load()  # the library's imports before the first task, so that the timings count only corrupting
    import cv2  # the library's dependency, loaded by now

    cv2.setNumThreads(1)  # one worker per core: OpenCV's own threads would only compete with the others


def corrupt_many(images: np.ndarray, name: str, severity: int, seeds) -> tuple[np.ndarray, float]:
    """``(N, H, W, 3)`` uint8 corrupted image by image, and the seconds it took (a worker's task)."""
    start = time.perf_counter()
    out = np.stack([corrupt_image(image, name, severity, int(s)) for image, s in zip(images, seeds)]) \
        if len(images) else images.copy()
    return out, time.perf_counter() - start
