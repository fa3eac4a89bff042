"""Classify new images with a trained run: decode → backbone (the cache's recorded config) → head."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from extract.cache import FeatureCache, newest_first

from .base import HEAD_FILE, load_head
from .train import RANDOM_WEIGHTS_PREDICTIONS_NOTE, FeatureSource, full_proba

# Cached test rows are read and classified this many at a time: memory stays flat however many there are
# (at POOLING=none and 299 px a row is 0.8 MB as float32).
TEST_BLOCK_ROWS = 256


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _image_paths(images: Path) -> tuple[list[Path], dict[Path, str]]:
    """Every file ``make extract`` would list under ``images`` (hidden ones aside), whatever its extension:
    as in extract, decoding decides what is an image. Folders extract does not descend into (a symlink loop, an
    unreadable folder) are listed too, and returned again with extract's reason, which is their error."""
    if images.is_file():
        return [images], {}
    if images.is_dir():
        from extract.discover import _walk  # noqa: PLC0415

        tree = _walk(images)
        return [images / rel for rel in tree.listed()], {images / rel: reason for rel, reason in tree.problems.items()}
    raise FileNotFoundError(f"IMAGES={images} does not exist; pass an image file or a folder of images")


def _refuse_duplicate_ids(paths: list[Path], images: Path | None) -> None:
    """Kaggle ids are file stems and must be unique: two images with one stem would give two rows of one id.
    ``images``: the IMAGES= given, or None for the cache's test rows (``paths`` as the cache records them)."""
    by_id: dict[str, list[Path]] = {}
    for p in paths:
        by_id.setdefault(p.stem, []).append(p)
    dups = {i: ps for i, ps in by_id.items() if len(ps) > 1}
    if not dups:
        return
    root = Path() if images is None else images if images.is_dir() else images.parent
    shown = "; ".join(f"{i} ({', '.join(str(p.relative_to(root)) for p in ps)})" for i, ps in list(dups.items())[:10])
    more = f"; and {len(dups) - 10} more" if len(dups) > 10 else ""
    where, fix = (("IMAGES=" + str(images), "or point IMAGES= at the folder of test images alone") if images
                  else ("the cached test rows (TEST=)", "then run `make extract` again with the same settings (it "
                        "updates only what changed) and train the head again, or pass IMAGES=<folder of test images>"))
    raise ValueError(
        f"SUBMISSION=1 writes one row per id (the file name without its extension), but {len(dups)} "
        f"id{'s belong' if len(dups) > 1 else ' belongs'} to more than one file in {where}: {shown}{more}. "
        f"Kaggle rejects duplicate ids: remove or rename the extra copies, {fix}."
    )


def _write_csv(frame: pd.DataFrame, out: Path) -> None:
    """``frame`` as CSV at ``out``, through a temporary file beside it: a write that fails (a full disk) leaves no
    truncated CSV, only what was there before. File names that are not UTF-8 are written as their bytes
    (surrogateescape), as the cache stores them, so the paths in the CSV open the files."""
    if out.exists() and not out.is_file():  # /dev/stdout, a FIFO: written in place
        frame.to_csv(out, index=False, errors="surrogateescape")
        return
    out = out.resolve()  # OUT= a symlink: its target is written, the link stays
    tmp = out.with_name(out.name + ".tmp")
    try:
        frame.to_csv(tmp, index=False, errors="surrogateescape")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _known_runs_hint(root: Path = Path("runs")) -> str:
    """The run folders under ``root``, newest first, for a RUN= that is not one."""
    runs = [f.parent for f in root.rglob("run.json")] if root.is_dir() else []
    if not runs:
        return "train one with `make train-head`; runs are under runs/<cache>/<head>/"
    return f"the runs under {root}/, newest first: {newest_first(runs, lambda d: d / 'run.json')}"


def read_run_info(run: Path) -> dict:
    """``run/run.json``; a folder that is not a run gets a FileNotFoundError saying what to pass instead."""
    info_file = run / "run.json"
    if not info_file.is_file():
        inside = sorted(d.name for d in run.iterdir() if (d / "run.json").is_file()) if run.is_dir() else []
        hint = (f"it holds the runs {', '.join(inside)}, e.g. RUN={run / inside[0]}" if inside
                else f"it is the head/ folder of the run {run.parent}: pass RUN={run.parent}"
                if (run / HEAD_FILE).is_file() and (run.parent / info_file.name).is_file()
                else _known_runs_hint())
        raise FileNotFoundError(f"RUN={run} is not a run folder (no {info_file.name}); {hint}")
    return json.loads(info_file.read_text())


def _embed_with(config: dict, paths: list[Path], batch_size: int, max_pixels: int,
                consume: Callable[[np.ndarray, np.ndarray, np.ndarray], None]) -> list[str]:
    """Run the backbone ``config`` describes over ``paths``, handing each batch to ``consume(positions, features,
    ok)`` (``ok``: which rows decoded) as it comes; returns per image '' or why it failed."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    from extract.pipeline import embed, load_backbone  # noqa: PLC0415  (imports TensorFlow)

    model = load_backbone(config)
    errors = [""] * len(paths)
    # A bar on a terminal (tqdm leaves it out when stderr is a file or pipe): 10k images at 299 px take minutes.
    with tqdm(total=len(paths), unit="img", desc=f"predict ({config['backbone']['name']})", disable=None,
              dynamic_ncols=True) as bar:
        for idx, batch, reasons in embed([str(p) for p in paths], model, config["size"], batch_size, max_pixels):
            # Round through the cache dtype so the head sees exactly what it was trained on.
            consume(idx, batch.astype(config["dtype"]).astype(np.float32), np.array([not r for r in reasons]))
            for k, r in zip(idx, reasons):
                errors[k] = r
            bar.update(len(idx))
    return errors


def _all_features(config: dict, paths: list[Path], batch_size: int, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """Every image's features (n, *feature_shape) at once, for joining caches: each backbone runs over all images
    before the head can see any."""
    feats: list[np.ndarray] = []

    def keep(idx, batch, ok):
        if not feats:
            feats.append(np.zeros((len(paths), *batch.shape[1:]), np.float32))
        feats[0][idx] = batch

    errors = _embed_with(config, paths, batch_size, max_pixels, keep)
    return feats[0], errors


def predict(
    run: str | os.PathLike,
    images: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    submission: bool = False,
    batch_size: int = 32,
    max_pixels: int | None = None,
    log: Callable[[str], None] = _log,
) -> pd.DataFrame:
    """Predict every image under ``images`` with the head saved in ``run``.

    Returns one row per image: ``path``, ``label`` (top-1), ``probability``, ``top5``
    (``"name:p; ..."``) and ``error`` (why an image could not be read, else empty).
    With ``submission=True`` the CSV written to ``out`` is Kaggle's format instead:
    ``id`` plus one probability column per class, in class order. Ids must be unique (a ValueError lists the
    clashes); a file that is not an image and is not named like one (``readme.txt``) is left out of it, with a
    note; an unreadable image (``broken.jpg``) keeps its row, with uniform probabilities.
    ``~`` in ``run``, ``images`` and ``out`` is the home folder. An image of more than ``max_pixels`` pixels
    (default: Pillow's limit, as in extraction; MAX_PIXELS=) is an error row, not decoded.

    Without ``images``, the test rows of the run's own cache(s) (``make extract TEST=``) are predicted
    from their cached features: no image is opened and no backbone is built; the test files the
    extraction skipped are listed with their reasons, as unreadable images are.
    """
    run = Path(run).expanduser()
    images = Path(images).expanduser() if images is not None else None
    out = Path(out).expanduser() if out is not None else None
    from extract.decode import DEFAULT_MAX_PIXELS  # noqa: PLC0415

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if max_pixels < 1:
        raise ValueError(f"MAX_PIXELS={max_pixels} must be at least 1 pixel (default {DEFAULT_MAX_PIXELS:,})")
    if submission and out is None:
        raise ValueError("SUBMISSION=1 writes a CSV file: pass OUT=, e.g. OUT=submission.csv")
    if out is not None and out.is_dir():  # found now, not after the backbone has run over every image
        raise ValueError(f"OUT={out} is a folder; pass a file, e.g. OUT={out / 'predictions.csv'}")
    info = read_run_info(run)
    # A run on joined caches (FEATURES=a.h5,b.h5) lists every cache's config in cache_configs.
    configs, class_names = info.get("cache_configs") or [info["cache_config"]], info["class_names"]
    head = load_head(run / "head")
    if any(c["weights"]["kind"] == "none" for c in configs):
        log(f"WARNING: {RANDOM_WEIGHTS_PREDICTIONS_NOTE}")
    from extract.discover import image_suffixes  # noqa: PLC0415

    suffixes = image_suffixes()
    if images is None:
        paths, proba, errors = _cached_test_rows(run, info, head)
        source = f"the test rows of RUN={run}'s cache"  # no backbone to spare: ids are checked once, below
    else:
        paths, not_descended = _image_paths(images)
        source = f"IMAGES={images}"
        if not paths:
            raise ValueError(f"IMAGES={images} has no images; point IMAGES= at a folder of images or one image file")
        if submission:  # before the backbone runs: files named like images get a row whether they decode or not
            _refuse_duplicate_ids([p for p in paths if p.suffix.lower() in suffixes], images)
        proba = np.full((len(paths), len(class_names)), np.nan)
        if len(configs) == 1:  # the head classifies each batch as it comes: one batch's features in memory

            def classify(idx, batch, ok):
                if ok.any():  # a head refuses 0 rows
                    proba[idx[ok]] = full_proba(head, batch[ok], len(class_names))

            errors = _embed_with(configs[0], paths, batch_size, max_pixels, classify)
        else:
            errors, parts = [""] * len(paths), []
            for config in configs:
                part, reasons = _all_features(config, paths, batch_size, max_pixels)
                parts.append(part.reshape(len(paths), -1))
                errors = [e or r for e, r in zip(errors, reasons)]
            feats = np.concatenate(parts, axis=1)  # flattened and joined in cache order, as in training
            read = np.array([not e for e in errors], bool)
            if read.any():  # a head refuses 0 rows; a folder with no readable image still gets its table of errors
                proba[read] = full_proba(head, feats[read], len(class_names))
        errors = [not_descended.get(p, e) for p, e in zip(paths, errors)]  # not "unreadable: Is a directory"
    n = len(paths)
    ok = np.array([not e for e in errors], bool)
    names = np.array(class_names, dtype=object)
    rows = []
    for i, p in enumerate(paths):
        if not ok[i]:
            rows.append({"path": str(p), "label": "", "probability": np.nan, "top5": "", "error": errors[i]})
            continue
        order = np.argsort(-proba[i])[:5]
        rows.append({
            "path": str(p), "label": names[order[0]], "probability": float(proba[i, order[0]]),
            "top5": "; ".join(f"{names[j]}:{proba[i, j]:.3f}" for j in order), "error": "",
        })
    table = pd.DataFrame(rows)
    if (~ok).any():
        bad = np.flatnonzero(~ok)
        more = (f"; and {len(bad) - 5:,} more (" + (f"every one is in the error column of {out}" if out is not None
                else "OUT= writes every one, in the error column") + ")" if len(bad) > 5 else "")
        log(f"{len(bad):,} of {n:,} images could not be read: " + "; ".join(
            f"{paths[i].name} ({errors[i]})" for i in bad[:5]) + more)
    if submission:
        # A test image that fails to decode still needs its row (Kaggle wants every id); a readme.txt is no test
        # image, so it must not become an id.
        keep = ok | np.array([p.suffix.lower() in suffixes for p in paths], bool)
        if (~keep).any():
            left = np.flatnonzero(~keep)
            log(f"left out of the submission: {len(left)} file{'s' if len(left) > 1 else ''} that "
                f"{'are' if len(left) > 1 else 'is'} not an image (content and name): " + "; ".join(
                    f"{paths[i].name} ({errors[i]})" for i in left[:10]) + ("; ..." if len(left) > 10 else ""))
        if not keep.any():
            none = "its one file does not decode" if n == 1 else f"none of its {n} files decodes"
            raise ValueError(f"{source} has no images ({none} as one); point IMAGES= at the folder of test images")
        _refuse_duplicate_ids([p for p, k in zip(paths, keep) if k], images)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if submission:
            if (keep & ~ok).any():
                log(f"WARNING: {(keep & ~ok).sum()} unreadable images get uniform probabilities in the submission")
            sub = pd.DataFrame(np.where(ok[:, None], proba, 1 / len(class_names))[keep], columns=class_names)
            zero = int((sub.to_numpy() == 0).any(axis=1).sum())
            if zero:  # knn gives every class outside the vote 0; a log-loss metric clips it at 1e-15
                log(f"WARNING: {zero:,} of {len(sub):,} submission rows give some class probability 0 ({head.name}); "
                    f"a log-loss metric such as Kaggle's clips it to 1e-15, so each such image whose true class got 0 "
                    f"costs about 34.5. A calibrated head (logreg, dense) suits a log-loss submission")
            sub.insert(0, "id", [p.stem for p, k in zip(paths, keep) if k])
            _write_csv(sub, out)
        else:
            _write_csv(table, out)
        log(f"wrote {out}")
    return table


def _cached_test_rows(run: Path, info: dict, head) -> tuple[list[Path], np.ndarray, list[str]]:
    """The test rows of the run's cache(s): their paths (as the cache records them, ``test/...`` for TEST=),
    the head's probabilities (read and classified ``TEST_BLOCK_ROWS`` at a time, features joined as in training), and
    per row '' or, for a test file the extraction skipped, its reason (its probabilities NaN)."""
    files = [Path(f) for f in info.get("feature_files") or []]
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise FileNotFoundError(
            f"RUN={run}: without IMAGES=, predict reads the test rows of the run's cache, but "
            + (f"{missing[0]} is gone" if missing else "run.json names no cache (a run from an older headswap)")
            + "; pass IMAGES=<folder of test images> to extract them again")
    with FeatureSource(files) as source:
        if source.class_names != info["class_names"] or source.configs != (
                info.get("cache_configs") or [info["cache_config"]]):
            raise ValueError(f"RUN={run}: its cache {files[0]} was extracted again with other settings or classes "
                             f"since the head was trained; train the head again, or pass IMAGES=")
        index = source.rows("test", "clean")
        paths = [Path(str(p)) for p in source.path_column[index]]
        if not paths:
            raise ValueError(f"RUN={run}: its cache {files[0].name} has no test rows; extract them with "
                             f"`make extract … TEST=<folder of test images>` (then every head predicts them in "
                             f"seconds), or pass IMAGES=<folder of test images>")
        # Test files the extraction skipped (DATA/test/... or TEST=, both cached as test/...) keep their row.
        under_test = all(str(p).startswith("test/") for p in paths)
        with FeatureCache(files[0]) as c:
            skipped = [(Path(p), r) for p, r in c.skipped() if under_test and str(p).startswith("test/")]
        n_classes = len(info["class_names"])
        proba = np.full((len(paths) + len(skipped), n_classes), np.nan)
        for start in range(0, len(index), TEST_BLOCK_ROWS):
            block = index[start:start + TEST_BLOCK_ROWS]
            proba[start:start + len(block)] = full_proba(head, source.features(block), n_classes)
    return paths + [p for p, _ in skipped], proba, [""] * len(paths) + [r for _, r in skipped]
