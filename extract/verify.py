"""`make verify FEATURES=…`: check a cache file and print a report (``python -m extract.verify``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .cache import FeatureCache
from .cli_util import MakeVariableParser, run_cli

SHOWN_SKIPS = 50  # skipped files printed by default; --all prints every one


def _rows_have(count: int) -> str:
    return "1 row has" if count == 1 else f"{count:,} rows have"


def verify_cache(features: str | Path, data: str | Path | None = None, labels: str | Path | None = None,
                 test: str | Path | None = None, block_rows: int = 4096, *, id_col: str | None = None,
                 label_col: str | None = None) -> dict[str, Any]:
    """Check schema, completeness, row counts, NaN/inf and (if DATA is there) the fingerprint.

    ``data``, ``labels``, ``test``, ``id_col`` and ``label_col`` default to the ones the cache recorded (a cache
    written before LABELS/TEST were recorded has only DATA): a recorded csv or folder that is gone leaves the
    fingerprint unchecked, as a missing DATA does.

    Returns a report dict; ``report["ok"]`` is False when anything is wrong, with ``problems`` saying what.
    ``skipped_files`` lists every skipped file with its reason and ``rows_per_class`` the rows of each class
    per split. ``warnings`` (e.g. a class with no training row) do not make the report fail: such a cache is
    whole, but a head cannot learn that class.
    """
    features = Path(features).expanduser()
    problems: list[str] = []
    warnings: list[str] = []
    with FeatureCache(features) as c:
        config = c.config
        splits, rounds = c.column("split"), c.column("round")
        counts = Counter(zip(splits.tolist(), rounds.tolist()))
        bad_rows, zero_rows = [], []
        for idx, X in c.iter_blocks(np.arange(c.n_rows), block_rows):
            flat = X.reshape(len(X), -1)
            bad_rows.extend(idx[~np.isfinite(flat).all(axis=1)].tolist())
            zero_rows.extend(idx[~flat.any(axis=1)].tolist())
        paths = c.column("path")
        class_names, labels_col = c.class_names, c.column("label")
        per_class = Counter(zip(labels_col.tolist(), splits.tolist()))
        rows_per_class = {name: {s: per_class[(i, s)] for s in ("train", "val", "test")}
                          for i, name in enumerate(class_names)}
        skipped_files = sorted(c.skipped())
        report: dict[str, Any] = {
            "file": str(features), "format_version": int(c.attrs["format_version"]), "complete": c.complete,
            "rows": c.n_rows, "feature_shape": list(c.feature_shape), "dtype": config["dtype"],
            "backbone": config["backbone"]["name"], "size": config["size"], "pooling": config["pooling"],
            "weights": config["weights"]["kind"], "classes": len(c.class_names),
            "rows_per_split_round": {f"{s}/round{r}": n for (s, r), n in sorted(counts.items())},
            "skipped": dict(Counter(r.split(":", 1)[0] for _, r in skipped_files)),
            "nonfinite_rows": [str(paths[i]) for i in bad_rows[:10]], "n_nonfinite_rows": len(bad_rows),
            "n_all_zero_rows": len(zero_rows),
            "rows_per_class": rows_per_class, "skipped_files": skipped_files,
        }
        root = c.data_root
        if not c.complete:
            problems.append("incomplete: rerun the same `make extract` command to resume")
        if bad_rows:
            problems.append(f"{_rows_have(len(bad_rows))} NaN or inf features, e.g. {paths[bad_rows[0]]}")
        if zero_rows:  # no head can tell such rows apart: float16 underflow of tiny features, or broken weights
            problems.append(f"{_rows_have(len(zero_rows))} all-zero features, e.g. {paths[zero_rows[0]]}"
                            + (": DTYPE=float16 may have rounded tiny features to 0 (DTYPE=float32 keeps them)"
                               if config["dtype"] == "float16" else "") + "; check WEIGHTS=")
        data = Path(data).expanduser() if data else root
        labels, test, id_col, label_col, gone = _inputs(c, labels, test, id_col, label_col)
        found = None
        if gone:
            report["fingerprint"] = f"{' and '.join(gone)} (recorded) not available; not checked"
        elif data is not None and data.is_dir():
            from .discover import discover  # noqa: PLC0415

            found = discover(data, labels=labels, test=test, val=config["val"], seed=config["seed"], id_col=id_col,
                             label_col=label_col)
            current = found.fingerprint() == c.fingerprint
            report["fingerprint"] = ("matches DATA" if current
                                     else "DIFFERS from DATA (images added, removed or changed)")
            if not current:
                problems.append(f"stale: DATA={data} changed since extraction; rerun `make extract` to update")
        else:
            report["fingerprint"] = "DATA not available; not checked"
    label_of = {it.relpath: it.label for it in found.items} if found is not None else {}
    for i, name in enumerate(class_names):
        if not rows_per_class[name]["train"]:
            warnings.append(_no_training_rows(name, i, rows_per_class[name], skipped_files, label_of))
    report["ok"] = not problems
    report["warnings"] = warnings
    report["problems"] = problems
    return report


def _inputs(c: FeatureCache, labels: str | Path | None, test: str | Path | None, id_col: str | None,
            label_col: str | None) -> tuple[Path | None, Path | None, str | None, str | None, list[str]]:
    """LABELS, TEST, ID_COL, LABEL_COL: as given, else as recorded; and the recorded files that are gone."""
    rec = c.inputs
    gone = []
    if labels:
        labels = Path(labels).expanduser()
    elif rec is not None and rec.labels_csv is not None:
        labels = rec.labels_csv
        gone += [f"LABELS={labels}"] * (not labels.is_file())
    if test:
        test = Path(test).expanduser()
    elif rec is not None and rec.test_root is not None:
        test = rec.test_root
        gone += [f"TEST={test}"] * (not test.is_dir())
    if rec is not None and labels is not None and labels.resolve() == rec.labels_csv:  # the recorded csv's columns
        id_col, label_col = id_col or rec.id_col, label_col or rec.label_col
    return labels or None, test or None, id_col, label_col, gone


def _no_training_rows(name: str, label: int, rows: dict[str, int], skipped_files: list[tuple[str, str]],
                      label_of: dict[str, int]) -> str:
    """Why class ``name`` has no training row, naming its skipped files when they can be told apart."""

    def of_class(path: str) -> bool:
        if label_of:  # DATA is there: discovery knows every image's label, CSV layouts included
            return label_of.get(path) == label
        parts = Path(path).parts  # class folders: <class>/x or train|test/<class>/x
        return parts[:1] == (name,) or (len(parts) > 2 and parts[0] in ("train", "test") and parts[1] == name)

    own = [(p, r) for p, r in skipped_files if of_class(p)]
    if own:
        why = (f"{len(own)} of its files were skipped, e.g. " + "; ".join(f"{p} ({r})" for p, r in own[:2])
               + ("; all are under 'skipped files'" if len(own) > 2 else ""))
    elif rows["val"]:
        why = f"its {rows['val']} rows are all in val"
    else:
        why = "none of its images are in the cache; 'skipped files' may say why"
    return (f"class {name!r} has no training rows ({why}); heads cannot learn it. Fix or replace its images, "
            f"or remove the class, then rerun `make extract`.")


def format_report(report: dict[str, Any], max_skipped: int | None = SHOWN_SKIPS) -> str:
    """The report as text: one ``key: value`` line per fact, rows per class, the skipped files (the first
    ``max_skipped``; None: all), WARNING lines, then ``OK`` or ``PROBLEMS:``."""
    listed = ("problems", "ok", "nonfinite_rows", "warnings", "rows_per_class", "skipped_files")
    lines = [f"{k}: {v}" for k, v in report.items() if k not in listed]
    lines.append("rows per class (train/val/test):")
    lines += [f"  {name}: {n['train']}/{n['val']}/{n['test']}" for name, n in report["rows_per_class"].items()]
    skipped = report["skipped_files"]
    lines.append(f"skipped files ({len(skipped)}):" if skipped else "skipped files: none")
    shown = skipped if max_skipped is None else skipped[:max_skipped]
    lines += [f"  {path}: {reason}" for path, reason in shown]
    if len(shown) < len(skipped):
        lines.append(f"  ... and {len(skipped) - len(shown)} more "
                     f"(`python -m extract.verify --features {report['file']} --all` lists every one)")
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    if not report["ok"]:
        lines.append("PROBLEMS:\n  " + "\n  ".join(report["problems"]))
    else:
        lines.append("OK" + (f" (with {len(report['warnings'])} warning{'s' if len(report['warnings']) > 1 else ''}"
                             " above)" if report["warnings"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = MakeVariableParser(prog="python -m extract.verify", description=__doc__.splitlines()[0])
    p.add_argument("--features", required=True)
    p.add_argument("--data", default=None, help="image folder to compare against (default: the recorded one)")
    p.add_argument("--labels", default=None)
    p.add_argument("--test", default=None)
    p.add_argument("--id-col", default=None)
    p.add_argument("--label-col", default=None)
    p.add_argument("--all", action="store_true",
                   help=f"list every skipped file (default: the first {SHOWN_SKIPS})")
    args = p.parse_args(argv)

    def go() -> None:
        report = verify_cache(args.features, args.data or None, args.labels or None, args.test or None,
                              id_col=args.id_col or None, label_col=args.label_col or None)
        print(format_report(report, max_skipped=None if args.all else SHOWN_SKIPS))
        if not report["ok"]:
            raise SystemExit(1)

    run_cli(go)


if __name__ == "__main__":
    main()
