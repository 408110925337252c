"""Seeded bad-input cases for image decoding, run by tests/test_fuzz.py in a process of its own.

Every case is a byte string handed to ``load_uint8`` (the one decoder behind train, eval,
predict, embed and serve). It must come back as a ``(3, S, S)`` uint8 array or raise
``BadImage``; anything else (another exception, a crash, running out of the address space the
test allows) is a bug. Each case also says what it must give: an intact file must decode, to the
pixels of the picture it was made from (exactly for lossless formats; for JPEG and WebP, exactly
what Pillow itself decodes from the file, and near the picture); a file refused by rule (too many
pixels, no pixels, an extreme aspect ratio, not an image at all) must be ``BadImage``; a damaged
file may be either. Run as a script it prints the tally as JSON.

The cases: random bytes; random bytes behind each format's signature; real JPEG, PNG, WebP,
GIF, TIFF and BMP files in every mode Pillow writes for them, whole, truncated at random
points and with random bytes flipped; extreme sizes and aspect ratios, as real files and as
headers that claim huge sizes over a few bytes of data.
"""
from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from typing import NamedTuple

import numpy as np

SEED = 20_240_611
SIZE = 32
MAX_PIXELS = 4_000_000  # what the cases may decode: the address-space limit is set well above it

FORMATS = {  # format -> modes Pillow can write in it
    "JPEG": ("L", "RGB", "CMYK"),
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "WEBP": ("RGB", "RGBA"),
    "GIF": ("L", "P"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
    "BMP": ("1", "L", "P", "RGB"),
}
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"GIF89a", b"II*\x00",
              b"MM\x00*", b"BM")


def picture(rng, mode: str, width: int, height: int):
    from PIL import Image

    if mode in ("I;16", "I", "F"):
        top = {"I;16": 65535, "I": 2**31 - 1, "F": 1.0}[mode]
        kind = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        values = (rng.random((height, width)) * top).astype(kind)
        return Image.fromarray(values)  # uint16 -> I;16, int32 -> I, float32 -> F
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    return rgb.convert(mode) if mode != "P" else rgb.convert("P", palette=Image.Palette.ADAPTIVE)


def encode(image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int, payload: bytes = b"\0" * 64) -> bytes:
    """A well-formed PNG header claiming ``width`` x ``height`` over a little compressed data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b",\0\0\0\0" + struct.pack("<HH", width, height) \
        + b"\0\x02\x02\x44\x01\0;"


LOSSY = ("JPEG", "WEBP")
NEAR = 40  # mean |difference| of a lossy file's pixels from its noise picture: ~24 measured; zeros or grey ~64+


class Case(NamedTuple):
    category: str
    data: bytes
    expect: str           # decode | refuse | either
    source: object = None  # the picture an intact file must decode to (PIL image), when one is known
    lossy: bool = False


def refused_by_rule(width: int, height: int) -> bool:
    """What the decoder refuses from the header alone: no pixels, over MAX_PIXELS, over 100:1."""
    return min(width, height) < 1 or width * height > MAX_PIXELS or max(width, height) > 100 * min(width, height)


def cases(seed: int = SEED):
    """Every ``Case``, the same for a given seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for _ in range(60):
        yield Case("random bytes", rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes(), "refuse")
    for signature in SIGNATURES:
        for _ in range(6):
            data = signature + rng.integers(0, 256, int(rng.integers(0, 2048)), dtype=np.uint8).tobytes()
            yield Case("signature + random bytes", data, "refuse")
    for fmt, modes in FORMATS.items():
        for mode in modes:
            width, height = (int(v) for v in rng.integers(1, 80, 2))
            source = picture(rng, mode, width, height)
            whole = encode(source, fmt)
            yield Case(f"real {fmt} {mode}", whole, "decode", source, fmt in LOSSY)
            for cut in sorted(rng.integers(1, len(whole), 3)):
                yield Case("truncated", whole[:int(cut)], "either")
            for _ in range(3):
                flipped = bytearray(whole)
                for at in rng.integers(0, len(whole), int(rng.integers(1, 9))):
                    flipped[at] ^= 1 << int(rng.integers(0, 8))
                yield Case("bit-flipped", bytes(flipped), "either")
    for width, height in ((1, 1), (1, 100), (100, 1), (1, 101), (3000, 29), (2, 201), (1, 4000), (1999, 2001)):
        for fmt in ("PNG", "GIF", "TIFF"):
            source = picture(rng, "L", width, height)
            yield Case(f"extreme {width}x{height}", encode(source, fmt),
                       "refuse" if refused_by_rule(width, height) else "decode", source)
    for width, height in ((1, 3_000_000), (3_000_000, 1)):  # under the pixel limit; resized they would be gigapixels
        yield Case(f"thin strip {width}x{height}", encode(Image.new("L", (width, height), 128), "PNG"), "refuse")
    for width, height in ((1, 5_000_000), (100_000, 100_000), (65_535, 65_535), (0, 10), (10, 0), (2**31 - 1, 1),
                          (3000, 3000), (1, 1)):
        expect = "refuse" if refused_by_rule(width, height) else "either"  # 1x1 over 64 stray bytes: a reader's call
        yield Case(f"header claims {width}x{height}", png_claiming(width, height), expect)
        yield Case(f"header claims {width}x{height}", gif_claiming(min(width, 65_535), min(height, 65_535)),
                   "refuse" if refused_by_rule(min(width, 65_535), min(height, 65_535)) else "either")
    # A well-formed black image whose data compresses 1000:1: under the pixel limit, so it decodes, to black.
    yield Case("deflate bomb 1900x1900", png_claiming(1900, 1900, b"\0" * (1900 * 1901)), "decode",
               Image.new("L", (1900, 1900), 0))


def expected_pixels(image) -> np.ndarray:
    """``image`` (PIL) through the decoding rules after the file is read: orientation, RGB, resize and crop."""
    from PIL import ImageOps

    from transferkit.data.images import resize_center_crop, to_chw, to_rgb

    return to_chw(resize_center_crop(to_rgb(ImageOps.exif_transpose(image)), SIZE, "bilinear"))


def wrong_pixels(case: Case, array: np.ndarray) -> str | None:
    """Why a decoded intact case is not the picture it was made from, or None."""
    from PIL import Image

    if not case.lossy:
        return None if np.array_equal(array, expected_pixels(case.source)) else "pixels differ from the picture"
    if not np.array_equal(array, expected_pixels(Image.open(io.BytesIO(case.data)))):
        return "pixels differ from what Pillow decodes from the file"
    off = float(np.abs(array.astype(np.int64) - expected_pixels(case.source)).mean())
    return None if off <= NEAR else f"pixels {off:.0f} levels from the picture on average"


def run(seed: int = SEED) -> dict:
    """The tally: counts, ``other`` (exceptions that are not BadImage, wrong shapes), ``wrong`` (a case
    that did not give what it must: an intact file refused or decoded to other pixels, a file the
    rules refuse decoded), and how many cases of each expectation there were."""
    import warnings

    from transferkit.data.images import BadImage, load_uint8

    warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF blocks: noise here, not a failure

    tally = {"cases": 0, "decoded": 0, "refused": 0, "other": [], "wrong": [], "categories": {}, "expected": {}}
    for case in cases(seed):
        tally["cases"] += 1
        kind = case.category.split(" ")[0]
        tally["categories"][kind] = tally["categories"].get(kind, 0) + 1
        tally["expected"][case.expect] = tally["expected"].get(case.expect, 0) + 1
        try:
            array = load_uint8(io.BytesIO(case.data), SIZE, "bilinear", MAX_PIXELS)
        except BadImage as bad:
            tally["refused"] += 1
            if case.expect == "decode":
                tally["wrong"].append(f"{case.category}: refused ({bad.reason})")
            continue
        except BaseException as exc:  # noqa: BLE001 - the point is to catch everything else
            tally["other"].append(f"{case.category} ({len(case.data)} bytes): {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if not (isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.shape == (3, SIZE, SIZE)):
            tally["other"].append(f"{case.category}: returned {type(array).__name__} {getattr(array, 'shape', '')}")
            continue
        tally["decoded"] += 1
        if case.expect == "refuse":
            tally["wrong"].append(f"{case.category}: decoded, but the rules refuse it")
        elif case.expect == "decode" and (why := wrong_pixels(case, array)):
            tally["wrong"].append(f"{case.category}: {why}")
    return tally


if __name__ == "__main__":
    import resource

    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # bounded memory: a huge allocation fails here
    print(json.dumps(run()))
