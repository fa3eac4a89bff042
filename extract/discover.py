"""Find the images of a data set, their labels and their split.

Two layouts:

* class folders: ``DATA/<class>/<image>``; if ``DATA/train`` and ``DATA/test`` exist they are
  the training set and a labelled test set;
* Kaggle style: ``DATA/<id>.<ext>`` plus a CSV with an id column and a label column.

``TEST=<folder>`` adds unlabelled images (label -1) to the test split; it must not be (or hold) the
training images. A labels CSV whose header has no comma but ``;``, a tab or ``|`` is read with that; it is read as
UTF-8, or as UTF-16 when it starts with that byte-order mark.

Every file found is either an :class:`Item` to extract or a :class:`Skip` with a reason;
nothing is dropped silently. Hidden files (``.DS_Store``, ``._x.jpg``) are the one exception.
Symlinked folders are followed like real ones; a symlink back to a folder above it (a loop) and a folder
that cannot be listed are skipped with their reason. A class folder with no files is not a class (a note).
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import io
import os
import posixpath
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
    columns: tuple[str, str] | None = None  # the LABELS csv's (id, label) columns as used: given or defaults

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


@dataclass
class _Tree:
    """What is below a folder, following symlinked folders; relative paths, sorted."""

    files: list[str]  # every non-hidden entry that is not a folder: broken symlinks and file symlink loops too
    folders: list[str]  # every folder descended into, symlinked ones included
    problems: dict[str, str]  # folders not descended into, with why: symlink loops, unreadable folders

    def skips(self, prefix: str = "") -> list[Skip]:
        return [Skip(prefix + rel, reason) for rel, reason in sorted(self.problems.items())]

    def listed(self) -> list[str]:
        """Every file, and every folder not descended into, sorted: whoever reads them reports the failures."""
        return sorted(self.files + list(self.problems))


def _walk(root: Path) -> _Tree:
    """Every non-hidden entry below ``root``, descending into symlinked folders as into real ones.

    A symlinked folder that points at itself or at a folder above it (a loop) is not descended into and is
    reported in ``problems``, as is a folder that cannot be listed; nothing below ``root`` is left out silently.
    """
    files, folders, problems = [], [], {}
    stack = [(os.fspath(root), "", frozenset({os.path.realpath(root)}))]
    while stack:
        path, rel, above = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError as err:
            if not rel:
                raise DataError(f"{root} cannot be read ({err.strerror}). Check its permissions.") from None
            problems[rel] = f"unreadable folder: {err.strerror}; its images were not listed"
            folders.remove(rel)
            continue
        for entry in entries:
            entry_rel = os.path.join(rel, entry.name) if rel else entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks; False for broken ones and file symlink loops
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(entry_rel)
                continue
            real = os.path.realpath(entry.path)
            if real in above:
                problems[entry_rel] = (f"symlink loop: {entry_rel} points to {os.readlink(entry.path)}, "
                                       f"a folder above it; not followed") if entry.is_symlink() else \
                    f"folder loop: {entry_rel} is {real}, a folder above it; not followed"
                continue
            folders.append(entry_rel)
            stack.append((entry.path, entry_rel, above | {real}))
    return _Tree(sorted(files), sorted(folders), problems)


def _walk_files(root: Path) -> list[str]:
    """Relative paths of every non-hidden entry below ``root`` that is not a folder, sorted; symlinked folders
    are followed. Broken symlinks, symlink loops and unreadable folders are returned too, so that whoever
    reads them reports them as failed."""
    return _walk(root).listed()


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


def _class_folder_items(root: Path, class_names: list[str] | None, prefix: str = "",
                        empty_classes: tuple[str, ...] = ()) -> tuple[
    list[tuple[str, str, int]], list[Skip], list[str], list[str]
]:
    """(relpath, abspath, label) for ``root/<class>/<file>``; files elsewhere are skipped.

    With ``class_names`` None the classes are the folders of ``root`` (symlinked ones too) that hold at least
    one file; an empty one is not a class. ``empty_classes`` (the training set's empty folders) only sharpen
    an error. Returns rows, skipped, classes and the empty class folders.
    """
    tree = _walk(root)
    top = [f for f in tree.folders if len(Path(f).parts) == 1]
    with_files = {Path(rel).parts[0] for rel in tree.files if len(Path(rel).parts) > 1}
    empty = [f for f in top if f not in with_files]
    classes = class_names or [f for f in top if f in with_files]
    if class_names is None:
        _refuse_non_utf8_classes(root, classes)
    index = {c: i for i, c in enumerate(classes)}
    rows, skipped = [], tree.skips(prefix)
    for rel in tree.files:
        parts = Path(rel).parts
        shown = prefix + rel
        if len(parts) < 2 and os.path.islink(root / rel) and not os.path.exists(root / rel):
            skipped.append(Skip(shown, f"broken symlink: points to {os.readlink(root / rel)}"))
        elif len(parts) < 2:
            skipped.append(Skip(shown, "not in a class folder: put it in DATA/<class>/"))
        elif parts[0] not in index:
            emptied = f" (its training folder {parts[0]}/ is empty)" if parts[0] in empty_classes else ""
            raise DataError(
                f"{root}/{parts[0]} is a class folder that the training set does not have{emptied}; "
                f"training classes are: {', '.join(classes)}"
            )
        else:
            rows.append((shown, str(root / rel), index[parts[0]]))
    return rows, sorted(skipped, key=lambda sk: sk.relpath), classes, empty


def _refuse_non_utf8_classes(root: Path, classes: list[str]) -> None:
    """Class names are encoded as UTF-8 in the cache's fingerprint, training's plots, the reports and a submission's
    header: a class folder whose name is not UTF-8 (listed with its bytes surrogate-escaped) is refused before any
    work, naming it, instead of stopping at the first of those. File names that are not UTF-8 are cached byte-exact."""
    bad = []
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(os.fsencode(name))
    if not bad:
        return
    many = len(bad) > 1
    shown = ", ".join(f"{b.decode('utf-8', 'backslashreplace')}/" for b in bad[:5]) + (", ..." if len(bad) > 5 else "")
    has = "have names that are" if many else "has a name that is"
    raise DataError(
        f"class folder{'s' if many else ''} {shown} in {root} {has} not UTF-8 (bytes shown escaped); class names "
        f"must be UTF-8 (they go into the cache, plots, reports and submission header): rename "
        f"{'them' if many else 'it'} (e.g. to {bad[0].decode('latin-1')}/, its bytes read as Latin-1)."
    )


def _empty_class_note(folder: str, test: bool = False) -> str:
    if test:
        return f"class folder {folder}/ is empty: that class has no test images"
    name = Path(folder).name
    return f"class folder {folder}/ is empty, so {name} is not one of the classes; put images in it to make it one"


OTHER_SEPARATORS = (";", "\t", "|")  # what spreadsheets write when told not to use commas


def _labels_text(labels_csv: Path) -> tuple[str, str | None]:
    """The CSV's text, read as UTF-8 (a leading byte-order mark dropped, as pandas does), and a note if it was not.

    A file that starts with a UTF-16 byte-order mark (Excel's "Unicode Text", tab-separated) is read as UTF-16,
    with a note: the mark makes that unambiguous. Any other file that is not UTF-8 is refused, naming its first bad
    byte and line: decoding it as Latin-1 instead would be a guess, and its ids must match the file names byte for
    byte. NUL bytes (UTF-16 without its mark, or not a text file) are refused too.
    """
    raw = labels_csv.read_bytes()
    resave = "Re-save it as UTF-8 (Excel: Save As \"CSV UTF-8\")"
    note = None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError as err:
            raise DataError(f"LABELS={labels_csv} starts with a UTF-16 byte-order mark but is not UTF-16 "
                            f"({err.reason} at byte {err.start}). {resave}.") from None
        note = f"{labels_csv.name} is UTF-16 (as Excel's \"Unicode Text\" saves it), not UTF-8: read it as UTF-16"
    elif b"\x00" in raw:
        text = raw.decode("latin-1")  # byte for byte, only to name the line below
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            start = raw.rfind(b"\n", 0, err.start) + 1
            end = raw.find(b"\n", err.start)
            shown = raw[start:len(raw) if end < 0 else end].rstrip(b"\r").decode("utf-8", "backslashreplace")
            shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in shown[:80])
            line = raw.count(b"\n", 0, err.start) + 1
            raise DataError(
                f"LABELS={labels_csv} is not UTF-8: line {line} has byte 0x{raw[err.start]:02x} ({shown}), probably "
                f"Latin-1/Windows-1252 as spreadsheets save CSV by default. {resave}, or convert it: "
                f"iconv -f cp1252 -t utf-8 {labels_csv.name} > labels-utf8.csv"
            ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"LABELS={labels_csv} is not a UTF-8 text file: line {line} has NUL bytes (UTF-16 without a "
                        f"byte-order mark, UTF-32, or not a CSV at all). {resave}.")
    return text, note


def _header_separator(text: str) -> str:
    """``,`` unless the header line has no comma but another separator (a semicolon export from a spreadsheet).

    Only the header decides: every usable labels CSV has at least 2 columns, so a comma-separated one has a
    comma in its header and is read exactly as before.
    """
    header = io.StringIO(text, newline="").readline()
    if "," in header:
        return ","
    found = [(header.count(sep), sep) for sep in OTHER_SEPARATORS if sep in header]
    return max(found)[1] if found else ","


def _shown_sep(sep: str) -> str:
    return "tab" if sep == "\t" else repr(sep)


def _row_lines(text: str, sep: str, rows: int) -> list[int] | None:
    """The 1-based line in the file where each data row starts (the header is line 1), as pandas reads them:
    blank lines skipped, quoted fields spanning lines. None if the count does not match pandas' ``rows``."""
    starts, previous = [], 0
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        for record in reader:
            if any(cell.strip() for cell in record) or len(record) > 1:
                starts.append(previous + 1)
            previous = reader.line_num
    except csv.Error:
        return None
    return starts[1:] if len(starts) == rows + 1 else None


def _lines(numbers: list[int], most: int = 5) -> str:
    """``line 62`` / ``lines 3, 9, 62`` / ``lines 3, 9, 12, 30, 41 (7 in all)``."""
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    more = f" ({len(numbers)} in all)" if len(numbers) > most else ""
    return f"lines {', '.join(map(str, numbers[:most]))}{more}"


def _empty_cells_error(labels_csv: Path, ids: pd.Series, labels: pd.Series, id_col: str, label_col: str,
                       line_of: list[int] | None) -> DataError | None:
    """Rows with an empty id, an empty label or both, named by their line in the CSV."""
    no_id, no_label = ids == "", labels == ""
    if not (no_id | no_label).any():
        return None

    def where(mask: pd.Series) -> list[int]:
        # Without a reliable line map, data row k (1-based) is line k + 1 when nothing spans lines.
        return [line_of[i] if line_of else i + 2 for i in range(len(mask)) if mask.iloc[i]]

    name, parts = labels_csv.name, []
    both = where(no_id & no_label)
    if both:
        verb = "is" if len(both) == 1 else "are"
        parts.append(f"{_lines(both)} of {name} {verb} empty in both columns ({id_col} and {label_col})")
    id_only = where(no_id & ~no_label)
    if id_only:
        verb = "has" if len(id_only) == 1 else "have"
        parts.append(f"{_lines(id_only)} of {name} {verb} an empty {id_col!r} but a {label_col}")
    label_only = no_label & ~no_id
    if label_only.any():
        parts.append(f"{int(label_only.sum())} rows of {name} have an empty {label_col!r}, e.g. "
                     f"{', '.join(ids[label_only].iloc[:3])} ({_lines(where(label_only), 3)})")
    return DataError(f"{'; '.join(parts)}. Fill them in or delete those lines.")


def _found_below(files: list[str], missing: list[str]) -> tuple[str, int] | None:
    """The sub-folder of DATA (one level down) holding the most of the ``missing`` ids, and how many."""
    names: dict[str, set[str]] = {}
    for f in files:
        parts = Path(f).parts
        if len(parts) > 1:
            rest = os.path.join(*parts[1:])
            names.setdefault(parts[0], set()).update((rest, os.path.splitext(rest)[0]))
    counts = {sub: sum(m in held for m in missing) for sub, held in names.items()}
    best = max(sorted(counts), key=counts.__getitem__, default=None)
    return (best, counts[best]) if best is not None and counts[best] else None


@functools.lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """File extensions Pillow opens (lower case, with the dot), less the stub formats (HDF5, GRIB, BUFR) it never
    decodes itself."""
    from PIL import Image  # noqa: PLC0415

    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in ("HDF5", "GRIB", "BUFR"))


class _FileIndex:
    """The files below DATA (relative paths, as :func:`_walk` gives them) by the ids that name them."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.full = set(files)
        self.stems: dict[str, list[str]] = {}  # an id without extension: twin names twin.jpg (or twin.jpg, twin.png)
        for f in files:
            self.stems.setdefault(os.path.splitext(f)[0], []).append(f)
        self._ext_case: dict[tuple[str, str], list[str]] | None = None

    def named(self, image_id: str) -> list[str]:
        """The files an id names as written: its file, or every file it names without its extension (of several,
        the ones named like images: x.jpg beside its x.json is the image)."""
        if image_id in self.full:
            return [image_id]
        found = self.stems.get(image_id, [])
        if len(found) > 1:
            found = [f for f in found if os.path.splitext(f)[1].lower() in image_suffixes()] or found
        return found

    def other_case(self, image_id: str) -> list[str]:
        """The files an id with an extension names but for that extension's case (UP.jpg: UP.JPG)."""
        stem, ext = os.path.splitext(image_id)
        if not ext:
            return []
        if self._ext_case is None:  # built only when an id names no file as written
            self._ext_case = {}
            for f in self.files:
                f_stem, f_ext = os.path.splitext(f)
                self._ext_case.setdefault((f_stem, f_ext.lower()), []).append(f)
        return self._ext_case.get((stem, ext.lower()), [])

    def respelled(self, image_id: str) -> list[str]:
        """The files an id that names none as written names as a path: with a leading ``./`` removed and ``\\``
        read as ``/`` (a CSV written on Windows), else with its extension in another case if that is one file.
        Several files (``./twin``: twin.jpg and twin.png) are returned for the caller to refuse."""
        path = posixpath.normpath(image_id.replace("\\", "/"))
        named = self.named(path) if path != image_id else []
        if named:
            return named
        case = self.other_case(path)
        return case if len(case) == 1 else []


def _missing_hint(missing: list[str], index: _FileIndex, root: Path, name: str) -> str | None:
    """How to fix ids that name no file but nearly do, or None.

    Ids that name a file once a leading folder named like DATA itself is removed (train/x in DATA=.../train) were
    written for DATA's parent folder; an id whose extension's case matches several files (UP.jpg: UP.JPG, UP.Jpg)
    cannot say which. Neither is read as the file: that would be a guess.
    """
    own = {Path(os.path.abspath(root)).name, root.resolve().name} - {""}
    prefixed = []
    for image_id in missing:
        head, _, rest = posixpath.normpath(image_id.replace("\\", "/")).partition("/")
        if head in own and rest:
            named = index.named(rest) or index.respelled(rest)
            if len(named) == 1:
                prefixed.append((image_id, head, named[0]))
    if prefixed:
        image_id, head, rel = prefixed[0]
        every = len(prefixed) == len(missing)
        one = len(missing) == 1
        who = ("It starts" if one else "They start") if every else f"{len(prefixed)} of them start"
        return (f"{who} with {head}/, the name of DATA itself "
                f"({image_id} is {rel} in DATA): remove that {head}/ from the id{'' if one else 's'} in {name}"
                f"{'' if every else ', and fix DATA= or remove the other rows'}.")
    for image_id in missing:
        case = index.other_case(posixpath.normpath(image_id.replace("\\", "/")))
        if len(case) > 1:
            return (f"{image_id} differs only in its extension's case from {len(case)} files, {', '.join(case[:5])}: "
                    f"write it as the exact name of the image it labels.")
    return None


def _csvs_near(data: Path) -> list[Path]:
    """CSV files in ``data`` and the folder above it (Kaggle's labels.csv sits beside train/), at most 5."""
    return sorted({*data.glob("*.csv"), *data.parent.glob("*.csv")})[:5]


def _flat_files(folder: Path) -> int:
    """How many files ``folder`` holds directly when it has no subfolder: Kaggle's flat image folder; else 0."""
    try:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except OSError:  # unreadable: the error discovery gives for it is the one to show
        return 0
    return 0 if any(e.is_dir() for e in entries) else len(entries)


def _flat_folder_error(data: Path, folder: Path, n_files: int) -> DataError:
    """``folder`` (DATA, or a split folder in it) holds its images directly, as Kaggle's train/ does: their
    classes must come from a CSV. Names the CSV files near it."""
    csvs = _csvs_near(folder)
    where = f"DATA={data}" if folder == data else f"{folder} (in DATA={data})"
    return DataError(
        f"{where} has {n_files:,} file{'s' if n_files > 1 else ''} directly in it and no class subfolders: pass "
        f"DATA={folder} LABELS={csvs[0] if csvs else '<csv>'} to read each image's class from a CSV (an id column "
        f"and a label column, as Kaggle's labels.csv has id,breed), or put each class's images in its own "
        f"subfolder {folder}/<class>/."
    )


def _csv_items(
    root: Path, labels_csv: Path, id_col: str | None, label_col: str | None
) -> tuple[list[tuple[str, str, int]], list[Skip], list[str], list[str], tuple[str, str]]:
    if not labels_csv.is_file():
        near = _csvs_near(root)
        hint = f"; CSV files near DATA: {', '.join(map(str, near))}" if near else ""
        state = "is a folder" if labels_csv.is_dir() else "does not exist"
        raise DataError(f"LABELS={labels_csv} {state}. Pass LABELS= the CSV that gives each image's class "
                        f"(an id column and a label column, as Kaggle's labels.csv has id,breed){hint}.")
    text, encoding_note = _labels_text(labels_csv)
    notes = [encoding_note] if encoding_note else []
    sep = _header_separator(text)
    try:
        table = pd.read_csv(io.StringIO(text, newline=""), dtype=str, keep_default_na=False, sep=sep)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"LABELS={labels_csv} is empty; it needs a header line (e.g. id,breed) and one row per image."
        ) from None
    except pd.errors.ParserError as err:
        row_form = ("one comma-separated row per image" if sep == "," else
                    f"one row per image, separated by {_shown_sep(sep)} like its header")
        raise DataError(
            f"LABELS={labels_csv} is not a readable CSV ({str(err).strip()}); it needs a header line "
            f"(e.g. id,breed) and {row_form}."
        ) from None
    cols = list(table.columns)
    if sep != ",":
        notes.append(f"{labels_csv.name} is separated by {_shown_sep(sep)}, not commas (its header has no comma): "
                     f"read it with {_shown_sep(sep)}, columns {', '.join(map(str, cols))}")
    if table.empty:
        raise DataError(
            f"LABELS={labels_csv} has no rows (only a header: {','.join(map(str, cols))}); add one row per image, "
            f"e.g. <id>,<label>."
        )
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
    # Before the duplicate check: two `,` lines would otherwise be reported as a duplicated (empty) id.
    line_of = _row_lines(text, sep, len(table))
    empty_cells = _empty_cells_error(labels_csv, ids, labels, id_col, label_col, line_of)
    if empty_cells:
        raise empty_cells
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        repeated = "1 id appears" if len(dup) == 1 else f"{len(dup)} ids appear"
        raise DataError(f"{repeated} more than once in {labels_csv.name}, e.g. {', '.join(dup[:3])}. "
                        f"Keep one row per image.")
    tree = _walk(root)
    files = tree.files
    index_of_files = _FileIndex(files)
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    rows, missing, missing_lines, again, ambiguous, respelled = [], [], [], [], [], []
    used: dict[str, tuple[str, int]] = {}  # image -> the id naming it and its line
    for k, (image_id, label) in enumerate(zip(ids, labels)):
        # Checked on the id's text, not on the resolved path: a symlink inside DATA may point elsewhere.
        norm = posixpath.normpath(image_id.replace("\\", "/"))
        if os.path.isabs(image_id) or norm == os.pardir or norm.startswith(os.pardir + "/"):
            raise DataError(f"id {image_id!r} in {labels_csv.name} resolves outside DATA={root}; ids must be relative")
        named = index_of_files.named(image_id)
        if not named:
            named = index_of_files.respelled(image_id)
            if not named:
                missing.append(image_id)
                missing_lines.append(line_of[k] if line_of else k + 2)
                continue
            respelled.append((image_id, named[0]))
        line = line_of[k] if line_of else k + 2  # without a reliable line map, as in _empty_cells_error
        if len(named) > 1:  # never pick one: the others would be skipped as having no row
            ambiguous.append((image_id, line, named))
            continue
        rel = named[0]
        if rel in used:  # img00 and img00.jpg: two ids, one image
            again.append((*used[rel], image_id, line, rel))
            continue
        used[rel] = (image_id, line)
        rows.append((rel, str(root / rel), index[label]))
    if again:
        first, first_line, other, other_line, rel = again[0]
        n = len({image for *_, image in again})
        raise DataError(
            f"{n} image{'s appear' if n > 1 else ' appears'} more than once in {labels_csv.name} "
            f"under different ids{', e.g.' if n > 1 else ':'} {first} (line {first_line}) and {other} "
            f"(line {other_line}) are both {rel}. Keep one row per image."
        )
    if ambiguous:
        image_id, line, named = ambiguous[0]
        both = f"{', '.join(named[:-1])} and {named[-1]}" if len(named) <= 5 else f"{', '.join(named[:5])}, ..."
        if len(ambiguous) == 1:
            others = ("the other file a row of its own or move it" if len(named) == 2 else
                      "the other files rows of their own or move them")
            others += " out of DATA"
            raise DataError(
                f"id {image_id} in {labels_csv.name} (line {line}) names {len(named)} files, {both}, as it has no "
                f"extension. Write it with the extension of the image it labels, and give {others}."
            )
        raise DataError(
            f"{len(ambiguous)} ids in {labels_csv.name} name more than one file as they have no extension, e.g. "
            f"{image_id} (line {line}): {both}. Write each with the extension of the image it labels, and give the "
            f"other files rows of their own or move them out of DATA."
        )
    if missing:
        below = _found_below(files, missing)
        hint = _missing_hint(missing, index_of_files, root, labels_csv.name)
        if hint:
            fix = hint
        elif below is None:
            fix = f"Fix DATA= or remove {'that row' if len(missing) == 1 else 'those rows'}."
        elif below[1] == len(missing):
            fix = f"{'It is' if len(missing) == 1 else 'They are'} in {root / below[0]}: pass DATA={root / below[0]}."
        else:
            fix = f"{below[1]} of them are in {root / below[0]}: is DATA={root / below[0]} the image folder?"
        named_lines = [f"{image_id} (line {line:,})" for image_id, line in zip(missing[:5], missing_lines)]
        raise DataError(
            f"1 id in {labels_csv.name} has no image in DATA={root}: {named_lines[0]}. {fix}" if len(missing) == 1
            else f"{len(missing):,} ids in {labels_csv.name} have no image in DATA={root}, e.g. "
                 f"{', '.join(named_lines)}. {fix}"
        )
    if respelled:
        one = len(respelled) == 1
        notes.append(f"{len(respelled)} {'id' if one else 'ids'} in {labels_csv.name} "
                     f"{'names its image' if one else 'name their images'} in another spelling (a leading ./, "
                     f"\\ for /, or the extension's case) and {'was' if one else 'were'} matched to "
                     f"{'it' if one else 'them'}, e.g. {respelled[0][0]} is {respelled[0][1]}")
    extra = [f for f in files if f not in used]
    skipped = [Skip(f, f"not in labels: {labels_csv.name} has no row for it") for f in extra] + tree.skips()
    if extra:
        notes.append(f"{'1 file in DATA is' if len(extra) == 1 else f'{len(extra)} files in DATA are'} not in "
                     f"{labels_csv.name} (listed as skipped){'' if len(extra) == 1 else ', e.g.'}: {extra[0]}")
    return rows, skipped, classes, notes, (id_col, label_col)


def _nested_classes(rels: list[str]) -> dict[str, list[str]]:
    """Class folders with no image directly inside but images in 2 or more sub-folders, with those sub-folders.

    ``rels`` are ``<class>/...`` paths. Such a class folder is usually a data set one level too deep
    (``DATA/charts/<class>/``), so its sub-folders are the real classes.
    """
    direct, subs = set(), {}
    for rel in rels:
        parts = Path(rel).parts
        if len(parts) == 2:
            direct.add(parts[0])
        elif len(parts) > 2:
            subs.setdefault(parts[0], set()).add(parts[1])
    return {c: sorted(held) for c, held in sorted(subs.items()) if c not in direct and len(held) >= 2}


def _folders(names: list[str], most: int = 5) -> str:
    shown = ", ".join(f"{n}/" for n in names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _check_test_folder(data: Path, test: Path, labels: object, train_test: bool) -> None:
    """Refuse a TEST= folder whose images would also be read as training images (or as the labelled test set).

    With LABELS= only DATA itself is refused: the CSV picks the training images, and a test folder beside
    (or, oddly, below) the image folder is the usual Kaggle layout.
    """
    d, t = data.resolve(), test.resolve()
    separate = "TEST= must be a separate folder of unlabelled test images, e.g. ~/dogs/test beside ~/dogs/train"
    if t == d:
        raise DataError(f"TEST={test} is DATA={data} itself, so every training image would also be cached as an "
                        f"unlabelled test row. {separate}.")
    if d.is_relative_to(t):
        raise DataError(f"TEST={test} contains DATA={data}, so every training image would also be cached as an "
                        f"unlabelled test row. {separate}.")
    if labels is not None or not t.is_relative_to(d):
        return
    test_set = (data / "test").resolve()
    if train_test and t.is_relative_to(test_set):
        raise DataError(f"TEST={test} is {'' if t == test_set else 'inside '}{data / 'test'}, which DATA={data} "
                        f"already reads as the labelled test set (it has train/ and test/): drop TEST=, or give a "
                        f"folder outside DATA.")
    read_as = ("which has train/ and test/ (the training set and the labelled test set)" if train_test else
               "whose images are all read as training images (their folders are the classes)")
    raise DataError(f"TEST={test} is inside DATA={data}, {read_as}, so its images would be cached twice. {separate}, "
                    f"outside DATA.")


def discover(
    data: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    val: float = 0.2,
    seed: int = 0,
    id_col: str | None = None,
    label_col: str | None = None,
) -> Discovery:
    """Find every image, its label and its split. Raises :class:`DataError` on unusable input.

    ``~`` in ``data``, ``labels`` and ``test`` is the home folder, as in a shell (``make`` gets it expanded).
    """
    data = Path(data).expanduser()
    _check_root(data)
    train_test = labels is None and (data / "train").is_dir() and (data / "test").is_dir()
    if test is not None:
        test = Path(test).expanduser()
        _check_root(test, "TEST")
        _check_test_folder(data, test, labels, train_test)
    notes: list[str] = []
    labelled_test: list[tuple[str, str, int]] = []
    nested: dict[str, list[str]] = {}  # class folders that look one level too deep
    empty: list[str] = []  # class folders with no files
    columns = None
    if labels is not None:
        rows, skipped, classes, notes, columns = _csv_items(data, Path(labels).expanduser(), id_col, label_col)
        name = data.resolve().parent.name if data.name in ("train", "images") else data.resolve().name
    elif train_test:
        rows, skipped, classes, empty = _class_folder_items(data / "train", None, prefix="train/")
        labelled_test, test_skipped, _, test_empty = _class_folder_items(
            data / "test", classes, prefix="test/", empty_classes=tuple(empty))
        skipped += test_skipped
        notes = [_empty_class_note(f"train/{f}") for f in empty]
        notes += [_empty_class_note(f"test/{f}", test=True) for f in test_empty if f not in empty]
        nested = _nested_classes([rel.removeprefix("train/") for rel, _, _ in rows])
        notes += [f"class {c!r} holds its images in sub-folders {_folders(subs)} of train/{c}/, none directly in "
                  f"it: if those are the classes, move them up into train/ (and test/)" for c, subs in nested.items()]
        skipped += [Skip(rel, "not in train/ or test/: with DATA/train and DATA/test, only those are read")
                    for rel in _walk_files(data) if Path(rel).parts[0] not in ("train", "test")]
        name = data.resolve().name
    else:
        split_named = sorted(d.name for d in data.iterdir() if d.is_dir() and d.name.lower() in SPLIT_FOLDERS)
        for split in split_named:
            n_flat = _flat_files(data / split)
            if n_flat:
                raise _flat_folder_error(data, data / split, n_flat)
        if split_named:
            raise DataError(
                f"DATA={data} has split folders ({', '.join(split_named)}/), not class folders. headswap reads "
                f"DATA/<class>/ with VAL= making the validation split, or DATA/train/<class>/ plus "
                f"DATA/test/<class>/ as a labelled test set: point DATA= at the training folder, or arrange "
                f"train/ and test/."
            )
        rows, skipped, classes, empty = _class_folder_items(data, None)
        notes = [_empty_class_note(f) for f in empty]
        nested = _nested_classes([rel for rel, _, _ in rows])
        notes += [f"class {c!r} holds its images in sub-folders {_folders(subs)} of {c}/, none directly in it: "
                  f"if those are the classes, pass DATA={data / c}" for c, subs in nested.items()]
        name = data.resolve().name
    if not rows:
        prefix = "train/" if train_test else ""
        flat = [sk for sk in skipped if sk.reason.startswith("not in a class folder") and sk.relpath.startswith(prefix)]
        if labels is None and flat:
            raise _flat_folder_error(data, data / prefix, len(flat))
        raise DataError(f"DATA={data} has no images. Use one subfolder per class, or pass LABELS=<csv>.")
    if len(classes) < 2:
        emptied = " (its other class folders are empty)" if labels is None and empty else ""
        deeper = ""
        if labels is None and not train_test and classes[0] in nested:
            deeper = (f" Its images are in sub-folders {_folders(nested[classes[0]])} of {classes[0]}/: "
                      f"if those are the classes, pass DATA={data / classes[0]}.")
        raise DataError(
            f"DATA={data} has only one class with images ({classes[0]!r}){emptied}; a classifier needs at least 2."
            + deeper
        )
    counts = Counter(label for _, _, label in rows)
    lonely = [classes[i] for i, n in sorted(counts.items()) if n == 1]
    if lonely:  # a note, which extract_features logs once as `note: ...` (no warnings.warn: that printed it twice)
        has = "1 class has" if len(lonely) == 1 else f"{len(lonely)} classes have"
        notes.append(f"{has} a single image (kept in train, none in val): {', '.join(lonely[:5])}"
                     + (", ..." if len(lonely) > 5 else ""))
    splits = _assign_splits([(rel, label) for rel, _, label in rows], val, seed)
    items = [Item(rel, path, label, splits[rel], file_stamp(path)) for rel, path, label in rows]
    items += [Item(rel, path, label, TEST, file_stamp(path)) for rel, path, label in labelled_test]
    if test is not None:
        test_tree = _walk(test)
        items += [Item(f"test/{rel}", str(test / rel), UNLABELLED, TEST, file_stamp(str(test / rel)))
                  for rel in test_tree.files]
        skipped += test_tree.skips("test/")
    return Discovery(name=name, root=str(data.resolve()), class_names=classes, items=items, skipped=skipped,
                     notes=notes, columns=columns)
