"""Candidate extraction techniques, each measured in a fresh process: ``python -m bench.techniques``.

Every variant feeds the same images through the same random-weight Xception and reports its steady
rate (images after the first batch over the time after it: tracing and pipeline start-up excluded)
and the CPU time the whole process spent per image. ``embed*`` variants run headswap's own
:func:`extract.pipeline.embed`; the others are replicas of its tf.data pipeline with one knob changed;
none of them writes HDF5 (about 0.2% of extraction time). ``x-*`` variants run the real
``extract_features`` (HDF5 included) and report the marginal rate between ``--data-small`` and ``--data``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VARIANTS = {
    "compute-b32": "backbone alone on one pre-decoded batch of 32, as extract runs it (fused batch norm)",
    "compute-b64": "the same, batch 64",
    "compute-keras-b32": "backbone alone, the plain Keras 3 call (batch norm as multiply and add passes)",
    "compute-keras-b64": "the plain Keras 3 call, batch 64",
    "decode-only": "headswap's tf.data decode pipeline alone, no backbone (a batch per Python call)",
    "decode-only-perimage": "replica decoding one image per Python call (headswap before DECODE_CHUNK)",
    "decode-only-nodraft": "the same without DCT scaling (full-size JPEG decode, then bilinear)",
    "decode-only-tfjpeg": "TF-native decode: decode_jpeg(ratio=…) + resize(bilinear, antialias), no Python",
    "embed-b32": "headswap's embed() (PIL draft decode, parallel map, fused batch norm, batch 32)",
    "embed-b64": "embed() with batch 64",
    "embed-b16": "embed() with batch 16",
    "keras-b32": "embed() with the plain Keras 3 call",
    "nodraft-b32": "replica without DCT scaling",
    "par1-b32": "replica with num_parallel_calls=1 (decode on one thread)",
    "tfjpeg-b32": "replica with TF-native decode (decode_jpeg ratio), no numpy_function",
    "tfjpeg-b64": "TF-native decode, batch 64",
    "interop1-b32": "embed() with tf inter-op threads = 1",
    "bf16-b32": "embed() with a mixed_bfloat16 backbone",
}
# End to end: the real extract_features (HDF5 included) in fresh processes, marginal rate N → 4N.
EXTRACT_VARIANTS = {
    "x-b32": "extract_features (BATCH=32)",
    "x-b64": "extract_features, BATCH=64",
    "x-b128": "extract_features, BATCH=128",
    "x-keras-b32": "extract_features with the plain Keras 3 call",
    "x-autotune-b32": "extract_features with tf.data autotuning back on",
    "x-bf16-b32": "extract_features, PRECISION=bfloat16",
}


def _plain_keras_call(model):
    """The backbone without fused batch norm: how Keras 3 runs it on its own."""
    import tensorflow as tf  # noqa: PLC0415

    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def _patch(kind: str) -> None:
    """Change one knob of extract.pipeline for this process."""
    import extract.pipeline as pipeline  # noqa: PLC0415

    if "keras" in kind:
        pipeline.backbone_function = _plain_keras_call
    if "autotune" in kind:
        import tensorflow as tf  # noqa: PLC0415

        build = pipeline.image_dataset
        options = tf.data.Options()
        options.autotune.enabled = True

        def image_dataset(*args, **kwargs):
            return build(*args, **kwargs).with_options(options)

        pipeline.image_dataset = image_dataset


def _paths(data: Path) -> list[str]:
    return sorted(str(p) for p in data.rglob("*.jpg"))


def _pil_nodraft(path: str, size: int) -> np.ndarray:
    from extract.decode import RESAMPLE, load_rgb  # noqa: PLC0415

    img = load_rgb(path)
    return np.asarray(img.resize((size, size), RESAMPLE) if img.size != (size, size) else img, np.uint8)


def replica_dataset(paths: list[str], size: int, batch: int, decoder: str = "pil", parallel: int | None = None):
    """``extract.pipeline.image_dataset`` as it was before DECODE_CHUNK (one image per call), with one knob
    changed (decoder or parallelism)."""
    import tensorflow as tf  # noqa: PLC0415

    from extract.decode import load_array  # noqa: PLC0415

    parallel = tf.data.AUTOTUNE if parallel is None else parallel
    if decoder == "tfjpeg":
        def tf_decode(i):
            data = tf.io.read_file(tf.gather(tf.constant(paths), i))
            shape = tf.io.extract_jpeg_shape(data)
            scale = tf.minimum(shape[0] // size, shape[1] // size)
            # decode_jpeg's ratio must be a constant: one branch per DCT scale, as Pillow's draft picks it.
            branch = tf.where(scale >= 8, 3, tf.where(scale >= 4, 2, tf.where(scale >= 2, 1, 0)))
            img = tf.switch_case(tf.cast(branch, tf.int32), [
                lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r) for r in (1, 2, 4, 8)])
            img = tf.image.resize(img, (size, size), method="bilinear", antialias=True)
            return i, tf.ensure_shape(img, (size, size, 3)), tf.constant(b"")
    else:
        fn = load_array if decoder == "pil" else _pil_nodraft

        def tf_decode(i):
            img = tf.numpy_function(lambda k: fn(paths[int(k)], size), [i], tf.uint8, stateful=False)
            return i, tf.cast(tf.ensure_shape(img, (size, size, 3)), tf.float32), tf.constant(b"")
    return (tf.data.Dataset.range(len(paths)).map(tf_decode, num_parallel_calls=parallel, deterministic=True)
            .batch(batch).prefetch(2))


def run_variant(name: str, data: Path, size: int) -> dict:
    """Steady images/s and process CPU seconds per image of one variant (run in a fresh process)."""
    import tensorflow as tf  # noqa: PLC0415

    if name.startswith("interop1"):
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from extract.backbones import backbone_function, build_backbone, get_backbone  # noqa: PLC0415
    from extract.pipeline import embed  # noqa: PLC0415  (after _patch: embed looks its helpers up at call time)

    paths = _paths(data)
    kind, _, b = name.rpartition("-b")
    batch = int(b) if b.isdigit() else 32
    kind = kind or name
    _patch(kind)
    model, infer = None, None
    if not kind.startswith("decode-only"):
        precision = "bfloat16" if kind.startswith("bf16") else "float32"
        model = build_backbone(get_backbone("xception"), size, "avg", "none", seed=0, precision=precision)
        infer = _plain_keras_call(model) if "keras" in kind else backbone_function(model)

    if kind.startswith("compute"):
        x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
        batches = (x for _ in range(max(3, len(paths) // batch)))
        step = lambda imgs: infer(imgs).numpy()  # noqa: E731
    elif kind in ("embed", "interop1", "bf16", "keras"):
        batches = (f for _, f, _ in embed(paths, model, size, batch))
        step = lambda feats: feats  # noqa: E731
    elif kind == "decode-only":
        from extract.pipeline import image_dataset  # noqa: PLC0415

        batches = (imgs for _, imgs, _ in image_dataset(paths, size, batch))
        step = lambda imgs: imgs.numpy()  # noqa: E731
    else:
        decoder = {"nodraft": "nodraft", "decode-only-nodraft": "nodraft", "tfjpeg": "tfjpeg",
                   "decode-only-tfjpeg": "tfjpeg"}.get(kind, "pil")
        ds = replica_dataset(paths, size, batch, decoder, parallel=1 if kind == "par1" else None)
        batches = (imgs for _, imgs, _ in ds)
        step = (lambda imgs: imgs.numpy()) if infer is None else (lambda imgs: infer(imgs).numpy())  # noqa: E731
    n_after, t_first, cpu_first = 0, None, None
    for item in batches:
        out = step(item)
        if t_first is None:
            t_first, cpu_first = time.perf_counter(), time.process_time()
        else:
            n_after += len(out)
    seconds, cpu = time.perf_counter() - t_first, time.process_time() - cpu_first
    if n_after == 0:
        raise SystemExit(f"{data} gives a single batch of {batch}: steady rates need more images")
    return {"variant": name, "images": n_after, "seconds": seconds, "rate": n_after / seconds,
            "cpu_ms_per_image": 1000 * cpu / n_after}


def run_extract(name: str, data: Path, size: int, out: Path) -> dict:
    """One real ``extract_features`` run (fresh process) with the variant's knob changed."""
    kind, _, b = name.rpartition("-b")
    _patch(kind)
    from extract.pipeline import extract_features  # noqa: PLC0415

    start = time.perf_counter()
    extract_features(data, out=out, size=size, weights="none", batch_size=int(b),
                     precision="bfloat16" if "bf16" in kind else "float32",
                     overwrite=True, progress=False, log=lambda m: None)
    return {"variant": name, "images": len(_paths(data)), "seconds": time.perf_counter() - start}


def decode_quality(data: Path, size: int, k: int = 32) -> dict:
    """Mean absolute pixel difference (0-255) of the draft and TF-native decoders against full decoding."""
    from extract.decode import load_array  # noqa: PLC0415

    paths = _paths(data)[:k]
    full = np.stack([_pil_nodraft(p, size) for p in paths]).astype(np.float32)
    draft = np.stack([load_array(p, size) for p in paths]).astype(np.float32)
    tfj = np.concatenate([imgs.numpy() for _, imgs, _ in replica_dataset(paths, size, k, "tfjpeg")])
    return {"draft_vs_full": float(np.abs(draft - full).mean()), "tfjpeg_vs_full": float(np.abs(tfj - full).mean())}


def _child(args: list[str]) -> dict | None:
    run = subprocess.run([sys.executable, "-m", "bench.techniques", *args], capture_output=True, text=True,
                         check=False)
    if run.returncode:
        print(f"{' '.join(args)} failed:\n{run.stderr[-2000:]}", file=sys.stderr)
        return None
    res = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(res), file=sys.stderr, flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.techniques", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="class folders of JPEGs (e.g. bench_out/data/…/n1024)")
    p.add_argument("--data-small", help="a subset of --data (N of its 4N images) for the x-* marginal variants")
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--variants", default=",".join([*VARIANTS, *EXTRACT_VARIANTS]))
    p.add_argument("--repeats", type=int, default=2, help="fresh-process runs per variant; the fastest counts")
    p.add_argument("--out", default="bench_out/techniques", help="folder for caches and the report")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if args.one:
        if args.one == "quality":
            res = decode_quality(data, args.size)
        elif args.one.startswith("x-"):
            res = run_extract(args.one, data, args.size, out / f"{args.one}-{args.size}-{data.name}.h5")
        else:
            res = run_variant(args.one, data, args.size)
        print(json.dumps(res))
        return
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS and n not in EXTRACT_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join([*VARIANTS, *EXTRACT_VARIANTS])}")
    if any(n in EXTRACT_VARIANTS for n in names) and not args.data_small:
        raise SystemExit("x-* variants need --data-small (N images; --data holds 4N)")
    common = ["--size", str(args.size), "--out", str(out)]
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name in names:
            if name in VARIANTS:
                res = _child(["--data", str(data), *common, "--one", name])
                if res and (name not in best or res["rate"] > best[name]["rate"]):
                    best[name] = res
                continue
            small = _child(["--data", args.data_small, *common, "--one", name])
            large = _child(["--data", str(data), *common, "--one", name])
            if small and large:
                for key, res in (("small", small), ("large", large)):
                    prev = best.setdefault(name, {}).get(key)
                    if prev is None or res["seconds"] < prev["seconds"]:
                        best[name][key] = res
    for name in EXTRACT_VARIANTS:
        if name in best:
            sm, lg = best[name]["small"], best[name]["large"]
            extra = lg["seconds"] - sm["seconds"]
            best[name]["rate"] = (lg["images"] - sm["images"]) / extra if extra > 0 else float("nan")
    quality = _child(["--data", str(data), *common, "--one", "quality"]) or {}
    ref_name = next((k for k in ("compute-b64", "compute-b32") if k in best), None)
    ref = best[ref_name]["rate"] if ref_name else None
    lines = [f"Techniques at {args.size} px on {data} ({len(_paths(data))} images), best of {args.repeats} "
             "fresh-process runs. Steady rate: images after the first batch over the time after it (tracing and "
             "start-up excluded, no HDF5). x-* rows: the real extract_features, HDF5 included, marginal rate "
             f"between {args.data_small} and {data}.", "",
             f"| variant | what | img/s | ÷ {ref_name or 'compute'} | CPU ms/img |", "|---|---|---|---|---|"]
    for name in names:
        if name in best:
            r = best[name]
            rel = f"{r['rate'] / ref:.2f}" if ref and not name.startswith("decode-only") else ""
            cpu = f"{r['cpu_ms_per_image']:.2f}" if "cpu_ms_per_image" in r else ""
            what = VARIANTS.get(name) or EXTRACT_VARIANTS[name]
            lines.append(f"| {name} | {what} | {r['rate']:.1f} | {rel} | {cpu} |")
    if quality:
        lines += ["", "Mean absolute pixel difference to full decoding (0-255): Pillow draft "
                  f"{quality['draft_vs_full']:.2f}, TF decode_jpeg(ratio) + antialiased resize "
                  f"{quality['tfjpeg_vs_full']:.2f}."]
    report = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"techniques-{args.size}.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
