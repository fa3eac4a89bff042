"""Stage 1: discover → decode → backbone → write, as one typed function the CLI wraps."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from . import cache as cache_mod
from .augment import SAMPLER, AugmentSpec, make_augmenter, parse_augment, view_seed
from .backbones import (
    backbone_function,
    build_backbone,
    check_recorded_weights,
    get_backbone,
    inference_call,
    weights_identity,
)
from .decode import DECODER, DEFAULT_MAX_PIXELS, DecodeError, load_array
from .discover import DataError, Discovery, Item, discover
from .workers import WorkerPool, default_workers

POOLINGS = ("avg", "max", "none")
DTYPES = ("float16", "float32")
PRECISIONS = ("float32", "bfloat16", "float16")
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
    worker_peak_rss_mb: tuple[float, ...] = ()  # WORKERS=K: each worker process's own peak RSS


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    out = {}
    for pkg in ("headswap", "tensorflow", "keras", "h5py", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def default_batch_size(size: int) -> int:
    """Images per backbone call when ``BATCH`` is not given: 64 up to 160 px, else 32.

    Batch size never changes the features. Small inputs make small activations, and each call reorders every
    convolution's weights for oneDNN once: at 100 px, 64 images per call extract ~4% faster than 32 (steady
    loop, 2 CPU cores; README) for ~0.15 GB more. At 299 px, 64 gains ~1.5% for 1.4 GB more: larger inputs keep 32.
    """
    return 64 if size <= 160 else 32


def make_config(
    *, backbone: str, size: int | None, pooling: str, weights: str, dtype: str, precision: str,
    seed: int, val: float, augment: str | None = "none", rounds: int = 0,
) -> dict[str, Any]:
    """Validate settings and return the cache config (everything that changes the features)."""
    spec = get_backbone(backbone)
    size = spec.default_size if size is None else int(size)
    if size < spec.min_size:
        raise ValueError(f"SIZE={size} is too small for {spec.name}: the minimum is {spec.min_size}")
    if pooling not in POOLINGS:
        raise ValueError(f"POOLING={pooling!r} is not one of {', '.join(POOLINGS)}")
    if dtype not in DTYPES:
        raise ValueError(f"DTYPE={dtype!r} is not one of {', '.join(DTYPES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"PRECISION={precision!r} is not one of {', '.join(PRECISIONS)}")
    augmentation = augmentation_config(augment, rounds, seed)
    if weights == "auto":  # last: getting the weights may take a download
        weights = auto_weights(spec, size)
    return {
        "backbone": spec.as_config(),
        "size": size,
        "decoder": DECODER,
        "pooling": pooling,
        "weights": weights_identity(spec, weights, size),
        "dtype": dtype,
        "precision": precision,
        "seed": int(seed),
        "val": float(val),
        "augmentation": augmentation,
    }


def augmentation_config(augment: str | None, rounds: int, seed: int) -> dict[str, Any]:
    spec = parse_augment(augment)
    rounds = int(rounds)
    if rounds < 0:
        raise ValueError(f"ROUNDS={rounds} must be 0 or more")
    if rounds and not spec.enabled:
        raise ValueError(f"ROUNDS={rounds} needs an augmentation, and {spec.why_disabled(augment)}")
    if spec.enabled and not rounds:
        raise ValueError(f"AUGMENT={augment} adds augmented views only with ROUNDS=K (K views of every training "
                         f"image besides the clean one): set ROUNDS=1 or more, or leave AUGMENT unset")
    sampler = {"sampler": SAMPLER} if spec.enabled else {}  # a cache without augmentation keeps its config
    return {**spec.as_config(), **sampler, "rounds": rounds if spec.enabled else 0, "seed": int(seed)}


def augment_spec(config: dict[str, Any]) -> AugmentSpec:
    aug = config["augmentation"]
    return AugmentSpec(aug["preset"], tuple(sorted(aug["params"].items())))


def auto_weights(spec, size: int | None = None, log: Callable[[str], None] = _log) -> str:
    """``imagenet`` when the weights can be had, else ``none`` with a loud warning (for the demo)."""
    from .backbones import WeightsUnavailableError  # noqa: PLC0415

    try:
        weights_identity(spec, "imagenet", size)
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


def load_backbone(config: dict[str, Any], strategy=None):
    """Build the backbone described by a cache config (used by extract, predict and export).

    Refuses weights other than the ones the config recorded (see
    :func:`extract.backbones.check_recorded_weights`): hashing the file again costs ~0.1 s per 100 MB.
    With a ``tf.distribute`` strategy the weights are mirrored on each of its devices.
    """
    spec = get_backbone(config["backbone"]["name"])
    weights = weights_argument(config)
    check_recorded_weights(spec, config["weights"], weights, config["size"])
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return build_backbone(spec, config["size"], config["pooling"], weights, seed=config["seed"],
                              precision=config["precision"])


def replica_strategy(devices: Sequence[str] | None = None):
    """One replica per device: every visible GPU by default (memory growth on), else ``None`` (one device).

    ``devices`` names them explicitly, e.g. ``["/gpu:0", "/gpu:1"]`` (or two logical CPUs in tests).
    On a machine without GPUs (and no ``devices``), TensorFlow gets one inter-op thread, see below.
    """
    import tensorflow as tf  # noqa: PLC0415

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the runtime is initialised already; growth was decided then
            pass
    if devices is None and not gpus and "TF_NUM_INTEROP_THREADS" not in os.environ:
        # One backbone on the CPU: its ops use every core already (intra-op threads), and running two large
        # ops at once only adds a live activation (at 299 px half the runs peaked ~350 MB higher; README; the
        # backbone's own op order is fixed by BackboneFunction). Replicas on several devices need parallel
        # branches, so they keep TensorFlow's default.
        try:
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # the runtime is initialised already (a notebook, a test): its setting stays
            pass
    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(devices) if len(devices) > 1 else None
    visible = tf.config.list_logical_devices()
    known = {_device_key(tf, d.name): d.name for d in visible}
    unknown = [d for d in devices if _device_key(tf, d) not in known]
    if unknown or not devices:
        raise ValueError(f"DEVICES={','.join(devices)}: {', '.join(unknown) or 'no device given'} "
                         f"{'is' if len(unknown) < 2 else 'are'} not a device of this machine; it has "
                         f"{', '.join(_short_name(d.name) for d in visible)}")
    names = [known[_device_key(tf, d)] for d in devices]
    if len(set(names)) != len(names):
        raise ValueError(f"DEVICES={','.join(devices)} names a device twice")
    return tf.distribute.MirroredStrategy(names)  # one named device too: its backbone runs there


def _device_key(tf, name: str) -> tuple[str, int] | None:
    """('GPU', 0) for '/gpu:0', 'GPU:0' or '/job:localhost/replica:0/task:0/device:GPU:0'; None if unparsable."""
    try:
        spec = tf.DeviceSpec.from_string(name if name.startswith("/") else f"/device:{name}")
    except ValueError:
        return None
    return (spec.device_type or "").upper(), spec.device_index if spec.device_index is not None else 0


def _short_name(name: str) -> str:
    return "/" + name.rsplit("device:", 1)[-1].lower()


# Images per Python decode call for augmented views (each then goes through the augmentation layers on its
# own). One call per image cost tf.data ~0.3 ms of CPU per 500x375 JPEG at 100 px on top of the decoding
# (1.24-1.35 against 0.97-1.13 ms in chunks of 16; load_array alone 0.93 ms; `python -m bench.techniques`).
# Clean views decode a whole batch per call (see image_dataset).
DECODE_CHUNK = 16
# TensorFlow wraps a numpy array returned by numpy_function without copying it when its data starts on this
# boundary (Eigen's alignment); otherwise it copies it into its own allocator.
TENSOR_ALIGN = 64


def _aligned_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array whose data starts on a ``TENSOR_ALIGN``-byte boundary."""
    n = int(np.prod(shape))
    buf = np.zeros(n + TENSOR_ALIGN, np.uint8)
    start = -buf.ctypes.data % TENSOR_ALIGN
    return buf[start:start + n].reshape(shape)


def image_dataset(
    paths: Sequence[str], size: int, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
    augment: AugmentSpec | None = None, seeds: np.ndarray | None = None, rounds: Sequence[int] | None = None,
):
    """tf.data pipeline of (positions, images (b, size, size, 3) in 0-255, reasons) batches.

    Decoding runs in parallel workers. Without augmentation each worker decodes a whole batch into one
    uint8 array; with it, views are decoded ``DECODE_CHUNK`` at a time and come out as float32, views with
    ``rounds[i] > 0`` through the augmentation layers with the stateless seed ``seeds[i]``.
    ``reasons[i] == b''`` where decoding worked.
    """
    import tensorflow as tf  # noqa: PLC0415

    path_list = list(paths)
    n = len(path_list)
    rounds_t = tf.constant(np.asarray(rounds if rounds is not None else np.zeros(n), np.int32))
    seeds_t = tf.constant(np.asarray(seeds if seeds is not None else np.zeros((n, 2)), np.int32).reshape(n, 2))
    augmenter = make_augmenter(augment) if augment is not None and augment.enabled else None

    def decode_chunk(positions):
        imgs = _aligned_zeros((len(positions), size, size, 3))
        reasons = []
        for k, i in enumerate(positions):
            try:
                imgs[k] = load_array(path_list[int(i)], size, max_pixels)
                reasons.append(b"")
            except DecodeError as err:
                reasons.append(err.reason.encode("utf-8", "replace"))
            except Exception as err:  # noqa: BLE001  (one odd file must never end a long run)
                reasons.append(f"corrupt: {type(err).__name__}: {err}".encode("utf-8", "replace"))
        return imgs, np.array(reasons, dtype=object)

    def tf_decode(positions):
        imgs, reasons = tf.numpy_function(decode_chunk, [positions], [tf.uint8, tf.string], stateful=False)
        return positions, tf.ensure_shape(imgs, (None, size, size, 3)), tf.ensure_shape(reasons, (None,))

    def augmented(i, img, reason):
        img = tf.cast(img, tf.float32)
        return i, tf.cond(rounds_t[i] > 0, lambda: augmenter(img, seeds_t[i]), lambda: img), reason

    # No autotuning thread: at the end of a run it held up the iterator's destruction by up to 10 s (4 of 6
    # 1,024-image runs here, TF 2.21), nearly doubling a 100 px extraction. Without it AUTOTUNE decodes on
    # min(16, schedulable cores) threads, as fast as autotuned (`python -m bench.techniques`).
    options = tf.data.Options()
    options.autotune.enabled = False
    # Clean views: the batch is the decoder's own (aligned) array, so tf.data puts no batch into TensorFlow's
    # CPU allocator, whose pool the backbone's activations reuse call after call; the backbone casts to
    # float32 in its own graph. Batches made there by the decode threads, at moments that vary with timing,
    # moved where the activations went, and at 299 px some runs (1 in 34 on a quiet machine, more under load)
    # touched ~340 MB more of the pool for good (README: Peak RSS). Augmented views go one by one.
    ds = (tf.data.Dataset.range(n).batch(batch_size if augmenter is None else DECODE_CHUNK)
          .map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    if augmenter is not None:
        ds = ds.unbatch().map(augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    return ds.prefetch(2).with_options(options)


def embed(
    paths: Sequence[str], model, size: int, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
    strategy=None, **augment_kw: Any,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Yield (positions, features, reasons) per batch; ``reasons[i] == ''`` where decoding worked.

    Decoding overlaps the backbone's compute. ``features`` rows of failed images are meaningless
    and must be dropped by the caller. ``augment_kw`` goes to :func:`image_dataset`. With a
    ``strategy`` (see :func:`replica_strategy`) each batch is cut into one contiguous slice per
    replica, run on all of them at once, and put back together in order. Either way the backbone
    is traced with fused batch normalization (:func:`extract.backbones.inference_call`).
    """
    import tensorflow as tf  # noqa: PLC0415

    ds = image_dataset(paths, size, batch_size, max_pixels, **augment_kw)
    if strategy is None:
        infer = backbone_function(model, ds.element_spec[1].dtype)
    else:
        replicas = strategy.num_replicas_in_sync
        replica_call = inference_call(model)
        step = tf.function(lambda x: strategy.run(replica_call, args=(x,)), reduce_retracing=True)

        def infer(imgs):
            bounds = np.linspace(0, int(imgs.shape[0]), replicas + 1).astype(int)
            sliced = strategy.experimental_distribute_values_from_function(
                lambda ctx: imgs[bounds[ctx.replica_id_in_sync_group]:bounds[ctx.replica_id_in_sync_group + 1]])
            return np.concatenate([t.numpy() for t in strategy.experimental_local_results(step(sliced))])
    try:
        for idx, imgs, reasons in ds:
            feats = np.asarray(infer(imgs))
            yield idx.numpy(), feats, [r.decode("utf-8", "replace") for r in reasons.numpy()]
    except tf.errors.ResourceExhaustedError as err:  # a batch of decoded images, or the backbone on it (a GPU)
        said = (err.message or str(err)).strip().splitlines()[0]
        said = said.split("MemoryError: ", 1)[-1][:300]  # numpy's "Unable to allocate ..." without tf.data's prefix
        raise MemoryError(f"out of memory with BATCH={batch_size} at SIZE={size} ({said}): lower BATCH= (or SIZE=). "
                          f"The parts flushed so far are kept: the same command resumes.") from None


SHOWN_SKIPS = 5  # skipped files named at the end of a run; the cache keeps every one


def _summarise_skips(reasons: list[str]) -> str:
    counts = Counter(r.split(":", 1)[0] for r in reasons)
    return ", ".join(f"{n} {cat}" for cat, n in counts.most_common())


@dataclass(frozen=True)
class View:
    """One row to extract: an image and its round (0 = the clean view)."""

    item: Item
    round: int = 0


@dataclass
class Plan:
    """What an extract run has to do, given what is on disk already."""

    views: list[View]  # still to extract
    old: Path | None  # complete cache whose matching rows are kept
    message: str = ""
    up_to_date: bool = False


def view_unit(config: dict[str, Any]) -> str:
    """What extraction counts: images, or views when augmented rounds add several per training image."""
    return "view" if config["augmentation"].get("rounds", 0) else "image"


def wanted_rounds(found: Discovery, config: dict[str, Any]) -> dict[str, int]:
    """Rows wanted per image: training images get 1 + ROUNDS views, others the clean view only."""
    k = int(config["augmentation"].get("rounds", 0))
    return {it.relpath: (1 + k if it.split == "train" else 1) for it in found.items}


def plan_extraction(path: Path, config: dict[str, Any], found: Discovery, fingerprint: str,
                    max_pixels: int = DEFAULT_MAX_PIXELS, inputs: cache_mod.Inputs | None = None,
                    siblings: bool = True) -> Plan:
    """Decide between up to date, resume, incremental update and a fresh run; refuse a clash.

    Rows are reused from ``path`` when it holds the same config (ROUNDS aside) or, when ``path``
    does not exist yet and ``siblings`` (OVERWRITE=1 turns it off), from a complete sibling cache of the
    same image folder that differs only in ROUNDS. A cache of another
    folder (a data set of the same name elsewhere) is never updated into this one. Images skipped for
    their size are retried when ``max_pixels`` is above the limit they were skipped under. With ``inputs``
    (this run's LABELS, TEST, ID_COL, LABEL_COL), a cache made with other ones is not updated when its rows
    would change (:func:`_changed_inputs`); the same rows under moved paths rewrite the cache to record them.
    """
    key, base = cache_mod.config_key(config), cache_mod.base_key(config)
    rounds = wanted_rounds(found, config)
    views = [View(it, r) for it in found.items for r in range(rounds[it.relpath])]
    have: dict[tuple[str, int], str] = {}
    old, messages = None, []
    source = path if path.exists() else (cache_mod.find_sibling(path, config, Path(found.root)) if siblings
                                         else None)
    if source is not None:
        try:
            c = cache_mod.FeatureCache(source, role="OUT")
        except cache_mod.CacheError as err:
            raise cache_mod.CacheError(f"{err}\nPass OVERWRITE=1 to replace it.") from None
        with c:
            if cache_mod.base_key(c.config) != base:
                differ = "; ".join(cache_mod.config_differences(c.config, config)) or "the config hash differs"
                raise cache_mod.CacheError(
                    f"OUT={path} holds features of another config ({differ}). Choose another OUT= or pass "
                    f"OVERWRITE=1."
                )
            same_data = c.fingerprint == fingerprint
            if not same_data and c.data_root is not None and c.data_root != Path(found.root):
                raise cache_mod.CacheError(
                    f"{source} holds features of {c.data_root}, not of DATA={found.root} (another folder of "
                    f"the same name?). Pass OUT=<another file.h5> to keep both caches, or OVERWRITE=1 to "
                    f"replace it.")
            skipped_before = c.skipped()
            have = dict(zip(zip(c.column("path"), c.column("round").tolist()), c.column("stamp")))
            if inputs is not None and not same_data:
                refusal = _changed_inputs(c, inputs, _row_changes(have, skipped_before, found))
                if refusal:
                    raise cache_mod.CacheError(f"{source} {refusal}")
            new_paths = inputs is not None and c.inputs is not None and c.inputs != inputs
            too_big = [p for p, reason in skipped_before if reason.startswith("too many pixels")]
            retry_big = too_big and max_pixels > int(c.attrs.get("max_pixels", DEFAULT_MAX_PIXELS))
            if c.complete and same_data and c.attrs.get("config_key") == key and not retry_big and not new_paths:
                return Plan([], path, f"up to date: {path} ({c.n_rows:,} rows, {len(skipped_before):,} skipped); "
                                      f"nothing to do", up_to_date=True)
            old_k = c.config["augmentation"].get("rounds", 0)
            new_k = config["augmentation"]["rounds"]
            if source == path and new_k < old_k:  # an explicit OUT=: a default name differs with ROUNDS
                dropped = int((c.column("round") > new_k).sum())
                rounds_gone = f"round {old_k}" if new_k + 1 == old_k else f"rounds {new_k + 1}-{old_k}"
                raise cache_mod.CacheError(
                    f"OUT={path} holds ROUNDS={old_k}: ROUNDS={new_k} would delete its {dropped:,} rows of "
                    f"{rounds_gone}. Choose another OUT= (this file is kept) or pass OVERWRITE=1 to replace it; "
                    f"to train on fewer views, keep it and use TRAIN_ROUNDS=clean.")
            if new_paths and same_data:
                messages.append(f"same images, other paths ({_describe_inputs(c.inputs)} → "
                                f"{_describe_inputs(inputs)}): rewriting {source.name} to record them")
        old = source
        if source != path:
            messages.append(f"reusing the rows of {source.name} (same config with ROUNDS={old_k})")
        # A skip records no file stamp, so a file skipped last time is decoded again whether or not it was
        # replaced: say so, or "0 modified" would be followed by more extracted views than added images.
        now = {it.relpath for it in found.items}
        retried = sum(p in now for p in {p for p, _ in skipped_before})
        retry_note = (f"; {retried:,} file{'s' if retried > 1 else ''} skipped last time "
                      f"{'are' if retried > 1 else 'is'} tried again" if retried else "")
        if old_k != config["augmentation"]["rounds"]:
            messages.append(f"ROUNDS {old_k} → {config['augmentation']['rounds']}: only missing rounds are extracted"
                            + (retry_note if same_data else ""))
        if retry_big:
            messages.append(f"MAX_PIXELS={max_pixels:,} is above the limit {len(too_big):,} images were skipped under: "
                            f"retrying them")
        if not same_data:
            changes = _row_changes(have, skipped_before, found)
            messages.append(f"data changed since {source.name} was made: {changes}"
                            + ("" if changes else " (labels or splits changed: the rows are relabelled)")
                            + retry_note)
    parts = cache_mod.parts_dir(path)
    if parts.is_dir():
        parts_key = cache_mod.parts_config_key(parts)
        if parts_key not in (None, key):
            raise cache_mod.CacheError(
                f"{parts} holds an interrupted extraction of another config. Choose another OUT= or pass OVERWRITE=1."
            )
        have.update(cache_mod.done_in_parts(parts))
    todo = [v for v in views if have.get((v.item.relpath, v.round)) != v.item.stamp]
    if parts.is_dir():
        messages.append(f"resuming: {len(views) - len(todo):,} of {len(views):,} done")
    return Plan(todo, old, "\n".join(messages))


class RowChanges(NamedTuple):
    """Images added, removed (gone from DATA) and modified since a cache was made, and cached images that
    discovery now skips (e.g. their labels.csv row was deleted): ``now_skipped`` gives one (path, reason)."""

    added: int
    removed: int
    modified: int
    now_skipped: int
    example: tuple[str, str] | None = None

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.modified or self.now_skipped)

    def __str__(self) -> str:
        said = f"{self.added:,} added, {self.removed:,} removed, {self.modified:,} modified"
        if self.now_skipped:
            path, reason = self.example
            said += f", {self.now_skipped:,} cached before and now skipped (e.g. {path}: {reason})"
        return said


def _row_changes(have: dict[tuple[str, int], str], skipped_before: list[tuple[str, str]],
                 found: Discovery) -> RowChanges:
    """What changed between a cache's rows and skips and what discovery found now."""
    current = {it.relpath: it.stamp for it in found.items}
    given = set(current) | {s.relpath for s in found.skipped}
    cached = {p for p, _ in have}
    old_paths = cached | {p for p, _ in skipped_before}
    modified = sum(p in old_paths and (p, 0) in have and have[(p, 0)] != st for p, st in current.items())
    now_skipped = [(s.relpath, s.reason) for s in found.skipped if s.relpath in cached]
    return RowChanges(len(given - old_paths), len(old_paths - given), modified, len(now_skipped),
                      now_skipped[0] if now_skipped else None)


def _describe_inputs(inputs: cache_mod.Inputs) -> str:
    return " ".join(f"{var}={value}" for var, value in zip(INPUT_VARS, _input_values(inputs)) if value is not None) \
        or "no LABELS= or TEST="


def _input_values(inputs: cache_mod.Inputs) -> tuple[Any, ...]:
    return inputs.labels_csv, inputs.test_root, inputs.id_col, inputs.label_col


INPUT_VARS = ("LABELS", "TEST", "ID_COL", "LABEL_COL")


def _changed_inputs(c: cache_mod.FeatureCache, inputs: cache_mod.Inputs, changes: RowChanges) -> str | None:
    """Why a cache made with other LABELS/TEST/ID_COL/LABEL_COL than ``inputs`` must not be updated, or None.

    Called when the rows would change: a forgotten TEST= would drop the test rows and a forgotten or other
    LABELS= (or column) would relabel or drop rows, so the rows of the earlier inputs are never replaced silently.
    Adding a TEST= folder to a cache made without one only adds rows. A file written before the inputs were
    recorded tells only by its unlabelled test rows that it had a TEST= folder.
    """
    counts = str(changes)
    fix = ("; or, to make a cache of this run's inputs instead, choose another OUT= (keeps both) or pass "
           "OVERWRITE=1 (replaces it and extracts every image again).")
    recorded = c.inputs
    if recorded is None:
        n_test = int(((c.column("split") == "test") & (c.column("label") < 0)).sum())
        if n_test and inputs.test_root is None:
            return (f"holds {n_test:,} unlabelled test rows (a TEST= folder; this older cache does not record "
                    f"which), but this run has no TEST=: updating it would drop them ({counts}). Pass the same "
                    f"TEST= again" + fix)
        return None
    differ = []
    for var, was, now in zip(INPUT_VARS, _input_values(recorded), _input_values(inputs)):
        if was == now or (var == "TEST" and was is None):
            continue
        differ.append((var, was, now))
    if not differ:
        return None
    said = "; ".join(f"{var}={was}, " + (f"this run has {var}={now}" if now is not None else f"this run has no {var}=")
                     if was is not None else f"no {var}=, this run has {var}={now}" for var, was, now in differ)
    again = " ".join(f"{var}={was}" for var, was, _ in differ if was is not None)
    unset = " ".join(f"{var}=" for var, was, _ in differ if was is None)
    todo = " and ".join(([f"pass {again} again"] if again else []) + ([f"leave {unset} unset"] if unset else []))
    return (f"was extracted with other inputs ({said}): updating it would change its rows ({counts}). To update "
            f"it, {todo}" + fix)


def run_inputs(found: Discovery, labels: str | os.PathLike | None,
               test: str | os.PathLike | None) -> cache_mod.Inputs:
    """This run's LABELS/TEST (absolute) and csv columns (as discovery used them), as a cache records them."""
    test_root = Path(test).expanduser().resolve() if test is not None else None
    if labels is None:
        return cache_mod.Inputs(test_root=test_root)
    id_col, label_col = found.columns
    return cache_mod.Inputs(Path(labels).expanduser().resolve(), test_root, id_col, label_col)


FEW_CLASSES = 10  # up to this many classes the start of a run lists each one's images per split


def class_summary(found: Discovery, val: float) -> str:
    """What discovery found, said at the start of a run: the classes and their images per split (a compact
    summary for many classes), so a DATA= one level too high (classes 'charts' and 'charts_v2') shows at once."""
    counts = Counter((it.label, it.split) for it in found.items)
    names = found.class_names
    n_unlabelled = sum(it.label < 0 for it in found.items)
    head = f"found {len(found.items) - n_unlabelled:,} images in {len(names)} classes"  # the unlabelled: below
    if len(names) <= FEW_CLASSES:
        text = f"{head} (images train/val/test): " + ", ".join(
            f"{name} {counts[(i, 'train')]}/{counts[(i, 'val')]}/{counts[(i, 'test')]}" for i, name in enumerate(names))
    else:
        train = [counts[(i, "train")] for i in range(len(names))]
        small, large = int(np.argmin(train)), int(np.argmax(train))
        text = (f"{head}: {', '.join(names[:6])}, ... {names[-1]}; training images per class: "
                f"{train[small]:,} ({names[small]}) to {train[large]:,} ({names[large]})")
        no_val = [name for i, name in enumerate(names) if not counts[(i, "val")]]
        if val > 0 and no_val:
            text += (f"; {len(no_val)} class{'es have' if len(no_val) > 1 else ' has'} no val image: "
                     + ", ".join(no_val[:5]) + (", ..." if len(no_val) > 5 else ""))
    if n_unlabelled:
        text += f"; and {n_unlabelled:,} unlabelled test images (TEST=)"
    return text


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
    batch_size: int | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    augment: str = "none",
    rounds: int = 0,
    overwrite: bool = False,
    flush_rows: int = cache_mod.DEFAULT_FLUSH_ROWS,
    devices: Sequence[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = _log,
) -> ExtractResult:
    """Extract bottleneck features of every image under ``data`` into an HDF5 cache.

    Returns an :class:`ExtractResult` whose ``path`` is the cache file. A complete cache with the
    same config and data is reused without work (``up_to_date=True``); an interrupted run is
    resumed; a changed data set is updated incrementally (only added or modified images are
    extracted). ``batch_size`` defaults to :func:`default_batch_size` of the input size. Rows are
    flushed every ``flush_rows`` rows. ``devices`` get one backbone replica each in this process
    (``tf.distribute.MirroredStrategy``); ``workers=K`` runs K processes instead, one per GPU or each with a
    share of the CPU cores (:mod:`extract.workers`). By default (neither given) a machine with several GPUs
    gets one process per GPU, any other one process. ``augment`` (a preset or
    ``'key=value,...'``) with ``rounds=K`` adds K augmented views of every training image.
    """
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"BATCH={batch_size} must be at least 1 image per backbone call (or leave it unset)")
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError("a WORKERS= worker process re-ran the script that started it (Python's spawn imports "
                           "the main script): call extract_features under `if __name__ == \"__main__\":`")
    if int(max_pixels) < 1:
        raise ValueError(f"MAX_PIXELS={max_pixels} must be at least 1 pixel (default {DEFAULT_MAX_PIXELS:,})")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"WORKERS={workers} must be at least 1 process (1: extract in this process)")
    if int(flush_rows) < 1:  # PartsWriter would flush every row: refused like BATCH=0 and WORKERS=0
        raise ValueError(f"FLUSH_ROWS={flush_rows} must be at least 1 row per flushed part "
                         f"(default {cache_mod.DEFAULT_FLUSH_ROWS})")
    if workers is not None and int(workers) > 1 and devices:
        raise ValueError("DEVICES= (one process, a replica per device) and WORKERS= (one process per device) are "
                         "two ways to use several devices: give one of them")
    # The settings first: a typo or a missing weights file stops before a long walk of the image folder.
    config = make_config(backbone=backbone, size=size, pooling=pooling, weights=weights, dtype=dtype,
                         precision=precision, seed=seed, val=val, augment=augment, rounds=rounds)
    found = discover(data, labels=labels, test=test, val=val, seed=seed, id_col=id_col, label_col=label_col)
    for note in found.notes:
        log(f"note: {note}")
    log(class_summary(found, val))
    inputs = run_inputs(found, labels, test)
    batch_size = int(batch_size) if batch_size is not None else default_batch_size(config["size"])
    path = (Path(out).expanduser() if out is not None
            else cache_mod.default_path(found.name, config, Path(cache_dir).expanduser()))
    fingerprint = found.fingerprint()
    check_out(path, Path(found.root))
    with cache_mod.CacheLock(path) as lock:
        if lock.took_over_from:
            log(f"note: took over a stale lock left by pid {lock.took_over_from}, which is no longer running")
        if overwrite:
            path.unlink(missing_ok=True)
            shutil.rmtree(cache_mod.parts_dir(path), ignore_errors=True)
        plan = plan_extraction(path, config, found, fingerprint, max_pixels, inputs, siblings=not overwrite)
        if plan.message:
            log(plan.message)
        if plan.up_to_date:
            # The cache just confirmed is the one a following `make train-head` without FEATURES= picks (newest);
            # a file we may not touch (another owner's) stays usable as it is.
            with contextlib.suppress(OSError):
                os.utime(path)
            with cache_mod.FeatureCache(path) as c:
                return ExtractResult(path, c.n_rows, len(c.skipped()), 0.0, up_to_date=True)
        if config["weights"]["kind"] == "none":
            log(f"WARNING: {RANDOM_WEIGHTS_WARNING}")
        unit = view_unit(config)
        if unit == "view" and plan.views:  # the bar and the rate count views, not images
            k = config["augmentation"]["rounds"]
            log(f"{len(plan.views):,} views to extract (with ROUNDS={k} a training image has {k + 1}: its clean "
                f"view and {k} augmented ones; other images their clean view)")
        start = time.perf_counter()
        pool, strategy, model, kept_shape = None, None, None, None
        n_workers = (int(workers) if workers is not None else default_workers(devices)) if plan.views else 0
        n_batches = -(-len(plan.views) // batch_size)
        if n_workers > n_batches:  # a worker without a batch would only load TensorFlow and a backbone
            asked = f"WORKERS={n_workers}" if workers is not None else f"{n_workers} GPUs (one worker each)"
            log(f"{asked}: only {len(plan.views):,} image{'s' if len(plan.views) > 1 else ''} to extract, "
                f"{n_batches} batch{'es' if n_batches > 1 else ''} of BATCH={batch_size}; "
                + ("running it in this process" if n_batches == 1 else f"running {n_batches} workers"))
            n_workers = n_batches
        if n_workers > 1:
            pool = WorkerPool(n_workers, config, batch_size, max_pixels, log)
        elif plan.views:
            strategy = replica_strategy(devices)
            if strategy is not None:
                n = strategy.num_replicas_in_sync
                log(f"{n} replica{'s' if n > 1 else ''}: {', '.join(strategy.extended.worker_devices)}")
            model = load_backbone(config, strategy)
        else:
            kept_shape = _old_feature_shape(plan.old) or cache_mod.parts_feature_shape(cache_mod.parts_dir(path))
            if kept_shape is None:
                raise cache_mod.CacheError(
                    f"nothing to assemble for {path}: no rows were extracted (every image skipped?)")
        writer = cache_mod.PartsWriter(cache_mod.parts_dir(path), config, flush_rows)
        compute_start = time.perf_counter()
        skip_reasons, zero_rows = run_extraction(plan.views, model, writer, config, batch_size=batch_size,
                                                 max_pixels=max_pixels, progress=progress, strategy=strategy,
                                                 pool=pool)
        feature_shape = (tuple(int(d) for d in model.output_shape[1:]) if model is not None
                         else pool.feature_shape if pool is not None else kept_shape)
        # Views extracted in this run per second of decode+backbone+write (backbone build excluded).
        throughput = len(plan.views) / (time.perf_counter() - compute_start) if plan.views else None
        recorded_rate = _rate_to_record(plan.old, throughput, len(plan.views))
        rows = _assemble_or_explain(
            path, current={it.relpath: cache_mod.RowInfo(it.label, it.split, it.stamp) for it in found.items},
            wanted_rounds=wanted_rounds(found, config), skipped=[(s.relpath, s.reason) for s in found.skipped],
            old=plan.old, config=config, class_names=found.class_names, fingerprint=fingerprint,
            feature_shape=feature_shape, dtype=dtype, dataset_name=found.name, data_root=found.root,
            versions=_versions(), images_per_second=recorded_rate, max_pixels=max_pixels, inputs=inputs,
        )
        seconds = time.perf_counter() - start
    with cache_mod.FeatureCache(path) as c:
        skipped_files = c.skipped()
        all_skips = [r for _, r in skipped_files]
        trained = set(c.column("label")[c.column("split") == "train"].tolist())
    unusable = [i for i in range(len(found.class_names)) if i not in trained]
    if unusable:  # discovery found images of the class, but decoding skipped them (or they went to val)
        log(_untrained_warning(found, unusable, skipped_files, labels))
    n_given = len(found.items) + len(found.skipped)
    if all_skips:
        log(f"{len(all_skips):,} of {n_given:,} images skipped ({_summarise_skips(all_skips)}); "
            f"reasons are stored in the cache (`make verify` lists them)")
        for rel, reason in sorted(skipped_files)[:SHOWN_SKIPS]:
            log(f"  skipped {rel}: {reason}")
        if len(skipped_files) > SHOWN_SKIPS:
            log(f"  and {len(skipped_files) - SHOWN_SKIPS:,} more: `make verify FEATURES={path} ALL=1` lists every one")
    else:
        log(f"0 of {n_given:,} images skipped")
    if zero_rows:  # no head can tell such rows apart (make verify flags them too)
        log(f"WARNING: {zero_rows:,} of the {len(plan.views) - len(skip_reasons):,} rows extracted now have all-zero "
            f"features, so heads cannot tell them apart: "
            + (f"DTYPE={config['dtype']} may have rounded tiny features to 0 (DTYPE=float32 keeps them); "
               if config["dtype"] == "float16" else "") + "check WEIGHTS= (random weights can give tiny features)")
    tried = f" of {len(plan.views):,}" if skip_reasons else ""  # the rest are the skipped images' views
    log(f"extracted {len(plan.views) - len(skip_reasons):,}{tried} {unit}s in {seconds:,.1f} s "
        f"({len(plan.views) / max(seconds, 1e-9):,.1f} {unit}s/s"
        + (f"; {throughput:,.1f} {unit}s/s once the backbone was built" if throughput else "")
        + f"); {rows:,} rows in the cache")
    log(f"wrote {path} ({path.stat().st_size / 1e6:,.1f} MB)")
    return ExtractResult(path, rows, len(all_skips), seconds,
                         worker_peak_rss_mb=tuple(pool.peak_rss_mb) if pool is not None else ())


def _untrained_warning(found: Discovery, unusable: list[int], skipped_files: list[tuple[str, str]],
                       labels: str | os.PathLike | None) -> str:
    """The WARNING for classes with no training row, naming their skipped files and the fix for the layout."""
    names = [found.class_names[i] for i in unusable]
    label_of, wanted = {it.relpath: it.label for it in found.items}, set(unusable)
    own = [(p, r) for p, r in skipped_files if label_of.get(p) in wanted]
    has = "1 class has" if len(names) == 1 else f"{len(names)} classes have"
    them = "it" if len(names) == 1 else "them"
    files = (" Skipped: " + "; ".join(f"{p} ({r})" for p, r in own[:3])
             + (f"; and {len(own) - 3:,} more" if len(own) > 3 else "") + ".") if own else ""
    if labels is not None:
        fix = f"Fix those images or remove their rows from {Path(labels).name}"
    else:
        fix = "Fix those images or remove the class folder" + ("s" if len(names) > 1 else "")
    return (f"WARNING: {has} no training row (images skipped, or all in val): {', '.join(names[:5])}"
            + (", ..." if len(names) > 5 else "") + f"; heads cannot learn {them}.{files} {fix}, then rerun "
            f"(`make verify` lists every skipped file and why).")


def check_out(path: Path, data_root: Path) -> None:
    """Refuse a cache path inside the image folder, or a file there that is not a cache (OVERWRITE=1 included)."""
    if data_root in path.resolve().parents:
        raise DataError(f"OUT={path} is inside DATA={data_root}: the cache would be taken for an image of the data "
                        f"set. Put it elsewhere, e.g. OUT={cache_mod.DEFAULT_DIR}/{path.name}")
    if not cache_mod.replaceable(path):
        raise cache_mod.CacheError(f"OUT={path} exists and is not a headswap cache; headswap replaces only its own "
                                   f"caches, even with OVERWRITE=1. Choose another OUT= (a new .h5 file)")


def _assemble_or_explain(path: Path, **kwargs: Any) -> int:
    try:
        return cache_mod.assemble(path, **kwargs)
    except OSError as err:
        raise cache_mod.CacheError(
            f"writing {path} failed: {err}. The extracted rows are kept in {cache_mod.parts_dir(path)}; fix the "
            f"cause (e.g. free disk space) and rerun the same command to finish."
        ) from err


def _rate_to_record(old: Path | None, rate: float | None, views: int) -> float | None:
    """The images/s the cache records: this run's ``rate`` over its ``views``, unless it updated ``old`` (a cache
    with a recorded rate) and extracted fewer views than ``old`` holds (rows + skipped): then ``old``'s rate.

    A small incremental update is no measure of speed (a few batches, warm-up included: 4 img/s where the
    full run made 31), so the rate of the run that extracted the cache stays until a run as large replaces it.
    """
    if old is None or not old.exists():
        return rate
    with cache_mod.FeatureCache(old) as c:
        kept = c.attrs.get("images_per_second")
        held = c.n_rows + len(c.skipped())
    if kept is None or (rate is not None and views >= held):
        return rate
    return float(kept)


def _old_feature_shape(old: Path | None) -> tuple[int, ...] | None:
    if old is None:
        return None
    with cache_mod.FeatureCache(old) as c:
        return c.feature_shape


def run_extraction(
    views: list[View],
    model,
    writer: cache_mod.CacheWriter,
    config: dict[str, Any],
    *,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    strategy=None,
    pool=None,
) -> tuple[list[str], int]:
    """Feed every view through ``model`` (or the worker processes of ``pool``) into ``writer``; record each
    failure with its reason.

    Returns the skip reasons and how many rows are all zero once stored in the cache's DTYPE. A write error
    becomes a :class:`CacheError` saying how to resume.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    skip_reasons: list[str] = []
    zero_rows = 0
    if not views:
        return skip_reasons, zero_rows
    bar = tqdm(total=len(views), unit="img" if view_unit(config) == "image" else "view", disable=not progress,
               desc="extract", dynamic_ncols=True)
    seed = config["augmentation"]["seed"]
    augment = dict(augment=augment_spec(config), rounds=[v.round for v in views],
                   seeds=np.stack([view_seed(seed, v.item.relpath, v.round) for v in views]))
    try:
        paths = [v.item.abspath for v in views]
        batches = (pool.embed(paths, **augment) if pool is not None
                   else embed(paths, model, config["size"], batch_size, max_pixels, strategy=strategy, **augment))
        for idx, feats, reasons in batches:
            batch = [views[i] for i in idx]
            ok = [k for k, r in enumerate(reasons) if not r]
            for k, r in enumerate(reasons):
                if r:
                    writer.skip(batch[k].item.relpath, r)
                    skip_reasons.append(r)
            if ok:
                rows = [batch[k] for k in ok]
                # As the cache stores them: parts take half the disk in float16, and all-zero rows are counted
                stored = np.asarray(feats[ok]).astype(config["dtype"])
                zero_rows += int((stored.reshape(len(ok), -1) == 0).all(axis=1).sum())
                writer.write(cache_mod.Batch(
                    features=stored, label=np.array([v.item.label for v in rows]),
                    path=[v.item.relpath for v in rows], split=[v.item.split for v in rows],
                    round=np.array([v.round for v in rows], np.int16), stamp=[v.item.stamp for v in rows],
                ))
            bar.update(len(reasons))
        writer.close(complete=True)
    except OSError as err:
        raise cache_mod.CacheError(
            f"writing features failed: {err}. The rows flushed so far are kept in "
            f"{getattr(writer, 'folder', 'the parts folder')}; fix the cause (e.g. free disk space) and rerun "
            f"the same command to resume."
        ) from err
    finally:
        bar.close()
    return skip_reasons, zero_rows
