"""One measured run in a fresh interpreter, so its peak RSS is its own: ``python -m bench.worker MODE ...``.

Modes:
* ``extract``: headswap's :func:`extract.extract_features` end to end (HDF5 written);
* ``classic``: Keras 2's ``ImageDataGenerator.flow_from_directory`` + ``model.predict`` (``tf_keras``);
* ``classic_compute``: that ``tf_keras`` model alone on one pre-decoded batch (its own compute limit).

Prints one JSON line: images, seconds (the call, model build included; for ``classic`` up to the end of
the predict loop, its iterator's teardown apart in ``teardown_seconds``; for ``classic_compute`` the steady
loop only), peak RSS in MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run_extract(data: str, size: int, out: str, batch: int | None, precision: str) -> dict:
    from extract import FeatureCache, extract_features

    start = time.perf_counter()
    result = extract_features(data, out=out, size=size, weights="none", batch_size=batch, precision=precision,
                              overwrite=True, progress=False, log=lambda m: None)
    seconds = time.perf_counter() - start
    with FeatureCache(result.path) as c:
        rows = c.n_rows
    return {"images": rows, "seconds": seconds}


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


def steady_seconds(infer, batch, steps: int) -> float:
    """Seconds for ``steps`` calls of ``infer`` on ``batch``, after one call that traces and warms up."""
    infer(batch).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        infer(batch).numpy()
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    """This process's own peak RSS. Not ``getrusage``: on Linux its ``ru_maxrss`` survives ``exec``, so a
    worker would report its parent's peak when that is larger. ``VmHWM`` belongs to the new address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: an upper bound


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["extract", "classic", "classic_compute"])
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--out", default="bench_out/bench.h5")
    p.add_argument("--batch", type=int, default=None,
                   help="extract: BATCH (default: extract's own); classic: 32 (ImageDataGenerator's default)")
    p.add_argument("--precision", default="float32")
    p.add_argument("--n", type=int, default=256, help="images for classic_compute")
    args = p.parse_args()
    if args.mode == "extract":
        result = run_extract(args.data, args.size, args.out, args.batch, args.precision)
    elif args.mode == "classic_compute":
        result = run_classic_compute(args.size, args.batch or 32, args.n)
    else:
        result = run_classic(args.data, args.size, args.batch or 32)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
