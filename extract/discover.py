"""Find the images of a data set, their labels and their split.

Two layouts:

* class folders: ``DATA/<class>/<image>``; if ``DATA/train`` and ``DATA/test`` exist they are
  the training set and a labelled test set;
* Kaggle style: ``DATA/<id>.<ext>`` plus a CSV with an id column and a label column.

``TEST=<folder>`` adds unlabelled images (label -1) to the test split.

Every file found is either an :class:`Item` to extract or a :class:`Skip` with a reason;
nothing is dropped silently. Hidden files (``.DS_Store``, ``._x.jpg``) are the one exception.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

TRAIN, VAL, TEST = "train", "val", "test"
SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test"}  # folder names that are not classes
UNLABELLED = -1


class DataError(ValueError):
    """The data set cannot be used as given; the message says how to fix it."""


@dataclass(frozen=True)
class Item:
    """One image to extract. ``relpath`` is relative to its root and stored in the cache."""

    relpath: str
    abspath: str
    label: int
    split: str
    stamp: str = ""  # "size:mtime_ns": a changed stamp means the image must be re-extracted


@dataclass(frozen=True)
class Skip:
    relpath: str
    reason: str


@dataclass
class Discovery:
    name: str
    root: str
    class_names: list[str]
    items: list[Item]
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Hash of what would go into the cache: paths, labels, splits, file sizes and mtimes."""
        h = hashlib.sha256()
        h.update("\0".join(self.class_names).encode())
        for it in self.items:
            h.update(f"\n{it.relpath}\0{it.label}\0{it.split}\0{it.stamp}".encode("utf-8", "surrogateescape"))
        for sk in self.skipped:
            h.update(f"\nskip:{sk.relpath}".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def file_stamp(path: str) -> str:
    """Size and modification time of ``path`` (following symlinks), or why it has none."""
    try:
        st = os.stat(path)
    except OSError as err:
        return f"error:{err.errno}"
    return f"{st.st_size}:{st.st_mtime_ns}"


def split_fraction(relpath: str, seed: int) -> float:
    """A stable number in [0, 1) per image: adding other images never moves this one."""
    digest = hashlib.sha1(f"{seed}:{relpath}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _walk_files(root: Path) -> list[str]:
    """Relative paths of every non-hidden entry below ``root`` that is not a directory, sorted.

    Broken symlinks and symlink loops are returned too, so they can be reported as skipped.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
        for d in list(dirnames):  # a symlinked directory: os.walk lists it but does not descend
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                found.append(os.path.relpath(full, root))
    return sorted(found)


def _check_root(data: Path, what: str = "DATA") -> None:
    if not data.exists():
        raise DataError(f"{what}={data} does not exist. Point {what}= at your image folder.")
    if not data.is_dir():
        raise DataError(f"{what}={data} is not a folder. Point {what}= at your image folder.")


def _assign_splits(rel_labels: list[tuple[str, int]], val: float, seed: int) -> dict[str, str]:
    """Per-image hash split, as TensorFlow's retrain.py did; every class keeps a training image."""
    if not 0.0 <= val < 1.0:
        raise DataError(f"VAL={val} must be in [0, 1)")
    splits = {rel: VAL if split_fraction(rel, seed) < val else TRAIN for rel, _ in rel_labels}
    by_class: dict[int, list[str]] = {}
    for rel, label in rel_labels:
        by_class.setdefault(label, []).append(rel)
    for rels in by_class.values():
        if all(splits[r] == VAL for r in rels):
            splits[max(rels, key=lambda r: split_fraction(r, seed))] = TRAIN
    return splits


def _class_folder_items(root: Path, class_names: list[str] | None, prefix: str = "") -> tuple[
    list[tuple[str, str, int]], list[Skip], list[str]
]:
    """(relpath, abspath, label) for ``root/<class>/<file>``; files elsewhere are skipped."""
    classes = class_names or sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    index = {c: i for i, c in enumerate(classes)}
    rows, skipped = [], []
    for rel in _walk_files(root):
        parts = Path(rel).parts
        shown = prefix + rel
        if len(parts) < 2:
            skipped.append(Skip(shown, "not in a class folder: put it in DATA/<class>/"))
        elif parts[0] not in index:
            raise DataError(
                f"{root}/{parts[0]} is a class folder that the training set does not have; "
                f"training classes are: {', '.join(classes)}"
            )
        else:
            rows.append((shown, str(root / rel), index[parts[0]]))
    return rows, skipped, classes


def _csv_items(
    root: Path, labels_csv: Path, id_col: str | None, label_col: str | None
) -> tuple[list[tuple[str, str, int]], list[Skip], list[str], list[str]]:
    if not labels_csv.is_file():
        raise DataError(f"LABELS={labels_csv} does not exist.")
    table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    cols = list(table.columns)
    id_col = id_col or next((c for c in ("id", "ID", "Id", "image", "filename", "file") if c in cols), None)
    if id_col is None or id_col not in cols:
        raise DataError(
            f"LABELS={labels_csv} has no id column {id_col or 'id'!r}; columns are: {', '.join(cols)}. "
            f"Set ID_COL=."
        )
    if label_col is None:
        others = [c for c in cols if c != id_col]
        label_col = next((c for c in ("breed", "label", "class", "category") if c in others), None)
        if label_col is None and len(others) == 1:
            label_col = others[0]
    if label_col is None or label_col not in cols:
        raise DataError(
            f"LABELS={labels_csv} has no label column {label_col or 'breed/label'!r}; "
            f"columns are: {', '.join(cols)}. Set LABEL_COL=."
        )
    ids = table[id_col].str.strip()
    labels = table[label_col].str.strip()
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise DataError(
            f"{len(dup)} ids appear more than once in {labels_csv.name}, e.g. {', '.join(dup[:3])}. "
            f"Keep one row per image."
        )
    empty = ids[labels == ""]
    if len(empty):
        raise DataError(
            f"{len(empty)} rows of {labels_csv.name} have an empty {label_col!r}, e.g. "
            f"{', '.join(empty.iloc[:3])}. Fill them in or remove those rows."
        )
    notes = []
    files = _walk_files(root)
    by_full = {f: f for f in files}
    by_stem: dict[str, str] = {}
    for f in files:
        by_stem.setdefault(os.path.splitext(f)[0], f)
    root_resolved = root.resolve()
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    rows, missing, used = [], [], set()
    for image_id, label in zip(ids, labels):
        target = (root / image_id).resolve()
        if root_resolved not in target.parents and target != root_resolved:
            raise DataError(f"id {image_id!r} in {labels_csv.name} resolves outside DATA={root}; ids must be relative")
        rel = by_full.get(image_id) or by_stem.get(image_id)
        if rel is None:
            missing.append(image_id)
            continue
        used.add(rel)
        rows.append((rel, str(root / rel), index[label]))
    if missing:
        raise DataError(
            f"{len(missing)} ids in {labels_csv.name} have no image in DATA={root}, e.g. "
            f"{', '.join(missing[:5])}. Fix DATA= or remove those rows."
        )
    extra = [f for f in files if f not in used]
    skipped = [Skip(f, f"not in labels: {labels_csv.name} has no row for it") for f in extra]
    if extra:
        notes.append(f"{len(extra)} files in DATA are not in {labels_csv.name} (listed as skipped), e.g. {extra[0]}")
    return rows, skipped, classes, notes


def discover(
    data: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    val: float = 0.2,
    seed: int = 0,
    id_col: str | None = None,
    label_col: str | None = None,
) -> Discovery:
    """Find every image, its label and its split. Raises :class:`DataError` on unusable input."""
    data = Path(data)
    _check_root(data)
    notes: list[str] = []
    labelled_test: list[tuple[str, str, int]] = []
    if labels is not None:
        rows, skipped, classes, notes = _csv_items(data, Path(labels), id_col, label_col)
        name = data.resolve().parent.name if data.name in ("train", "images") else data.resolve().name
    elif (data / "train").is_dir() and (data / "test").is_dir():
        rows, skipped, classes = _class_folder_items(data / "train", None, prefix="train/")
        labelled_test, test_skipped, _ = _class_folder_items(data / "test", classes, prefix="test/")
        skipped += test_skipped
        skipped += [Skip(rel, "not in train/ or test/: with DATA/train and DATA/test, only those are read")
                    for rel in _walk_files(data) if Path(rel).parts[0] not in ("train", "test")]
        name = data.resolve().name
    else:
        split_named = sorted(d.name for d in data.iterdir() if d.is_dir() and d.name.lower() in SPLIT_FOLDERS)
        if split_named:
            raise DataError(
                f"DATA={data} has split folders ({', '.join(split_named)}/), not class folders. headswap reads "
                f"DATA/<class>/ with VAL= making the validation split, or DATA/train/<class>/ plus "
                f"DATA/test/<class>/ as a labelled test set: point DATA= at the training folder, or arrange "
                f"train/ and test/."
            )
        rows, skipped, classes = _class_folder_items(data, None)
        name = data.resolve().name
    if not rows:
        raise DataError(f"DATA={data} has no images. Use one subfolder per class, or pass LABELS=<csv>.")
    if len(classes) < 2:
        raise DataError(
            f"DATA={data} has only one class ({classes[0]!r}); a classifier needs at least 2."
        )
    counts = Counter(label for _, _, label in rows)
    lonely = [classes[i] for i, n in sorted(counts.items()) if n == 1]
    if lonely:
        msg = f"{len(lonely)} classes have a single image (kept in train, none in val), e.g. {lonely[0]}"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    splits = _assign_splits([(rel, label) for rel, _, label in rows], val, seed)
    items = [Item(rel, path, label, splits[rel], file_stamp(path)) for rel, path, label in rows]
    items += [Item(rel, path, label, TEST, file_stamp(path)) for rel, path, label in labelled_test]
    if test is not None:
        test = Path(test)
        _check_root(test, "TEST")
        items += [Item(f"test/{rel}", str(test / rel), UNLABELLED, TEST, file_stamp(str(test / rel)))
                  for rel in _walk_files(test)]
    return Discovery(name=name, root=str(data.resolve()), class_names=classes, items=items, skipped=skipped,
                     notes=notes)
