"""The SavedModel's bytes path (heads.export.decode_image_bytes) against Pillow (extract.decode.load_array).

load_array decodes a JPEG at least twice SIZE on both sides with Pillow's DCT scaling
(``draft``: 1/2, 1/4 or 1/8); the TF path must pick the same scale or ordinary photos differ
by tens of grey levels. What is left is Pillow's fixed-point bilinear filter: one grey level.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from extract.decode import load_array
from heads.export import decode_image_bytes


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Photo-like content: smooth colour gradients, sensor-like noise and a few hard-edged shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / w * 3 + c) * np.cos(y / h * 2 + c * 0.7) for c in range(3)], -1)
    base += rng.normal(0, 12, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(25):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(5, w // 3)), y0 + int(rng.integers(5, h // 3))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return img


def jpeg(img: Image.Image, quality: int = 85, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def diff(tmp_path, data: bytes, size: int, decode=decode_image_bytes) -> np.ndarray:
    path = tmp_path / "img.jpg"
    path.write_bytes(data)
    got = decode(tf.constant(data), size).numpy()
    assert got.shape == (size, size, 3) and got.dtype == np.uint8
    return np.abs(got.astype(int) - load_array(str(path), size).astype(int))


@pytest.mark.parametrize("size", [71, 100])
def test_bytes_path_mirrors_pillow_draft_on_a_photo(tmp_path, size):
    """500x375, quality 85: DCT-scaled 1/4 at 71 and 1/2 at 100 by Pillow. Full-size decode gave up to 53."""
    d = diff(tmp_path, jpeg(photo(500, 375)), size)
    assert d.max() <= 1
    assert (d > 0).mean() < 0.02  # measured 0.6-0.75%


def test_draft_scale_follows_both_sides_and_the_stored_frame(tmp_path):
    """Pillow scales by min(w // size, h // size) of the frame as stored, before EXIF rotation."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: Pillow drafts the stored 600x142 frame, then turns it
    cases = [
        (jpeg(photo(142, 600)), 71),  # 1/2 (142 // 71 == 2 although 600 // 71 == 8)
        (jpeg(photo(141, 600)), 71),  # not scaled: short side under twice SIZE
        (jpeg(photo(600, 142), exif=exif.tobytes()), 71),
        (jpeg(photo(1200, 900), 90, progressive=True), 100),  # 1/8
        (jpeg(photo(500, 375).convert("L")), 71),  # grayscale, 1/4
    ]
    for data, size in cases:
        assert diff(tmp_path, data, size).max() <= 1


def test_small_jpegs_are_not_scaled(tmp_path):
    """64x48 (smaller than SIZE): decoded at full size as before, then upscaled."""
    for size in (71, 100):
        assert diff(tmp_path, jpeg(photo(64, 48)), size).max() <= 1


def test_bytes_path_in_a_graph(tmp_path):
    """The serving signature traces decode_image_bytes in a tf.function: the scale branch is a graph op."""
    decode = tf.function(decode_image_bytes, reduce_retracing=True)
    assert diff(tmp_path, jpeg(photo(500, 375), 90), 71, decode=decode).max() <= 1


def test_mpo_is_not_scaled(tmp_path):
    """A JPEG with an MP index of two pictures opens as format "MPO", which load_rgb does not draft."""
    buf = io.BytesIO()
    photo(500, 375).save(buf, "MPO", save_all=True, append_images=[photo(500, 375, 1)], quality=85)
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    for size in (71, 100):
        assert diff(tmp_path, buf.getvalue(), size).max() <= 1


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_the_bytes_path_refuses_too_many_pixels_as_make_predict_does(monkeypatch):
    """From the header for JPEG, PNG and GIF (nothing decoded: a 140 KB PNG can declare 144 million pixels),
    from the decoded size for the rest; at the limit itself the image is served."""
    import heads.export as export
    from extract.decode import DEFAULT_MAX_PIXELS

    assert export.MAX_PIXELS == DEFAULT_MAX_PIXELS
    monkeypatch.setattr(export, "MAX_PIXELS", 60 * 50)
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        assert decode_image_bytes(tf.constant(_encoded(photo(60, 50), fmt)), 32).shape == (32, 32, 3)
        with pytest.raises(tf.errors.InvalidArgumentError, match="too many pixels"):
            decode_image_bytes(tf.constant(_encoded(photo(61, 50), fmt)), 32)
    # a GIF whose header declares a 1 x 1 screen around its 61 x 50 frame: refused once decoded
    gif = bytearray(_encoded(photo(61, 50), "GIF"))
    gif[6:10] = (1).to_bytes(2, "little") * 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="too many pixels"):
        decode_image_bytes(tf.constant(bytes(gif)), 32)
    # a PNG header declaring 100000 x 100000 with nothing behind it: refused before any decoding
    fake = _encoded(photo(60, 50), "PNG")[:16] + (100_000).to_bytes(4, "big") * 2 + b"\x00" * 40
    with pytest.raises(tf.errors.InvalidArgumentError, match="too many pixels"):
        decode_image_bytes(tf.constant(fake), 32)


def _readme_load_pixels():
    """The `load_pixels` of the README's serving snippet (a server without headswap decodes with it)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("def load_pixels(")
    code = readme[start:readme.index("\n\n", start)]
    namespace: dict = {}
    exec("import numpy as np\nfrom PIL import Image, ImageOps\n" + code, namespace)  # noqa: S102
    return namespace["load_pixels"]


@pytest.mark.parametrize("size", [71, 100])
def test_the_readmes_headswap_free_decode_is_load_array(tmp_path, size):
    """Large JPEGs (DCT-scaled), EXIF-rotated, MPO-free small ones, RGBA, LA, palette with transparency, greyscale."""
    load_pixels = _readme_load_pixels()
    base = photo(500, 375, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 3
    cases = {
        "big.jpg": jpeg(base), "rotated.jpg": jpeg(base, exif=exif.tobytes()), "small.jpg": jpeg(photo(80, 60)),
        "grey.jpg": jpeg(base.convert("L")), "rgba.png": _encoded(rgba, "PNG"),
        "la.png": _encoded(rgba.convert("LA"), "PNG"), "palette.png": _encoded(palette, "PNG"),
        "small.png": _encoded(photo(64, 48), "PNG"), "plain.bmp": _encoded(base, "BMP"),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        np.testing.assert_array_equal(load_pixels(str(path), size), load_array(str(path), size), err_msg=name)
