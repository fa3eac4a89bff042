"""Decoding what people actually have, and a clear reason for every file that can't be used."""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, draw, write_class_folders
from PIL import Image

from extract import FeatureCache, extract_features
from extract import decode
from extract.decode import DecodeError, load_array, load_rgb


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.fixture
def picture() -> Image.Image:
    return draw("circle", np.random.default_rng(0), w=40, h=30)


@pytest.mark.parametrize("fmt,mode", [
    ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"), ("PNG", "I;16"),
    ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"), ("TIFF", "RGB"),
])
def test_formats_decode_to_rgb(tmp_path, picture, fmt, mode):
    if mode == "I;16":
        img = Image.fromarray((np.asarray(picture.convert("L"), np.uint16) * 257))
    else:
        img = picture.convert(mode)
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, fmt)
    arr = load_array(str(path), 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    reference = np.asarray(picture.convert("RGB").resize((32, 32), Image.BILINEAR), np.float32)
    if mode in ("L", "I;16"):
        reference = np.asarray(picture.convert("L").convert("RGB").resize((32, 32), Image.BILINEAR), np.float32)
    assert np.abs(arr.astype(np.float32) - reference).mean() < 12  # same picture (lossy formats aside)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    img = Image.fromarray(np.full((8, 8), 32768, np.uint16))
    img.save(tmp_path / "a.png")
    assert abs(int(load_rgb(str(tmp_path / "a.png")).getpixel((0, 0))[0]) - 127) <= 1


def test_float_and_32bit_tiffs_map_a_fixed_range_or_are_refused(tmp_path):
    """A float TIFF (0-1) came out black, a 32-bit one with values over 65535 clipped to white: both cached."""
    ramp = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    Image.fromarray(ramp).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    pixels = np.asarray(load_rgb(str(tmp_path / "float.tif")))
    np.testing.assert_array_equal(pixels, np.repeat(np.rint(ramp * 255).astype(np.uint8)[..., None], 3, axis=2))

    sixteen = (ramp * 65535).astype(np.int32)
    Image.fromarray(sixteen).save(tmp_path / "int32.tif")  # 32-bit integer samples holding 16-bit values
    Image.fromarray(sixteen.astype(np.uint16)).save(tmp_path / "int16.png")
    assert Image.open(tmp_path / "int32.tif").mode == "I" and Image.open(tmp_path / "int16.png").mode == "I;16"
    np.testing.assert_array_equal(np.asarray(load_rgb(str(tmp_path / "int32.tif"))),
                                  np.asarray(load_rgb(str(tmp_path / "int16.png"))))  # both as 16-bit: /257

    Image.fromarray(sixteen * 4).save(tmp_path / "int32_large.tif")
    with pytest.raises(DecodeError) as err:
        load_rgb(str(tmp_path / "int32_large.tif"))
    assert err.value.reason.startswith(
        "unsupported pixels: integer greyscale (Pillow mode I) with values 0 to 262,140; only 0-65,535 (16-bit) ")
    assert err.value.reason.endswith("convert the image to 8-bit with the mapping that suits the data")
    Image.fromarray(ramp * 255).save(tmp_path / "float_0_255.tif")
    with pytest.raises(DecodeError, match=r"float greyscale \(Pillow mode F\) with values 0 to 255; only 0-1 "):
        load_rgb(str(tmp_path / "float_0_255.tif"))


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    r, g, b = load_rgb(str(tmp_path / "a.gif")).getpixel((5, 5))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert load_rgb(str(tmp_path / "o.jpg")).size == (20, 40)


def test_png_named_jpg_decodes(tmp_path, picture):
    picture.save(tmp_path / "really_a_png.jpg", "PNG")
    assert load_array(str(tmp_path / "really_a_png.jpg"), 16).shape == (16, 16, 3)


def _bad_files(root, picture) -> dict[str, str]:
    """Write one file per failure case; return relpath → expected reason category."""
    good = _jpeg_bytes(picture)
    c = root / "circle"
    (c / "empty.jpg").write_bytes(b"")
    (c / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (c / "random.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (c / "error_page.jpg").write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    Image.new("L", (12000, 8000)).save(c / "bomb.png")  # 96 Mpx > Pillow's 89.5 Mpx limit
    os.symlink(c / "does_not_exist.jpg", c / "broken_link.jpg")
    os.symlink(c / "loop_b.jpg", c / "loop_a.jpg")
    os.symlink(c / "loop_a.jpg", c / "loop_b.jpg")
    return {
        "circle/empty.jpg": "empty file", "circle/truncated.jpg": "truncated",
        "circle/random.jpg": "not an image", "circle/error_page.jpg": "not an image",
        "circle/bomb.png": "too many pixels", "circle/broken_link.jpg": "broken symlink",
        "circle/loop_a.jpg": "unreadable", "circle/loop_b.jpg": "unreadable",
    }


def test_every_bad_file_is_skipped_with_its_reason_and_the_rest_is_cached(tmp_path, picture):
    data = write_class_folders(tmp_path / "d", per_class=3)
    expected = _bad_files(data, picture)
    picture.save(data / "square" / "png_named.jpg", "PNG")
    picture.save(data / "square" / "with space ünïcode.png")
    weird = os.fsencode(str(data / "stripes")) + b"/latin1_\xe9.png"
    with open(weird, "wb") as f:
        picture.save(f, "PNG")
    (data / "stray_at_root.png").write_bytes((data / "square" / "png_named.jpg").read_bytes())
    expected["stray_at_root.png"] = "not in a class folder"
    logs = []
    result = extract_features(data, out=tmp_path / "c.h5", size=SIZE, weights="none", progress=False, log=logs.append)
    with FeatureCache(result.path) as c:
        skipped = dict(c.skipped())
        cached = set(c.column("path"))
    assert {p: r.split(":")[0] for p, r in skipped.items()} == expected
    assert {"square/png_named.jpg", "square/with space ünïcode.png", os.fsdecode(b"stripes/latin1_\xe9.png")} <= cached
    assert len(cached) == 9 + 3
    summary = next(m for m in logs if "skipped" in m)
    assert summary.startswith(f"{len(expected)} of {len(expected) + 12} images skipped (")
    assert "1 truncated" in summary and "2 not an image" in summary
    # the first few are named under it, with their reasons; the rest are counted
    named = logs[logs.index(summary) + 1:logs.index(summary) + 7]
    assert named[:5] == [f"  skipped {p}: {r}" for p, r in sorted(skipped.items())[:5]]
    assert named[5] == f"  and {len(expected) - 5} more: `make verify FEATURES={result.path} ALL=1` lists every one"


def test_a_permission_error_is_a_reason_not_a_crash(tmp_path, picture, monkeypatch):
    path = tmp_path / "locked.jpg"
    picture.save(path)
    real_open = open

    def guarded(file, *a, **kw):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *a, **kw)

    monkeypatch.setattr("builtins.open", guarded)
    with pytest.raises(DecodeError, match="unreadable: Permission denied"):
        load_rgb(str(path))


def test_pixel_limit_is_configurable(tmp_path, picture):
    picture.save(tmp_path / "a.png")
    with pytest.raises(DecodeError, match="too many pixels: 40x30 is over the limit of 1,000"):
        load_rgb(str(tmp_path / "a.png"), max_pixels=1000)


def _png_declaring(path: Path, width: int, height: int) -> None:
    """A 70-byte PNG whose header declares width x height grey pixels and whose image data is not zlib: opening
    it reads only the header, decoding it fails as truncated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"not zlib data") + chunk(b"IEND", b""))


def test_max_pixels_above_twice_pillows_limit_is_the_limit(tmp_path):
    """Pillow refuses more than twice its own limit (178,956,970 pixels) whatever MAX_PIXELS= says."""
    _png_declaring(tmp_path / "big.png", 14000, 14000)  # 196,000,000 pixels
    with pytest.raises(DecodeError) as err:
        load_rgb(str(tmp_path / "big.png"))
    assert err.value.reason == "too many pixels: 14000x14000 is over the limit of 89,478,485 (MAX_PIXELS=)"
    with pytest.raises(DecodeError) as err:
        load_rgb(str(tmp_path / "big.png"), max_pixels=300_000_000)
    assert err.value.category == "truncated", err.value.reason  # decoded (its data is bad), not refused for size
    # Other code in the process keeps Pillow's own limit, on this thread and on others.
    assert Image.MAX_IMAGE_PIXELS == decode.DEFAULT_MAX_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")
    refused = []

    def other_thread():
        try:
            Image.open(tmp_path / "big.png")
        except Image.DecompressionBombError:
            refused.append(True)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert refused == [True]


def test_a_raised_limit_applies_only_on_the_thread_decoding_with_it(tmp_path, monkeypatch):
    """tf.data decodes on several threads: while one is inside load_rgb with MAX_PIXELS=300,000,000, Pillow's own
    limit still refuses the same file on another thread (a process-wide setting would let it through)."""
    _png_declaring(tmp_path / "big.png", 14000, 14000)
    inside, release, seen = threading.Event(), threading.Event(), {}
    real_open = decode._open_checked

    def open_and_wait(path):
        image = real_open(path)  # passed the raised limit on this thread
        inside.set()
        release.wait(10)
        return image

    monkeypatch.setattr(decode, "_open_checked", open_and_wait)

    def decode_with_a_raised_limit():
        try:
            load_rgb(str(tmp_path / "big.png"), max_pixels=300_000_000)
        except DecodeError as err:
            seen["a"] = err.category

    a = threading.Thread(target=decode_with_a_raised_limit)
    a.start()
    assert inside.wait(10)
    try:
        with pytest.raises(Image.DecompressionBombError):  # this thread: Pillow's limit, as if headswap were absent
            Image.open(tmp_path / "big.png")
    finally:
        release.set()
        a.join()
    assert seen == {"a": "truncated"}  # thread a: opened under its own limit, then failed on the bad data


def test_pillows_limit_neither_refuses_nor_warns_within_max_pixels(tmp_path, picture, monkeypatch):
    picture.save(tmp_path / "a.png")  # 40x30 = 1,200 pixels
    reference = np.asarray(picture.convert("RGB"))
    for pillow_limit in (500, 1000):  # 1,200 is over twice 500 (Pillow refuses), over 1,000 (Pillow warns)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            np.testing.assert_array_equal(np.asarray(load_rgb(str(tmp_path / "a.png"), max_pixels=1200)), reference)
        assert [str(w.message) for w in caught] == []
        with pytest.raises(DecodeError, match="too many pixels: 40x30 is over the limit of 1,199 \\(MAX_PIXELS=\\)"):
            load_rgb(str(tmp_path / "a.png"), max_pixels=1199)


def test_unreadable_permissions_as_a_non_root_user(tmp_path_factory, picture):
    """A chmod 000 file, decoded by a real non-root process (root would read it anyway)."""
    import subprocess
    import sys
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="headswap-perm-"))
    folder.chmod(0o755)
    locked = folder / "locked.jpg"
    picture.save(locked)
    locked.chmod(0o000)
    # The interpreter lives under /root here, so the child starts as root, loads what it needs, and
    # drops to nobody (65534) before the read: the open() below is a real non-root open().
    code = ("import os\nfrom PIL import Image\nImage.init()\nfrom extract.decode import load_rgb, DecodeError\n"
            "if os.geteuid() == 0:\n    os.setgroups([])\n    os.setgid(65534)\n    os.setuid(65534)\n"
            "assert os.geteuid() != 0\n"
            f"try:\n    load_rgb({str(locked)!r})\nexcept DecodeError as e:\n    print(e.reason)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "unreadable: Permission denied", out.stderr


def test_large_jpegs_are_dct_scaled_like_pillow_draft(tmp_path):
    """A 500x375 JPEG for a 100 px input decodes at 1/2 scale (Pillow's draft), then bilinear resize."""
    rng = np.random.default_rng(3)
    small = Image.fromarray(rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    small.save(tmp_path / "big.jpg", quality=92)
    ours = load_array(str(tmp_path / "big.jpg"), 100)
    ref = Image.open(tmp_path / "big.jpg")
    ref.draft("RGB", (100, 100))
    assert ref.size == (250, 188)
    expected = np.asarray(ref.convert("RGB").resize((100, 100), Image.BILINEAR))
    np.testing.assert_array_equal(ours, expected)
    full = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((100, 100), Image.BILINEAR))
    assert np.abs(ours.astype(int) - full).mean() < 3  # same picture
    assert load_array(str(tmp_path / "big.jpg"), 299).shape == (299, 299, 3)  # 500x375 cannot halve below 299


CORRUPT_EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05"  # a TIFF header promising 5 entries, holding none


def test_a_corrupt_exif_warning_names_the_file_and_the_image_is_still_decoded(tmp_path, picture):
    """Pillow's "Corrupt EXIF data" warning named no file: in a run of thousands, which one?"""
    bad, clean = tmp_path / "bad_exif.jpg", tmp_path / "clean.jpg"
    picture.save(bad, "JPEG", exif=CORRUPT_EXIF)
    picture.save(clean, "JPEG")
    with pytest.warns(UserWarning, match="Corrupt EXIF data") as pillow:  # Pillow's own, without a path
        Image.open(bad).getexif()
    assert str(bad) not in str(pillow[0].message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arr = load_array(str(bad), 32)
        np.testing.assert_array_equal(arr, load_array(str(clean), 32))  # the same pixels: only the EXIF differs
    assert [(w.category, str(w.message).split(".")[0]) for w in caught] == [(UserWarning, "Corrupt EXIF data")]
    assert caught[0].filename == str(bad)  # shown as "<bad>:0: UserWarning: Corrupt EXIF data. ..."
    assert f"{bad}:0: UserWarning: Corrupt EXIF data." in warnings.formatwarning(
        caught[0].message, caught[0].category, caught[0].filename, caught[0].lineno)


def test_a_corrupt_exif_warning_during_extraction_names_the_file_it_came_from(tmp_path, picture):
    data = write_class_folders(tmp_path / "d", per_class=2)
    picture.save(data / "circle" / "bad_exif.jpg", "JPEG", exif=CORRUPT_EXIF)
    with warnings.catch_warnings(record=True) as caught:  # tf.data's decode threads warn too: filters are global
        warnings.simplefilter("always")
        result = extract_features(data, out=tmp_path / "c.h5", size=SIZE, weights="none", progress=False,
                                  log=lambda m: None)
    exif = [w.filename for w in caught if "EXIF" in str(w.message)]
    assert exif and set(exif) == {str(data / "circle" / "bad_exif.jpg")}, exif
    with FeatureCache(result.path) as c:
        assert "circle/bad_exif.jpg" in set(c.column("path")) and not c.skipped()


def test_warnings_are_collected_only_on_the_thread_decoding(tmp_path, picture, monkeypatch):
    """While a decode thread is inside load_rgb, a warning from another thread is neither held back nor given that
    thread's file (warnings.catch_warnings, process-wide, would do both)."""
    picture.save(tmp_path / "bad_exif.jpg", "JPEG", exif=CORRUPT_EXIF)
    inside, release = threading.Event(), threading.Event()
    real_open = decode._open_checked

    def open_and_wait(path):
        image = real_open(path)
        inside.set()
        release.wait(10)
        return image

    monkeypatch.setattr(decode, "_open_checked", open_and_wait)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = threading.Thread(target=load_rgb, args=(str(tmp_path / "bad_exif.jpg"),))
        a.start()
        assert inside.wait(10)
        try:
            warnings.warn("from elsewhere", UserWarning)
            assert [str(w.message) for w in caught] == ["from elsewhere"]  # shown at once, as it is
        finally:
            release.set()
            a.join()
    assert [str(w.message).split(".")[0] for w in caught] == ["from elsewhere", "Corrupt EXIF data"]
    assert caught[0].filename == __file__ and caught[1].filename == str(tmp_path / "bad_exif.jpg")
