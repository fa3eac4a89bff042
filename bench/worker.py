"""One measured run in a fresh interpreter, so its peak RSS is its own: ``python -m bench.worker MODE ...``.

Modes:
* ``extract``: headswap's :func:`extract.extract_features` end to end (HDF5 written), ``--workers K``
  processes (peak RSS: its own plus each worker's);
* ``compute``: extract's backbone alone on one pre-decoded batch with ``--threads`` intra-op threads,
  timed from a start shared by ``--barrier`` (``--workers`` such processes run at once);
* ``classic``: Keras 2's ``ImageDataGenerator.flow_from_directory`` + ``model.predict`` (``tf_keras``);
* ``classic_compute``: that ``tf_keras`` model alone on one pre-decoded batch (its own compute limit);
* ``head``: ``train_head(--head, cache --data)`` twice, the first as ``make train-head`` pays for it.

Prints one JSON line: images, seconds (the call, model build included, for ``extract`` also
``process_seconds`` from the worker's first import; for ``classic`` up to the end of the predict loop, its
iterator's teardown apart in ``teardown_seconds``; for ``compute`` and ``classic_compute`` the steady loop
only; for ``head`` from the first import to the end of the first ``train_head`` call, the second apart in
``warm_seconds``), peak RSS in MB.
"""

from __future__ import annotations

import time

# Before any other import: a head swap's figure and the extraction it is set against (``process_seconds``)
# both count their imports (heads/extract with pandas and h5py, scikit-learn, matplotlib, TensorFlow).
STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

from extract.workers import peak_rss_mb  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run_extract(data: str, size: int, out: str, batch: int | None, precision: str, workers: int | None) -> dict:
    from extract import FeatureCache, extract_features

    start = time.perf_counter()
    result = extract_features(data, out=out, size=size, weights="none", batch_size=batch, precision=precision,
                              workers=workers, overwrite=True, progress=False, log=lambda m: None)
    end = time.perf_counter()
    with FeatureCache(result.path) as c:
        rows = c.n_rows
    # The processes' peaks added up: an upper bound of what they held at once.
    return {"images": rows, "seconds": end - start, "process_seconds": end - STARTED,
            "peak_rss_mb": peak_rss_mb() + sum(result.worker_peak_rss_mb)}


def run_compute(size: int, batch: int, n_images: int, threads: int, barrier: str, workers: int) -> dict:
    """Extract's backbone alone, ``threads`` intra-op threads; the clock starts once all ``workers`` processes
    sharing ``barrier`` (a folder) have warmed up, so their steady loops run side by side."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from extract.backbones import backbone_function, build_backbone, get_backbone

    model = build_backbone(get_backbone("xception"), size, "avg", "none", seed=0)
    infer = backbone_function(model)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    infer(x).numpy()
    Path(barrier, str(os.getpid())).touch()
    deadline = time.monotonic() + 600  # a process that failed before the barrier must not hang the others
    while len(list(Path(barrier).iterdir())) < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(list(Path(barrier).iterdir()))} of {workers} processes reached {barrier}")
        time.sleep(0.01)
    steps = max(2, n_images // batch)
    return {"images": steps * batch, "seconds": steady_seconds(infer, x, steps, warm=False)}


def run_head(cache: str, head: str, out: str) -> dict:
    """``train_head`` twice in this fresh process. ``seconds`` is the head swap ``make train-head`` makes, from
    this process's first import to the end of the first call: ``heads`` and what the head needs (scikit-learn,
    matplotlib; Keras for ``dense``), as the extraction's ``process_seconds`` counts TensorFlow's. The second
    call, with all that loaded, is ``warm_seconds``."""
    from heads import train_head

    ends = [STARTED]
    for k in range(2):
        train_head(head, cache, Path(out) / f"{head}-{k}", log=lambda m: None)
        ends.append(time.perf_counter())
    return {"seconds": ends[1] - ends[0], "warm_seconds": ends[2] - ends[1]}


def run_classic(data: str, size: int, batch: int) -> dict:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    from tf_keras.applications import xception
    from tf_keras.callbacks import LambdaCallback
    from tf_keras.preprocessing.image import ImageDataGenerator

    model = xception.Xception(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    start = time.perf_counter()
    ended = []
    flow = ImageDataGenerator(preprocessing_function=xception.preprocess_input).flow_from_directory(
        data, target_size=(size, size), batch_size=batch, class_mode=None, shuffle=False)
    features = model.predict(flow, verbose=0,
                             callbacks=[LambdaCallback(on_predict_end=lambda logs: ended.append(time.perf_counter()))])
    done = time.perf_counter()
    # The loop's time ends with its last batch. tf.data (autotuning on, as in every tf_keras predict) then
    # often holds up the iterator's destruction for seconds (TF 2.21): a random cost of the classic loop that
    # would distort a marginal rate, so it is reported apart ("teardown_seconds").
    return {"images": int(features.shape[0]), "seconds": ended[0] - start, "teardown_seconds": done - ended[0]}


def run_classic_compute(size: int, batch: int, n_images: int) -> dict:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    from tf_keras.applications import xception

    model = xception.Xception(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    steps = max(2, n_images // batch)
    return {"images": steps * batch, "seconds": steady_seconds(tf.function(lambda t: model(t, training=False)), x,
                                                               steps)}


def steady_seconds(infer, batch, steps: int, warm: bool = True) -> float:
    """Seconds for ``steps`` calls of ``infer`` on ``batch``, after one call that traces and warms up."""
    if warm:
        infer(batch).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        infer(batch).numpy()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["extract", "compute", "classic", "classic_compute", "head"])
    p.add_argument("--data", required=True, help="image folder; head: the cache")
    p.add_argument("--size", type=int, default=None, help="input size (every mode but head)")
    p.add_argument("--out", default="bench_out/bench.h5", help="the cache to write; head: the runs' folder")
    p.add_argument("--head", default="logreg", help="head: which head to train")
    p.add_argument("--batch", type=int, default=None,
                   help="extract: BATCH (default: extract's own); classic: 32 (ImageDataGenerator's default)")
    p.add_argument("--precision", default="float32")
    p.add_argument("--n", type=int, default=256, help="images for classic_compute and compute")
    p.add_argument("--workers", type=int, default=None,
                   help="extract: WORKERS (default: extract's own); compute: processes at the barrier (default 1)")
    p.add_argument("--threads", type=int, default=1, help="compute: intra-op threads")
    p.add_argument("--barrier", default=None, help="compute: folder the processes meet in")
    args = p.parse_args()
    if args.size is None and args.mode != "head":
        p.error(f"{args.mode} needs --size")
    if args.mode == "extract":
        result = run_extract(args.data, args.size, args.out, args.batch, args.precision, args.workers)
    elif args.mode == "compute":
        result = run_compute(args.size, args.batch or 32, args.n, args.threads, args.barrier, args.workers or 1)
    elif args.mode == "head":
        result = run_head(args.data, args.head, args.out)
    elif args.mode == "classic_compute":
        result = run_classic_compute(args.size, args.batch or 32, args.n)
    else:
        result = run_classic(args.data, args.size, args.batch or 32)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
