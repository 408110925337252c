"""Decoding rules for image files: one function turns any supported file into RGB uint8.

- EXIF orientation is applied (phone photos come out upright).
- CMYK, L, LA, P, RGBA, 16-bit and float images become 3-channel RGB with the right value
  range: 16-bit data is scaled by 1/257, not clipped (clipping turns a 16-bit gradient white).
- Transparent pixels are composited over white, so what was invisible stays background.
- An image with more than ``max_pixels`` pixels is refused from its header, before decoding
  (decompression bombs), and so is one whose sides differ by more than ``MAX_ASPECT`` times: the
  short side is scaled to the input size, so a 1 x 5,000,000 px strip would become a gigapixel
  (and its centre square a meaningless sliver). A broken file raises ``BadImage`` naming its
  path; it is never silently replaced by another sample.
- Encoded bytes that must be read into memory whole (a member of a tar shard) are refused unread
  when there are more of them than an image within ``max_pixels`` can need (``max_encoded_bytes``):
  a header claiming gigabytes is a broken file, not a ``MemoryError``.
"""
from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from transferkit.core.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (0.25 GiB of RGBA)
# Wider than any panorama or receipt scan; at 224 px the resized long side stays within 22,400 px.
MAX_ASPECT = 100
# 16-bit RGBA stored without compression, the largest common layout, plus room for headers and metadata.
MAX_BYTES_PER_PIXEL = 8
MAX_HEADER_BYTES = 16 << 20
_pillow_limit = threading.Lock()


class BadImage(Exception):
    """A file that cannot be used as an image; ``reason`` is short and human."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def unusable(bad: list, what: str = "", advice: str = "Fix or remove them") -> UserError:
    """One error line for broken files: how many, the first ten with their reasons, what to do."""
    listing = "; ".join(f"{b.path} ({b.reason})" for b in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
    return UserError(f"{len(bad)} unusable image(s){what}: {listing}. {advice}")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def to_rgb(img):
    from PIL import Image

    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # Mode "I" also holds 8-bit data for some formats: scale only when values exceed 8 bits.
        scale = 257.0 if img.mode != "I" or arr.max(initial=0) > 255 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        img = Image.fromarray(np.clip(np.rint(arr / top * 255), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def max_encoded_bytes(max_pixels: int) -> int:
    """The most bytes an image file within ``max_pixels`` pixels can sensibly take."""
    return max_pixels * MAX_BYTES_PER_PIXEL + MAX_HEADER_BYTES


def unusable_shape(width: int, height: int) -> str | None:
    """Why an image of this size cannot be resized to a model's input, or None when it can."""
    if min(width, height) < 1:
        return f"no pixels ({width}x{height})"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return (f"extreme aspect ratio ({width}x{height}, over {MAX_ASPECT}:1): scaling its short side to the "
                "input size would blow the long side up, and its centre square would be a sliver; crop it first")
    return None


def _allow_in_pillow(max_pixels: int) -> None:
    """Let Pillow open what ``max_pixels`` allows.

    Pillow refuses images over twice its own ``Image.MAX_IMAGE_PIXELS`` while opening them, before
    our header check runs, so a ``--max-pixels`` above that would have no effect. Its limit is
    raised to ours (never lowered: other threads may be decoding under a larger one); Pillow's
    check stays a second guard for sizes found only while decoding (GIF frames, TIFF tiles).
    """
    from PIL import Image

    with _pillow_limit:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _byte_size(source) -> int:
    if hasattr(source, "getbuffer"):  # io.BytesIO: an upload held in memory (the server)
        return source.getbuffer().nbytes
    return os.path.getsize(source)


def open_rgb(path, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open ``path`` (a file name or an ``io.BytesIO``) as an upright RGB PIL image, or raise BadImage."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _allow_in_pillow(max_pixels)
    try:
        if _byte_size(path) == 0:
            raise BadImage(path, "empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            width, height = img.size  # read from the header: nothing decoded yet
            if width * height > max_pixels:
                raise BadImage(path, f"too many pixels ({width}x{height} > {max_pixels}); "
                                     "raise --max-pixels if you trust this file")
            if reason := unusable_shape(width, height):
                raise BadImage(path, reason)
            img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(path, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(path, f"too many pixels ({exc}); raise --max-pixels if you trust this file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() else f"unreadable ({text.splitlines()[0][:120] if text else type(exc).__name__})"
        raise BadImage(path, reason) from None


def resize_center_crop(img, size: int, interpolation: str = "bilinear"):
    """Resize the short side to ``size`` and take the centre square (aspect ratio kept).

    Pixel for pixel what torchvision's ``Resize(size)`` + ``CenterCrop(size)`` give (timm's eval
    transform with crop_pct 1.0), so a run loaded in timm or torchvision sees the same input:
    the long side is truncated, the crop offset rounded, as they do.

    Raises ValueError for a shape ``unusable_shape`` refuses (files are refused earlier, from
    their header): the intermediate image is never more than ``MAX_ASPECT`` squares.
    """
    from PIL import Image

    if reason := unusable_shape(*img.size):
        raise ValueError(reason)
    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    width, height = img.size
    long = int(size * max(width, height) / min(width, height))
    new_w, new_h = (size, long) if width <= height else (long, size)
    img = img.resize((new_w, new_h), resample)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_chw(img) -> np.ndarray:
    """A PIL image as a uint8 ``(C, H, W)`` array (C = 1 for "L", 3 for "RGB")."""
    array = np.asarray(img, dtype=np.uint8)
    return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)).copy()


def load_uint8(path: str, size: int, interpolation: str = "bilinear", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file as a ``(3, size, size)`` uint8 array, ready for the batched pipeline."""
    return to_chw(resize_center_crop(open_rgb(path, max_pixels), size, interpolation))
