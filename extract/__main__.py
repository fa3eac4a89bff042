"""`python -m extract`: the thin CLI over :func:`extract.extract_features` (``make extract`` calls it)."""

from __future__ import annotations

import argparse

from .cli_util import MakeVariableParser, none_or_str, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = MakeVariableParser(prog="python -m extract",
                                description="Cache bottleneck features of an image set in HDF5.")
    p.add_argument("--data", required=True,
                   help="image folder: one subfolder per class, or Kaggle-style with --labels")
    p.add_argument("--labels", type=none_or_str, help="CSV with an id and a label column")
    p.add_argument("--test", type=none_or_str, help="folder of unlabelled test images")
    p.add_argument("--id-col", type=none_or_str)
    p.add_argument("--label-col", type=none_or_str)
    p.add_argument("--out", type=none_or_str, help="cache file (default: derived from data set name and config)")
    p.add_argument("--cache-dir", default="features_cache")
    p.add_argument("--backbone", default="xception")
    p.add_argument("--size", type=int, default=None,
                   help="input side in px (default: the backbone's, 299 for xception)")
    p.add_argument("--pooling", default="avg", choices=["avg", "max", "none"])
    p.add_argument("--weights", default="imagenet",
                   help="imagenet | none | auto (imagenet if available, else none) | path to .h5")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--precision", default="float32")
    p.add_argument("--val", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None,
                   help="images per backbone call (default: 64 up to 160 px, else 32; features do not change)")
    p.add_argument("--max-pixels", type=int, default=None)
    p.add_argument("--augment", default="none",
                   help="none | tutorial | epiuse | 'rotation=0.1,zoom=0.2,flip=horizontal'")
    p.add_argument("--rounds", type=int, default=0, help="augmented views per training image (plus the clean one)")
    p.add_argument("--devices", default=None,
                   help="comma-separated devices, one replica each in one process (tf.distribute.MirroredStrategy)")
    p.add_argument("--workers", type=int, default=None,
                   help="extraction processes, one per GPU or each with a share of the CPU cores "
                        "(default: one per GPU when there are several and no --devices, else 1)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--flush-rows", type=int, default=None,
                   help="rows per flushed part (resume granularity; default 1024)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go():
        from .cache import DEFAULT_FLUSH_ROWS  # noqa: PLC0415
        from .decode import DEFAULT_MAX_PIXELS  # noqa: PLC0415
        from .pipeline import extract_features  # noqa: PLC0415

        extract_features(
            args.data, args.labels, args.test, out=args.out, cache_dir=args.cache_dir, backbone=args.backbone,
            size=args.size, pooling=args.pooling, weights=args.weights, dtype=args.dtype, precision=args.precision,
            val=args.val, seed=args.seed, batch_size=args.batch, id_col=args.id_col, label_col=args.label_col,
            max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
            overwrite=args.overwrite,
            flush_rows=DEFAULT_FLUSH_ROWS if args.flush_rows is None else args.flush_rows,
            augment=args.augment, rounds=args.rounds,
            devices=args.devices.split(",") if args.devices else None, workers=args.workers,
            progress=not args.no_progress,
        )

    run_cli(go, interrupted="the parts flushed so far (every FLUSH_ROWS rows) are kept; "
                            "run the same command again to resume")


if __name__ == "__main__":
    main()
