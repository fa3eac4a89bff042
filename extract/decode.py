"""Decode any image people actually have into an RGB uint8 array of a fixed size.

Files are recognized by content (Pillow sniffs the bytes; the extension is ignored), EXIF
orientation is applied, and every failure becomes a :class:`DecodeError` whose ``reason``
starts with a short category (``"truncated: ..."``) that the run summary counts.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's decompression-bomb limit
RESAMPLE = Image.Resampling.BILINEAR
# Recorded in the cache config: a change in how pixels are made must never mix rows in one cache.
DECODER = "pillow-jpeg-draft-bilinear-2"  # 2: float and 32-bit greyscale mapped or refused, not clipped

# Pillow has one process-wide limit, Image.MAX_IMAGE_PIXELS: above it Pillow warns, above twice it Pillow refuses,
# whatever MAX_PIXELS= says. Changing it from tf.data's decode threads would race, so Pillow's check is wrapped
# once: on a thread inside load_rgb it applies that call's max_pixels instead (no warning, headswap's reason);
# anywhere else it is Pillow's own check, unchanged.
_decoding = threading.local()
_pillow_pixel_check = getattr(Image, "_decompression_bomb_check", None)
_pillow_pixel_check = getattr(_pillow_pixel_check, "pillow_check", _pillow_pixel_check)  # this module reloaded


def _too_many_pixels(size: tuple[int, int], max_pixels: int) -> str:
    return f"{size[0]}x{size[1]} is over the limit of {max_pixels:,} (MAX_PIXELS=)"


def _pixel_check(size: tuple[int, int]) -> None:
    max_pixels = getattr(_decoding, "max_pixels", None)
    if max_pixels is None:
        _pillow_pixel_check(size)
    elif size[0] * size[1] > max_pixels:
        raise Image.DecompressionBombError(_too_many_pixels(size, max_pixels))


if _pillow_pixel_check is not None:  # a Pillow without it keeps its own limit (tests/test_decode.py notices)
    _pixel_check.pillow_check = _pillow_pixel_check  # type: ignore[attr-defined]
    Image._decompression_bomb_check = _pixel_check


# Pillow warns about some files it still decodes ("Corrupt EXIF data" when it reads the EXIF block) without naming
# them. warnings.catch_warnings around one file's decode would swap the warnings state of the whole process (not
# thread-safe before Python 3.14), under tf.data's several decode threads. So warnings.warn is wrapped once: on a
# thread inside load_rgb it collects the warning, which load_rgb issues again as the file's own (one line,
# ``<path>:0: UserWarning: Corrupt EXIF data. ...``, without a line of our code under it); anywhere else it is
# warnings.warn, unchanged.
_python_warn = getattr(warnings.warn, "python_warn", warnings.warn)  # this module reloaded


def _warn(message, category=None, stacklevel=1, source=None, **kwargs):
    collected = getattr(_decoding, "warnings", None)
    if collected is None:
        return _python_warn(message, category, stacklevel + 1, source, **kwargs)
    if isinstance(message, Warning):
        category = type(message)
    try:  # the module the warning is Pillow's (a -W filter on PIL's module still matches)
        module = sys._getframe(stacklevel).f_globals.get("__name__", "")
    except ValueError:
        module = ""
    collected.append((str(message).strip(), category or UserWarning, module))
    return None


_warn.python_warn = _python_warn  # type: ignore[attr-defined]
warnings.warn = _warn


class DecodeError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    @property
    def category(self) -> str:
        return self.reason.split(":", 1)[0]


def _open_checked(path: str) -> Image.Image:
    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise DecodeError("unreadable: symlink loop") from None
        raise DecodeError(f"broken symlink: points to {os.readlink(path)}")
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file: 0 bytes")
        with open(path, "rb") as f:
            head = f.read(512)
            f.seek(0)
            data = f.read()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DecodeError("unreadable: symlink loop") from None
        raise DecodeError(f"unreadable: {err.strerror}") from None
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        raise DecodeError("not an image: an HTML/XML page (a failed download?)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not an image: unknown format") from None
    except Image.DecompressionBombError as err:
        raise DecodeError(f"too many pixels: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise _decode_failure(err) from None


def _decode_failure(err: Exception) -> DecodeError:
    msg = str(err)
    low = msg.lower()
    if "truncated" in low or "broken data stream" in low or "premature end" in low:
        return DecodeError(f"truncated: {msg}")
    return DecodeError(f"corrupt: {type(err).__name__}: {msg}")


def load_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode ``path`` as an RGB image (first frame, EXIF orientation applied).

    With ``draft_size``, a JPEG at least twice that size on both sides is decoded with DCT scaling
    (1/2, 1/4 or 1/8, never below ``draft_size``): it halves decode time for small inputs.
    A warning Pillow gives while decoding (e.g. "Corrupt EXIF data") is issued again as ``path``'s: its
    ``filename`` is ``path`` (Python shows ``<path>:0: UserWarning: Corrupt EXIF data. ...``).
    """
    outer = getattr(_decoding, "max_pixels", None), getattr(_decoding, "warnings", None)
    _decoding.max_pixels, _decoding.warnings = max_pixels, []
    try:
        return _load_rgb(path, max_pixels, draft_size)
    finally:
        said = _decoding.warnings
        _decoding.max_pixels, _decoding.warnings = outer
        for message, category, module in said:
            warnings.warn_explicit(message, category, str(path), 0, module=module or None)


def _load_rgb(path: str, max_pixels: int, draft_size: int | None) -> Image.Image:
    img = _open_checked(path)
    if img.size[0] * img.size[1] > max_pixels:
        raise DecodeError(f"too many pixels: {_too_many_pixels(img.size, max_pixels)}")
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            img = _grey_to_8bit(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        return img.convert("RGB")
    except Image.DecompressionBombError as err:  # e.g. a GIF frame reaching past the size its header gave
        raise DecodeError(f"too many pixels: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise _decode_failure(err) from None


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """Pillow's integer (I, I;16: 16-bit PNG, TIFF, PPM; 32-bit TIFF) or float (F: 32-bit TIFF) greyscale as "L".

    Each maps a fixed range to 0-255, never the image's own (that would change from image to image): integers
    0-65535 (16-bit) by /257 truncated, floats 0-1 (TensorFlow's and scikit-image's convention) by x255 rounded.
    Values outside it would be clipped, so the image is refused instead, saying what to do.
    """
    arr = np.asarray(img, dtype=np.float64)
    top, kind, fmt = (1, "float", "{:.6g}") if img.mode == "F" else (65535, "integer", "{:,.0f}")
    if not ((arr >= 0) & (arr <= top)).all():  # NaN too
        numbers = arr[~np.isnan(arr)]
        shown = " and ".join(([f"{fmt.format(numbers.min())} to {fmt.format(numbers.max())}"] if numbers.size else [])
                             + (["NaN"] if numbers.size < arr.size else []))
        raise DecodeError(
            f"unsupported pixels: {kind} greyscale (Pillow mode {img.mode}) with values {shown}; only 0-{top:,}"
            f"{' (16-bit)' if top > 1 else ''} has a fixed mapping to 0-255: convert the image to 8-bit with the "
            f"mapping that suits the data")
    if img.mode == "F":
        return Image.fromarray(np.rint(arr * 255).astype(np.uint8), "L")
    return Image.fromarray((arr / 257.0).astype(np.uint8), "L")


def load_array(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` (DCT-scaled for large JPEGs) and resize to (size, size, 3) uint8, bilinear."""
    img = load_rgb(path, max_pixels, draft_size=size)
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8)
