"""The HDF5 feature cache: the one module that knows its schema (documented in features_cache/README.md).

Writers (:class:`HDF5Writer`, and :class:`MemoryWriter` for tests) share one small interface:
``write(batch)``, ``skip(path, reason)``, ``close(complete)``. Readers use :class:`FeatureCache`.
Nothing here imports TensorFlow, so scikit-learn heads can read caches without it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import h5py
import numpy as np

FORMAT = "headswap-features"
FORMAT_VERSION = 1
DEFAULT_DIR = Path("features_cache")
CHUNK_ROWS = 256
SPLITS = ("train", "val", "test")
_STR = h5py.string_dtype("utf-8")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_key(config: dict[str, Any]) -> str:
    """Short hash of everything that changes the features; two configs share a file only if equal."""
    keyed = {k: v for k, v in config.items() if k not in ("batch_size",)}
    return hashlib.sha256(_canonical(keyed).encode()).hexdigest()[:10]


def default_path(dataset_name: str, config: dict[str, Any], cache_dir: str | os.PathLike = DEFAULT_DIR) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset_name) or "data"
    bb = config["backbone"]["name"]
    return Path(cache_dir) / f"{safe}-{bb}-{config['size']}-{config['pooling']}-{config_key(config)}.h5"


@dataclass
class Batch:
    """Rows to append. ``features`` has shape (n, *feature_shape)."""

    features: np.ndarray
    label: np.ndarray
    path: list[str]
    split: list[str]
    round: np.ndarray


class CacheWriter(Protocol):
    def write(self, batch: Batch) -> None: ...
    def skip(self, path: str, reason: str) -> None: ...
    def close(self, complete: bool) -> None: ...


def _encode(paths: list[str]) -> list[bytes]:
    return [os.fsencode(p) for p in paths]  # keeps non-UTF-8 file names byte-exact


class HDF5Writer:
    """Appends rows to a new cache file, flushed per batch; ``complete`` is set by ``close(True)`` last."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        config: dict[str, Any],
        class_names: list[str],
        fingerprint: str,
        feature_shape: tuple[int, ...],
        dtype: str,
        dataset_name: str = "",
        data_root: str = "",
        versions: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = h5py.File(self.path, "w")
        f = self._f
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["complete"] = False
        f.attrs["config"] = _canonical(config)
        f.attrs["config_key"] = config_key(config)
        f.attrs["class_names"] = json.dumps(class_names)
        f.attrs["dataset_fingerprint"] = fingerprint
        f.attrs["dataset_name"] = dataset_name
        f.attrs["data_root"] = data_root
        f.attrs["versions"] = json.dumps(versions or {})
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        rows = min(CHUNK_ROWS, max(1, (4 << 20) // (int(np.prod(feature_shape)) * np.dtype(dtype).itemsize)))
        f.create_dataset("features", shape=(0, *feature_shape), maxshape=(None, *feature_shape),
                         dtype=dtype, chunks=(rows, *feature_shape))
        f.create_dataset("label", shape=(0,), maxshape=(None,), dtype="i4", chunks=(4096,))
        f.create_dataset("round", shape=(0,), maxshape=(None,), dtype="i2", chunks=(4096,))
        f.create_dataset("path", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(4096,))
        f.create_dataset("split", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(4096,))
        g = f.create_group("skipped")
        g.create_dataset("path", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        g.create_dataset("reason", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        self.rows = 0

    @staticmethod
    def _append(ds: h5py.Dataset, values) -> None:
        n = ds.shape[0]
        ds.resize(n + len(values), axis=0)
        ds[n:] = values

    def write(self, batch: Batch) -> None:
        f = self._f
        self._append(f["features"], batch.features.astype(f["features"].dtype, copy=False))
        self._append(f["label"], np.asarray(batch.label, dtype="i4"))
        self._append(f["round"], np.asarray(batch.round, dtype="i2"))
        self._append(f["path"], _encode(batch.path))
        self._append(f["split"], [s.encode() for s in batch.split])
        self.rows += len(batch.path)
        f.flush()

    def skip(self, path: str, reason: str) -> None:
        g = self._f["skipped"]
        self._append(g["path"], _encode([path]))
        self._append(g["reason"], [reason.encode("utf-8", "replace")])

    def close(self, complete: bool) -> None:
        if not self._f.id.valid:
            return
        if complete:
            self._f.flush()
            self._f.attrs["complete"] = True
        self._f.close()


class MemoryWriter:
    """Collects rows in lists; for tests of the extraction logic without a file."""

    def __init__(self, **_: Any):
        self.batches: list[Batch] = []
        self.skipped: list[tuple[str, str]] = []
        self.complete = False

    def write(self, batch: Batch) -> None:
        self.batches.append(batch)

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))

    def close(self, complete: bool) -> None:
        self.complete = complete

    @property
    def features(self) -> np.ndarray:
        return np.concatenate([b.features for b in self.batches])

    @property
    def paths(self) -> list[str]:
        return [p for b in self.batches for p in b.path]


class CacheError(RuntimeError):
    """The cache file cannot be used; the message says why and what to do."""


class FeatureCache:
    """Read-only view of a cache file. Use as a context manager.

    ``X`` arrays are returned as float32 of shape (n_rows, *feature_shape).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"FEATURES={self.path} does not exist. Run `make extract DATA=...` first.")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as err:
            raise CacheError(f"FEATURES={self.path} is not a readable HDF5 file: {err}") from None
        fmt = self._f.attrs.get("format")
        version = self._f.attrs.get("format_version")
        if fmt != FORMAT:
            self._f.close()
            raise CacheError(f"{self.path} is not a headswap feature cache (format={fmt!r}).")
        if version != FORMAT_VERSION:
            self._f.close()
            raise CacheError(
                f"{self.path} has cache format version {version}, this headswap reads version "
                f"{FORMAT_VERSION}. Re-extract it with `make extract`."
            )

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def complete(self) -> bool:
        return bool(self._f.attrs["complete"])

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self._f.attrs["config"])

    @property
    def class_names(self) -> list[str]:
        return json.loads(self._f.attrs["class_names"])

    @property
    def fingerprint(self) -> str:
        return str(self._f.attrs["dataset_fingerprint"])

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._f.attrs.items()}

    @property
    def data_root(self) -> Path | None:
        """Absolute folder that cached ``path`` values are relative to (may no longer exist)."""
        root = self._f.attrs.get("data_root", "")
        return Path(root) if root else None

    @property
    def n_rows(self) -> int:
        return int(self._f["features"].shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self._f["features"].shape[1:])

    def require_complete(self) -> None:
        if not self.complete:
            raise CacheError(
                f"{self.path} is incomplete (its extraction was interrupted or failed). "
                f"Rerun the same `make extract` command to finish it."
            )

    def column(self, name: str) -> np.ndarray:
        ds = self._f[name]
        if ds.dtype == _STR or h5py.check_string_dtype(ds.dtype):
            return np.array(ds.asstr(errors="surrogateescape")[()], dtype=object)
        return ds[()]

    def rows(self, split: str | None = None, rounds: str = "all") -> np.ndarray:
        """Indices of rows in ``split`` (all if None); ``rounds='clean'`` keeps round 0 only."""
        mask = np.ones(self.n_rows, dtype=bool)
        if split is not None:
            mask &= self.column("split") == split
        if rounds == "clean":
            mask &= self.column("round") == 0
        return np.flatnonzero(mask)

    def features(self, index: np.ndarray | None = None) -> np.ndarray:
        ds = self._f["features"]
        if index is None:
            return ds[()].astype(np.float32)
        if len(index) == 0:
            return np.zeros((0, *ds.shape[1:]), np.float32)
        return ds[np.asarray(index)].astype(np.float32)

    def iter_blocks(self, index: np.ndarray, block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices, float32 features) in blocks of at most ``block_rows`` rows."""
        for start in range(0, len(index), block_rows):
            part = index[start:start + block_rows]
            yield part, self.features(part)

    def skipped(self) -> list[tuple[str, str]]:
        g = self._f["skipped"]
        paths = g["path"].asstr(errors="surrogateescape")[()]
        reasons = g["reason"].asstr()[()]
        return list(zip(paths, reasons))


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A few cheap facts about a cache file, for choosing the newest complete one."""
    with FeatureCache(path) as c:
        return {"path": str(path), "complete": c.complete, "rows": c.n_rows, "config": c.config}


def newest_complete(cache_dir: str | os.PathLike = DEFAULT_DIR) -> Path:
    candidates = sorted(Path(cache_dir).glob("*.h5"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in candidates:
        try:
            if read_summary(p)["complete"]:
                return p
        except (CacheError, OSError, KeyError):
            continue
    raise CacheError(
        f"no complete feature cache in {cache_dir}/. Run `make extract DATA=...` first, or pass FEATURES=<file.h5>."
    )
