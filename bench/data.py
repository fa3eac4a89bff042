"""Bench inputs: realistic generated JPEGs (cached), and class-folder subsets of N and 4N images.

The generated pool lives in ``bench_out/data/<spec>/pool/``; image ``i`` depends only on
``(seed, i)``, so a bigger N extends the pool without changing the images already there.
A subset ``n<N>/`` holds hard links (symlinks across file systems) to the first N images, in
class folders, which both ``extract_features`` and ``flow_from_directory`` read as they are.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

N_CLASSES = 4
# What both readers take: extract reads whatever Pillow opens, flow_from_directory only these suffixes.
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff"}
TOP_LEVEL_CLASS = "_top"  # the class folder of a DATA's loose files when it also has class folders


@dataclass(frozen=True)
class SyntheticSpec:
    """What the generated pool looks like; its ``name`` keys the cache folder."""

    width: int = 500
    height: int = 375
    quality: int = 90
    seed: int = 0

    @property
    def name(self) -> str:
        return f"synthetic-{self.width}x{self.height}-q{self.quality}-s{self.seed}"


def photo_like(index: int, spec: SyntheticSpec) -> Image.Image:
    """A photo-sized RGB picture: smooth multi-scale colour noise, a few class-typed shapes, sensor noise.

    Class ``index % N_CLASSES`` decides the shape kind (ellipses, boxes, polygons, lines), so the
    images carry a weak label signal. JPEGs of these are 40-90 kB at quality 90, like real photos.
    """
    rng = np.random.default_rng([spec.seed, index])
    w, h = spec.width, spec.height
    canvas = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((3, 1.0), (12, 0.45), (48, 0.2)):
        coarse = rng.random((max(2, cells * h // w), cells, 3)).astype(np.float32)
        small = Image.fromarray((coarse * 255).astype(np.uint8), "RGB")
        canvas += amp * np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), np.float32)
    canvas = (canvas - canvas.min()) / max(float(np.ptp(canvas)), 1e-6) * 255
    img = Image.fromarray(canvas.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    kind = index % N_CLASSES
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            pts = [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(5)]
            draw.polygon(pts, fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(3, 15)))
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    arr = np.asarray(img, np.float32) + rng.normal(0, 5, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def ensure_pool(root: Path, spec: SyntheticSpec, n: int) -> list[Path]:
    """The first ``n`` pool images (generated once, reused by later runs)."""
    pool = root / spec.name / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = pool / f"img_{i:05d}.jpg"
        if not (p.exists() and p.stat().st_size > 0):
            tmp = p.with_suffix(".tmp")
            photo_like(i, spec).save(tmp, "JPEG", quality=spec.quality)
            os.replace(tmp, p)
        paths.append(p)
    return paths


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        os.symlink(src.resolve(), dst)


def materialise_subset(images: list[tuple[Path, str]], folder: Path) -> Path:
    """``folder/<class>/<file>`` links to ``images`` ((path, class) pairs); rebuilt only if it differs."""
    want = {f"{cls}/{i:05d}_{p.name}": p for i, (p, cls) in enumerate(images)}
    have = {str(q.relative_to(folder)) for q in folder.rglob("*") if q.is_file()} if folder.exists() else set()
    if have == set(want):
        return folder
    if folder.exists():
        for q in sorted(folder.rglob("*"), reverse=True):
            q.rmdir() if q.is_dir() and not q.is_symlink() else q.unlink()
    for rel, src in want.items():
        dst = folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link(src, dst)
    return folder


def synthetic_subsets(root: Path, sizes: list[int], spec: SyntheticSpec = SyntheticSpec()) -> dict[int, Path]:
    """One class-folder data set per size in ``sizes``, each the first n images of the same pool."""
    pool = ensure_pool(root, spec, max(sizes))
    return {
        n: materialise_subset([(p, f"class{i % N_CLASSES}") for i, p in enumerate(pool[:n])],
                              root / spec.name / f"n{n}")
        for n in sizes
    }


def list_images(data: Path) -> list[tuple[Path, str]]:
    """Every image under ``data`` (sorted) that both readers take, with its first-level folder as class (files
    beside class folders: ``TOP_LEVEL_CLASS``; no class folders at all: two pseudo-classes)."""
    found = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(data).parts))
    classes = [p.relative_to(data).parts[0] if len(p.relative_to(data).parts) > 1 else TOP_LEVEL_CLASS
               for p in found]
    if len(set(classes)) < 2:
        classes = [f"class{i % 2}" for i in range(len(found))]
    return list(zip(found, classes))


def user_subsets(data: Path, root: Path, sizes: list[int]) -> dict[int, Path]:
    """Subsets of the first n images of a user's folder; the largest size must fit in it."""
    images = list_images(data)
    if len(images) < max(sizes):
        raise ValueError(f"DATA={data} has {len(images)} images that both extract and the classic loop read "
                         f"({', '.join(sorted(IMAGE_EXTS))}); the bench needs {max(sizes)} (4×N). "
                         f"Pass a smaller N= (at most {len(images) // 4}).")
    tag = hashlib.sha1(str(data.resolve()).encode()).hexdigest()[:8]
    base = root / f"data-{data.name}-{tag}"
    # Interleave classes so every prefix has several of them.
    by_class: dict[str, list[Path]] = {}
    for p, c in images:
        by_class.setdefault(c, []).append(p)
    mixed = [(lst[k], c) for k in range(max(map(len, by_class.values())))
             for c, lst in sorted(by_class.items()) if k < len(lst)]
    return {n: materialise_subset(mixed[:n], base / f"n{n}") for n in sizes}
