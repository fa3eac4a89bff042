"""Stage 1: discover → decode → backbone → write, as one typed function the CLI wraps."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import cache as cache_mod
from .backbones import build_backbone, get_backbone, weights_identity
from .decode import DEFAULT_MAX_PIXELS, DecodeError, load_array
from .discover import Discovery, Item, discover

POOLINGS = ("avg", "max", "none")
DTYPES = ("float16", "float32")
PRECISIONS = ("float32",)
RANDOM_WEIGHTS_WARNING = (
    "WEIGHTS=none: the backbone has random weights. Features and any accuracy computed on them "
    "are NOT representative of a pretrained model."
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class ExtractResult:
    path: Path
    rows: int
    skipped: int
    seconds: float
    up_to_date: bool = False


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    out = {}
    for pkg in ("headswap", "tensorflow", "keras", "h5py", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def make_config(
    *, backbone: str, size: int | None, pooling: str, weights: str, dtype: str, precision: str,
    seed: int, val: float,
) -> dict[str, Any]:
    """Validate settings and return the cache config (everything that changes the features)."""
    spec = get_backbone(backbone)
    if weights == "auto":
        weights = auto_weights(spec)
    size = spec.default_size if size is None else int(size)
    if size < spec.min_size:
        raise ValueError(f"SIZE={size} is too small for {spec.name}: the minimum is {spec.min_size}")
    if pooling not in POOLINGS:
        raise ValueError(f"POOLING={pooling!r} is not one of {', '.join(POOLINGS)}")
    if dtype not in DTYPES:
        raise ValueError(f"DTYPE={dtype!r} is not one of {', '.join(DTYPES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"PRECISION={precision!r} is not one of {', '.join(PRECISIONS)}")
    return {
        "backbone": spec.as_config(),
        "size": size,
        "pooling": pooling,
        "weights": weights_identity(spec, weights),
        "dtype": dtype,
        "precision": precision,
        "seed": int(seed),
        "val": float(val),
        "augmentation": {"preset": "none", "rounds": 0},
    }


def auto_weights(spec, log: Callable[[str], None] = _log) -> str:
    """``imagenet`` when the weights can be had, else ``none`` with a loud warning (for the demo)."""
    from .backbones import WeightsUnavailableError  # noqa: PLC0415

    try:
        weights_identity(spec, "imagenet")
        return "imagenet"
    except WeightsUnavailableError as err:
        bar = "!" * 78
        log(f"{bar}\nWEIGHTS=auto: ImageNet weights are not available, falling back to WEIGHTS=none.\n"
            f"{err}\nThe accuracies below come from a RANDOM backbone and are NOT representative.\n{bar}")
        return "none"


def weights_argument(config: dict[str, Any]) -> str:
    """The WEIGHTS= value that rebuilds the backbone a cache was made with."""
    w = config["weights"]
    return {"none": "none", "imagenet": "imagenet"}.get(w["kind"]) or w["path"]


def load_backbone(config: dict[str, Any]):
    """Build the backbone described by a cache config (used by extract and predict)."""
    return build_backbone(
        get_backbone(config["backbone"]["name"]), config["size"], config["pooling"],
        weights_argument(config), seed=config["seed"],
    )


def embed(
    paths: Sequence[str], model, size: int, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Yield (positions, features, reasons) per batch; ``reasons[i] == ''`` where decoding worked.

    Decoding runs in parallel tf.data workers and overlaps the backbone's compute.
    ``features`` rows of failed images are meaningless and must be dropped by the caller.
    """
    import tensorflow as tf  # noqa: PLC0415

    path_list = list(paths)

    def decode(i):
        i = int(i)
        try:
            return load_array(path_list[i], size, max_pixels), b""
        except DecodeError as err:
            return np.zeros((size, size, 3), np.uint8), err.reason.encode("utf-8", "replace")
        except Exception as err:  # noqa: BLE001  (one odd file must never end a long run)
            return np.zeros((size, size, 3), np.uint8), f"corrupt: {type(err).__name__}: {err}".encode()

    def tf_decode(i):
        img, reason = tf.numpy_function(decode, [i], [tf.uint8, tf.string], stateful=False)
        img.set_shape((size, size, 3))
        reason.set_shape(())
        return i, img, reason

    ds = (
        tf.data.Dataset.range(len(path_list))
        .map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(2)
    )
    infer = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), reduce_retracing=True)
    for idx, imgs, reasons in ds:
        feats = infer(imgs).numpy()
        yield idx.numpy(), feats, [r.decode("utf-8", "replace") for r in reasons.numpy()]


def _summarise_skips(reasons: list[str]) -> str:
    counts = Counter(r.split(":", 1)[0] for r in reasons)
    return ", ".join(f"{n} {cat}" for cat, n in counts.most_common())


def _check_existing(path: Path, config: dict[str, Any], fingerprint: str, overwrite: bool) -> bool:
    """True if ``path`` already holds this exact cache; raise if it holds something we must not clobber."""
    if not path.exists():
        return False
    if overwrite:
        path.unlink()
        return False
    try:
        with cache_mod.FeatureCache(path) as c:
            same_config = c.attrs.get("config_key") == cache_mod.config_key(config)
            complete, old_fp = c.complete, c.fingerprint
    except cache_mod.CacheError as err:
        raise cache_mod.CacheError(f"{err}\nPass OVERWRITE=1 to replace it.") from None
    if not same_config:
        raise cache_mod.CacheError(
            f"OUT={path} holds features of another config (backbone, size, pooling, weights, dtype, "
            f"seed or val differ). Choose another OUT= or pass OVERWRITE=1 to replace it."
        )
    if not complete:
        raise cache_mod.CacheError(
            f"{path} is an incomplete cache from an interrupted run. Pass OVERWRITE=1 to start over."
        )
    if old_fp != fingerprint:
        raise cache_mod.CacheError(
            f"{path} was extracted from a different version of this data set (images added, removed "
            f"or modified since). Its features are stale: pass OVERWRITE=1 to re-extract."
        )
    return True


def extract_features(
    data: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = cache_mod.DEFAULT_DIR,
    backbone: str = "xception",
    size: int | None = None,
    pooling: str = "avg",
    weights: str = "imagenet",
    dtype: str = "float16",
    precision: str = "float32",
    val: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
    id_col: str | None = None,
    label_col: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = _log,
) -> ExtractResult:
    """Extract bottleneck features of every image under ``data`` into an HDF5 cache.

    Returns an :class:`ExtractResult` whose ``path`` is the cache file. A complete cache with
    the same config and data fingerprint is reused without work (``up_to_date=True``).
    """
    found = discover(data, labels=labels, test=test, val=val, seed=seed, id_col=id_col, label_col=label_col)
    for note in found.notes:
        log(f"note: {note}")
    config = make_config(backbone=backbone, size=size, pooling=pooling, weights=weights, dtype=dtype,
                         precision=precision, seed=seed, val=val)
    path = Path(out) if out is not None else cache_mod.default_path(found.name, config, cache_dir)
    fingerprint = found.fingerprint()
    if _check_existing(path, config, fingerprint, overwrite):
        with cache_mod.FeatureCache(path) as c:
            rows, skipped = c.n_rows, len(c.skipped())
        log(f"up to date: {path} ({rows:,} rows, {skipped:,} skipped); nothing to do")
        return ExtractResult(path, rows, skipped, 0.0, up_to_date=True)
    if config["weights"]["kind"] == "none":
        log(f"WARNING: {RANDOM_WEIGHTS_WARNING}")

    model = load_backbone(config)
    feature_shape = tuple(int(d) for d in model.output_shape[1:])
    writer = cache_mod.HDF5Writer(
        path, config=config, class_names=found.class_names, fingerprint=fingerprint,
        feature_shape=feature_shape, dtype=dtype, dataset_name=found.name, data_root=found.root, versions=_versions(),
    )
    result = run_extraction(found, model, writer, config, batch_size=batch_size, max_pixels=max_pixels,
                            progress=progress, log=log)
    result.path = path
    size_mb = path.stat().st_size / 1e6
    log(f"wrote {path} ({size_mb:,.1f} MB)")
    return result


def run_extraction(
    found: Discovery,
    model,
    writer: cache_mod.CacheWriter,
    config: dict[str, Any],
    *,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    log: Callable[[str], None] = _log,
) -> ExtractResult:
    """Feed every discovered item through ``model`` into ``writer``; record every skip with its reason."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    items: list[Item] = found.items
    start = time.perf_counter()
    skip_reasons = []
    complete = False
    try:
        for sk in found.skipped:
            writer.skip(sk.relpath, sk.reason)
            skip_reasons.append(sk.reason)
        bar = tqdm(total=len(items), unit="img", disable=not progress, desc="extract", dynamic_ncols=True)
        for idx, feats, reasons in embed([it.abspath for it in items], model, config["size"], batch_size, max_pixels):
            ok = [k for k, r in enumerate(reasons) if not r]
            for k, r in enumerate(reasons):
                if r:
                    writer.skip(items[idx[k]].relpath, r)
                    skip_reasons.append(r)
            if ok:
                rows = [items[idx[k]] for k in ok]
                writer.write(cache_mod.Batch(
                    features=feats[ok], label=np.array([it.label for it in rows]),
                    path=[it.relpath for it in rows], split=[it.split for it in rows],
                    round=np.zeros(len(rows), np.int16),
                ))
            bar.update(len(reasons))
        bar.close()
        complete = True
    finally:
        writer.close(complete)
    seconds = time.perf_counter() - start
    n_given = len(items) + len(found.skipped)
    n_ok = n_given - len(skip_reasons)
    if skip_reasons:
        log(f"{len(skip_reasons):,} of {n_given:,} images skipped ({_summarise_skips(skip_reasons)}); "
            f"reasons are stored in the cache (`make verify` lists them)")
    else:
        log(f"0 of {n_given:,} images skipped")
    log(f"extracted {n_ok:,} images in {seconds:,.1f} s ({len(items) / max(seconds, 1e-9):,.1f} images/s)")
    return ExtractResult(Path(getattr(writer, "path", "")), n_ok, len(skip_reasons), seconds)
