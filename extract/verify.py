"""`make verify FEATURES=…`: check a cache file and print a report (``python -m extract.verify``)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .cache import FeatureCache
from .cli_util import run_cli


def verify_cache(features: str | Path, data: str | Path | None = None, labels: str | Path | None = None,
                 test: str | Path | None = None, block_rows: int = 4096) -> dict[str, Any]:
    """Check schema, completeness, row counts, NaN/inf and (if DATA is there) the fingerprint.

    Returns a report dict; ``report["ok"]`` is False when anything is wrong, with ``problems`` saying what.
    """
    problems: list[str] = []
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
        report: dict[str, Any] = {
            "file": str(features), "format_version": int(c.attrs["format_version"]), "complete": c.complete,
            "rows": c.n_rows, "feature_shape": list(c.feature_shape), "dtype": config["dtype"],
            "backbone": config["backbone"]["name"], "size": config["size"], "pooling": config["pooling"],
            "weights": config["weights"]["kind"], "classes": len(c.class_names),
            "rows_per_split_round": {f"{s}/round{r}": n for (s, r), n in sorted(counts.items())},
            "skipped": dict(Counter(r.split(":", 1)[0] for _, r in c.skipped())),
            "nonfinite_rows": [str(paths[i]) for i in bad_rows[:10]], "n_nonfinite_rows": len(bad_rows),
            "n_all_zero_rows": len(zero_rows),
        }
        root = c.data_root
        if not c.complete:
            problems.append("incomplete: rerun the same `make extract` command to resume")
        if bad_rows:
            problems.append(f"{len(bad_rows)} rows have NaN or inf features, e.g. {paths[bad_rows[0]]}")
        if zero_rows:  # no head can tell such rows apart: float16 underflow of tiny features, or broken weights
            problems.append(f"{len(zero_rows)} rows have all-zero features, e.g. {paths[zero_rows[0]]}"
                            + (": DTYPE=float16 may have rounded tiny features to 0 (DTYPE=float32 keeps them)"
                               if config["dtype"] == "float16" else "") + "; check WEIGHTS=")
        data = Path(data) if data else root
        if data is not None and Path(data).is_dir():
            from .discover import discover  # noqa: PLC0415

            found = discover(data, labels=labels, test=test, val=config["val"], seed=config["seed"])
            current = found.fingerprint() == c.fingerprint
            report["fingerprint"] = ("matches DATA" if current
                                     else "DIFFERS from DATA (images added, removed or changed)")
            if not current:
                problems.append(f"stale: DATA={data} changed since extraction; rerun `make extract` to update")
        else:
            report["fingerprint"] = "DATA not available; not checked"
    report["ok"] = not problems
    report["problems"] = problems
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{k}: {v}" for k, v in report.items() if k not in ("problems", "ok", "nonfinite_rows")]
    lines.append("OK" if report["ok"] else "PROBLEMS:\n  " + "\n  ".join(report["problems"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m extract.verify", description=__doc__.splitlines()[0])
    p.add_argument("--features", required=True)
    p.add_argument("--data", default=None, help="image folder to compare against (default: the recorded one)")
    p.add_argument("--labels", default=None)
    p.add_argument("--test", default=None)
    args = p.parse_args(argv)

    def go():
        report = verify_cache(args.features, args.data or None, args.labels or None, args.test or None)
        print(format_report(report))
        if not report["ok"]:
            raise SystemExit(1)

    run_cli(go)


if __name__ == "__main__":
    main()
