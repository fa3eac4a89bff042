"""`make bench`: extraction throughput against the backbone's compute limit and the classic Keras 2 loop.

Everything in one run, side by side, on the machine at hand (random weights: same compute as ImageNet ones):

(a) compute-bound: the backbone on pre-decoded tensors, best of a few batch sizes;
    also timed in a fresh process at the start of every round; each round's b/a is against that round's (a);
(b) headswap extract end to end (HDF5 included), the marginal rate between N and 4N images;
(a) and (b) again with two processes (``WORKERS=2``), each with half the cores;
(c) classic: ``ImageDataGenerator.flow_from_directory`` + ``model.predict`` (tf_keras), same images, marginal;
plus b/a and b/c, the compute ceiling (the backbone's FLOPs against this CPU's matrix-product rate), bfloat16
against float32 compute at the largest size with feature cosine, the head-swap
cost against extraction, and the peak RSS of extract at N and 4N. Writes ``bench_out/results.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
DEFAULT_OUT = Path("bench_out")
TARGETS = {"b/a": 0.95, "b/c@100": 1.25, "bf16": 1.35, "cosine": 0.999, "rss": 0.10, "swap": 0.05}


def say(msg: str) -> None:
    """Progress on stderr: a full bench takes a quarter of an hour on 2 cores."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import tensorflow as tf

    return (f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GB RAM, TensorFlow {tf.__version__}, "
            f"Python {platform.python_version()}")


class CpuMeter:
    """How much of the machine's CPU other processes (and the hypervisor) took while the bench ran.

    Machine-wide busy and steal time come from ``/proc/stat``; the bench's own CPU time (this process
    plus its finished workers) from :func:`os.times`. Their difference is other load: timings taken
    with more than a few percent of it are noisy.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            fields = []
        # user nice system idle iowait irq softirq steal
        busy = sum(fields[i] for i in (0, 1, 2, 5, 6) if i < len(fields)) / ticks
        steal = (fields[7] if len(fields) > 7 else 0) / ticks
        t = os.times()
        return time.monotonic(), busy, steal, t.user + t.system + t.children_user + t.children_system

    def summary(self) -> str:
        (t0, busy0, steal0, own0), (t1, busy1, steal1, own1) = self._start, self._sample()
        capacity = (t1 - t0) * (os.cpu_count() or 1)
        if capacity <= 0 or busy1 == busy0:
            return "CPU contention: not measurable here (no /proc/stat)."
        other = max(0.0, (busy1 - busy0) - (own1 - own0)) / capacity
        steal = (steal1 - steal0) / capacity
        quiet = other + steal < 0.05
        return (f"CPU contention during the run: other processes {100 * other:.1f}%, hypervisor steal "
                f"{100 * steal:.1f}% of {os.cpu_count()} cores over {(t1 - t0) / 60:.1f} min "
                f"({'quiet' if quiet else 'NOT quiet: rerun on an idle machine before trusting the numbers'}).")


def compute_bound(size: int, n_images: int, batch_sizes: list[int], bf16: bool = False,
                  ) -> tuple[dict[str, tuple[float, int]], dict[str, np.ndarray]]:
    """Images/s of the backbone alone on random pre-decoded tensors, at its best batch size, run both
    as the plain Keras model call (``keras``) and as extract runs it (``fused``: fused batch norm); with
    ``bf16`` also as ``PRECISION=bfloat16`` extract runs it (``bfloat16``, fused too).

    Returns ``{form: (best rate, its batch)}`` and each fused form's features on the first 8 inputs.
    For each batch size the forms run one right after the other, so a disturbance tends to hit all of them.
    """
    import tensorflow as tf

    from bench.worker import steady_seconds
    from extract.backbones import backbone_function, build_backbone, get_backbone

    model = build_backbone(get_backbone("xception"), size, "avg", "none", seed=0)
    forms = {"keras": tf.function(lambda t: model(t, training=False)), "fused": backbone_function(model)}
    if bf16:
        forms["bfloat16"] = backbone_function(
            build_backbone(get_backbone("xception"), size, "avg", "none", seed=0, precision="bfloat16"))
    x = np.random.default_rng(0).uniform(0, 255, (max(batch_sizes), size, size, 3)).astype(np.float32)
    best = {form: (0.0, batch_sizes[0]) for form in forms}
    for bs in batch_sizes:
        batch = tf.constant(x[:bs])
        steps = max(2, n_images // bs)
        for form, infer in forms.items():
            rate = steps * bs / steady_seconds(infer, batch, steps)
            if rate > best[form][0]:
                best[form] = (rate, bs)
    return best, {form: forms[form](tf.constant(x[:8])).numpy() for form in forms if form != "keras"}


def conv_flops(model) -> int:
    """Floating-point operations per image in the model's convolutions and dense layers (a multiply-add is
    two), from the layers' kernel and output shapes. The rest (batch norm, activations, adds, pooling) is a
    fraction of a percent of Xception's; ``tests/test_bench.py`` checks the count against TensorFlow's profiler.
    """
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += conv_flops(layer)
            continue
        out = layer.output.shape
        positions = int(np.prod(out[1:-1]))  # output pixels (1 for a dense layer on a vector)
        if isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw, channels, mult = layer.depthwise_kernel.shape
            total += 2 * positions * channels * mult * (kh * kw + out[-1])
        elif isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.Conv2D, keras.layers.Dense)):
            # A depthwise kernel (kh, kw, channels, mult) makes kh·kw·channels·mult products per output pixel;
            # a plain one (kh, kw, in, out), or a dense (in, out), kh·kw·in·out.
            total += 2 * positions * int(np.prod(layer.kernel.shape))
    return total


def matmul_gflops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """This machine's best rate on an n×n matrix product in ``dtype``, GFLOP/s (fastest of ``repeats``, after a
    warm-up): about the most its cores do in any convolution, which oneDNN also runs as blocked matrix products."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, y = (tf.cast(rng.standard_normal((n, n), np.float32), dtype) for _ in range(2))
    tf.matmul(x, y).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(x, y).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def compute_ceiling(size: int) -> dict[str, float]:
    """Xception's GFLOP per image at ``size`` and this machine's matrix-product rates, GFLOP/s."""
    from extract.backbones import build_backbone, get_backbone

    model = build_backbone(get_backbone("xception"), size, "avg", "none", seed=0)
    return {"gflop": conv_flops(model) / 1e9, "float32": matmul_gflops("float32"),
            "bfloat16": matmul_gflops("bfloat16")}


def ceiling_line(size: int, ceiling: dict[str, float], a: float) -> str:
    """What the CPU allows: the backbone's FLOPs per image against this machine's matrix-product rate."""
    gflop, f32, b16 = ceiling["gflop"], ceiling["float32"], ceiling["bfloat16"]
    return (f"Compute ceiling at {size} px: Xception's convolutions take {gflop:.2f} GFLOP per image; this CPU "
            f"multiplies 2048×2048 matrices at {f32:.0f} GFLOP/s in float32 and {b16:.0f} in bfloat16, so float32 "
            f"cannot pass about {fmt(f32 / gflop)} img/s here (bfloat16 {fmt(b16 / gflop)}); (a) reaches "
            f"{100 * a / (f32 / gflop):.0f}% of that.")


def min_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """The lowest cosine similarity between matching rows of two (n, d) feature arrays."""
    x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    return float(((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))).min())


def cache_cosine(a: Path, b: Path) -> float:
    """:func:`min_cosine` of two caches of the same images, rows matched as ``FEATURES=a,b`` joins them."""
    from heads.train import FeatureSource

    with FeatureSource([a, b]) as source:
        joined = source.features(np.arange(len(source.labels)))
    half = joined.shape[1] // 2  # same backbone and pooling: equal widths
    return min_cosine(joined[:, :half], joined[:, half:])


def cache_file(out: Path, size: int, data: Path, precision: str = "float32", workers: int = 1) -> Path:
    return out / (f"bench-{size}-{data.name}{'' if precision == 'float32' else '-' + precision}"
                  f"{'' if workers == 1 else f'-w{workers}'}.h5")


def worker(mode: str, data: Path, size: int, out: Path, batch: int | None = None, n_images: int = 256) -> dict:
    """One run in a fresh process; mode ``extract``, ``extract-bfloat16`` (PRECISION=), ``extract-w2``
    (WORKERS=2), ``classic`` or ``classic_compute``. ``batch=None``: extract's default BATCH, and 32 for the
    classic modes."""
    mode, _, variant = mode.partition("-")
    precision = variant if variant in ("bfloat16", "float16") else "float32"
    workers = int(variant[1:]) if variant.startswith("w") else None  # None: extract's default WORKERS
    cmd = [sys.executable, "-m", "bench.worker", mode, "--data", str(data), "--size", str(size),
           "--out", str(cache_file(out, size, data, precision, workers or 1)), "--precision", precision,
           "--n", str(n_images), *(["--batch", str(batch)] if batch else []),
           *(["--workers", str(workers)] if workers else [])]
    return run_worker(cmd)


def run_worker(cmd: list[str]) -> dict:
    """Run one ``bench.worker`` command and return its result."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return worker_result(cmd, proc.returncode, proc.stdout, proc.stderr)


def worker_result(cmd: list[str], returncode: int, stdout: str, stderr: str) -> dict:
    """A finished ``bench.worker``'s JSON result (its last stdout line), or its failure with its stderr."""
    if returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def compute_in_processes(size: int, n_images: int, batch_sizes: list[int], workers: int) -> tuple[float, int]:
    """(a) as ``WORKERS=workers`` runs it: that many processes at once, each with its share of the cores,
    started together after warming up; their images/s added. Returns (best rate, its batch)."""
    import tempfile

    from extract.workers import cpu_threads

    best = (0.0, batch_sizes[0])
    for bs in batch_sizes:
        with tempfile.TemporaryDirectory() as barrier:
            cmd = [sys.executable, "-m", "bench.worker", "compute", "--data", "-", "--size", str(size),
                   "--batch", str(bs), "--n", str(n_images), "--threads", str(cpu_threads(workers)),
                   "--workers", str(workers), "--barrier", barrier]
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(workers)]
            outs = [p.communicate() for p in procs]
        runs = [worker_result(cmd, p.returncode, out, err) for p, (out, err) in zip(procs, outs)]
        rate = sum(r["images"] / r["seconds"] for r in runs)
        if rate > best[0]:
            best = (rate, bs)
    return best


def warm_page_cache(folder: Path) -> None:
    """Read every file once, so no contender pays for the first disk read (this VM reclaims cold pages)."""
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            f.read_bytes()


def best_runs(modes: list[str], subsets: dict[int, Path], size: int, repeats: int, out: Path,
              compute: Callable[[], float] | None = None) -> tuple[dict[tuple[str, int], dict], list[float]]:
    """Each (mode, N) ``repeats`` times, interleaved; keep the fastest run of each (least disturbed), with
    the largest peak RSS any of its repeats reached (memory is not a figure to take the best of), and every
    round's seconds in ``round_seconds`` (round r runs each mode's N and 4N back to back).

    ``compute`` (images/s of the backbone alone) runs first in every round, so each round's b/a sets (b)
    against an (a) measured minutes before it, not at the start of a half-hour run: this VM's speed drifts.
    Returns the runs and those per-round rates."""
    every: dict[tuple[str, int], list[dict]] = {}
    a_rounds: list[float] = []
    for rep in range(repeats):
        if compute is not None:
            a_rounds.append(compute())
            say(f"{size} px (a) compute-bound run {rep + 1}/{repeats}: {a_rounds[-1]:.1f} img/s")
        for mode in modes:
            for count, folder in subsets.items():
                run = worker(mode, folder, size, out)
                say(f"{size} px {mode} N={count} run {rep + 1}/{repeats}: {run['seconds']:.1f} s, "
                    f"peak RSS {run['peak_rss_mb']:.0f} MB")
                every.setdefault((mode, count), []).append(run)
    return {key: {**min(runs, key=lambda r: r["seconds"]),
                  "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                  "process_seconds": min(r.get("process_seconds", r["seconds"]) for r in runs),
                  "round_seconds": [r["seconds"] for r in runs],
                  "all_seconds": [f"{r['seconds']:.1f}" + (f" (+{r['teardown_seconds']:.1f} teardown)"
                                                           if r.get("teardown_seconds", 0) >= 0.5 else "")
                                  + f" [{r['peak_rss_mb']:,.0f} MB]" for r in runs]}
            for key, runs in every.items()}, a_rounds


def marginal(small: dict, large: dict) -> float | None:
    """Images/s between two runs: fixed costs (start-up, model build, file set-up) cancel.

    None when the larger run was not slower (N too small for this machine's noise): no rate to report.
    """
    extra = large["seconds"] - small["seconds"]
    return (large["images"] - small["images"]) / extra if extra > 0 else None


def round_rates(small: dict, large: dict) -> list[float | None]:
    """The marginal rate of each round, from its own N and 4N runs (back to back, so under the same
    conditions): their spread shows how far the fastest-of figures can be trusted."""
    return [marginal({"images": small["images"], "seconds": s}, {"images": large["images"], "seconds": t})
            for s, t in zip(small["round_seconds"], large["round_seconds"])]


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x / y


def round_ratios(xs: list[float | None], ys: list[float | None] | float | None) -> list[float | None]:
    """Each round's ``x / y``: against that round's own ``y``, or one ``y`` (such as (a)) for every round."""
    return [ratio(x, y) for x, y in zip(xs, ys if isinstance(ys, list) else [ys] * len(xs))]


def head_swap(cache: Path, out: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Train logreg and dense on ``cache``, each in ``repeats`` fresh processes, interleaved; keep the fastest.

    ``seconds`` runs from the process's first import to the end of its first ``train_head`` call (``heads``,
    scikit-learn, matplotlib, Keras for dense), as ``make train-head`` pays them and as the extraction it is
    set against (``process_seconds``) pays TensorFlow's; ``warm_seconds`` a second swap in the same process.
    (This process has imported TensorFlow, which loads scikit-learn and matplotlib too: timing here would
    hide their import.)
    """
    heads = ("logreg", "dense")
    runs = [[run_worker([sys.executable, "-m", "bench.worker", "head", "--data", str(cache), "--head", head,
                         "--out", str(out / "runs")]) for head in heads] for _ in range(repeats)]
    return {head: {key: min(r[k][key] for r in runs) for key in ("seconds", "warm_seconds")}
            for k, head in enumerate(heads)}


def verdict(ok: bool, measured: bool = True) -> str:
    return "PASS" if ok else "MISS" if measured else "MISS (not measurable: within noise)"


def ratio_check(what: str, value: float | None, rounds: list[float | None], target: float) -> str:
    """A ratio's target line. PASS needs both the fastest-of figure and the median of the rounds' own ratios
    (a round not measurable counts as 0): the fastest N and 4N runs may come from different rounds."""
    median = float(np.median([0.0 if r is None else r for r in rounds])) if rounds else None
    ok = (value or 0) >= target and (median is None or median >= target)
    return (f"- {what} ≥ {target}: {fmt(value, 2)} {verdict(ok, value is not None)} "
            f"(per round: {', '.join(fmt(r, 2) for r in rounds)}; median {fmt(median, 2)})")


def run_bench(data: Path | None = None, sizes: tuple[int, ...] = (100, 299), n: dict[int, int] | None = None,
              classic: bool | None = None, batch_sizes: tuple[int, ...] = (16, 32, 64), repeats: int = 3,
              out: Path = DEFAULT_OUT, bf16_extract: bool = True, workers: int = 2) -> str:
    """Measure everything and return the markdown report (also written to ``out/results.md``)."""
    from bench.data import synthetic_subsets, user_subsets

    meter = CpuMeter()
    out.mkdir(parents=True, exist_ok=True)
    n = n or {100: 512, 299: 64}  # 1,536 images between N and 4N at 100 px: start-up noise ~2%
    classic = importlib.util.find_spec("tf_keras") is not None if classic is None else classic
    lines = [f"# headswap bench\n\nMachine: {machine()}.", "Backbone: Xception, random weights (the same compute "
             "as ImageNet weights), POOLING=avg, DTYPE=float16, extract's default BATCH (64 up to 160 px, else 32; "
             "the classic loop: 32, ImageDataGenerator's default). Each extract/classic rate is the marginal "
             f"between the fastest of {repeats} interleaved runs at N and the fastest at 4N, in fresh processes, "
             "page cache warm (a ratio's target passes only if the median of the rounds' own ratios passes too); "
             "peak RSS is the largest of them.",
             "Input: " + (f"DATA={data}" if data else "generated 500×375 JPEGs (quality 90)") + ".\n",
             "(a) is the backbone alone on pre-decoded tensors, run as extract runs it (fused batch norm), at its "
             "best batch: the fastest of this process's runs at each batch size and of a fresh-process run at the "
             "start of each round (each round's b/a sets (b) against its own). Beside it the same backbone called "
             "as the Keras model, and Keras 2's (tf_keras) Xception, the model the classic loop (c) runs, alone on "
             "tensors at batch 32. "
             + (f"The WORKERS={workers} rows run (a) as {workers} processes at once, each with its share of the cores, "
                f"and (b) as `make extract WORKERS={workers}` (peak RSS: all its processes' peaks added up).\n"
                if workers > 1 else "\n"),
             "| size | N, 4N | (a) compute img/s (batch) | Keras 3 model call | tf_keras model | (b) extract "
             "img/s | (c) classic img/s | b/a | b/c | c / its model | RSS N → 4N (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    checks, swap_lines, ceiling_lines, bf16_line, every_run, every_round = [], [], [], "", [], []
    for size in sizes:
        base = n.get(size, 64)
        subsets = user_subsets(data, out / "data", [base, 4 * base]) if data else \
            synthetic_subsets(out / "data", [base, 4 * base])
        warm_page_cache(subsets[4 * base])
        bf16_size = size == max(sizes)
        say(f"{size} px: backbone alone on tensors (batch {', '.join(map(str, batch_sizes))}; Keras call and fused"
            + (", and fused in bfloat16)" if bf16_size else ")"))
        compute, features = compute_bound(size, max(64, 2 * base), list(batch_sizes), bf16=bf16_size)
        (a, a_bs), (keras_call, keras_bs) = compute["fused"], compute["keras"]
        say(f"{size} px: compute ceiling (Xception's FLOPs, this CPU's matrix-product rate)")
        ceiling = compute_ceiling(size)
        classic_model = None
        if classic:
            say(f"{size} px: tf_keras Xception alone on tensors")
            run = worker("classic_compute", subsets[base], size, out, n_images=max(64, 2 * base))
            classic_model = run["images"] / run["seconds"]
        a_w = None
        if workers > 1:
            say(f"{size} px: backbone alone on tensors in {workers} processes at once")
            a_w, a_w_bs = compute_in_processes(size, max(64, 2 * base), list(batch_sizes), workers)
        bf16_e2e = bf16_size and bf16_extract
        modes = (["extract"] + ([f"extract-w{workers}"] if workers > 1 else []) + (["classic"] if classic else [])
                 + (["extract-bfloat16"] if bf16_e2e else []))
        runs, a_rounds = best_runs(modes, subsets, size, repeats, out, compute=lambda: compute_in_processes(
            size, max(64, 2 * base), [a_bs], 1)[0])
        # (a) is the fastest of all its measurements, as (b) and (c) are the fastest of theirs.
        a = max([a, *a_rounds])
        ceiling_lines.append(ceiling_line(size, ceiling, a))
        every_run.append(f"- {size} px: " + "; ".join(
            f"{mode} N={count}: " + ", ".join(run["all_seconds"])
            for (mode, count), run in runs.items()))
        small, large = runs[("extract", base)], runs[("extract", 4 * base)]
        b = marginal(small, large)
        growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
        c = marginal(runs[("classic", base)], runs[("classic", 4 * base)]) if classic else None
        per_round = {mode: round_rates(runs[(mode, base)], runs[(mode, 4 * base)]) for mode in modes}
        round_ba = round_ratios(per_round["extract"], a_rounds)
        round_bc = round_ratios(per_round["extract"], per_round["classic"]) if classic else []
        every_round.append(f"- {size} px: " + "; ".join(
            [f"(a) {', '.join(map(fmt, a_rounds))}"]
            + [f"{mode} " + ", ".join(map(fmt, rates)) for mode, rates in per_round.items()]
            + [f"b/a {', '.join(fmt(v, 2) for v in round_ba)}"]
            + ([f"b/c {', '.join(fmt(v, 2) for v in round_bc)}"] if classic else [])))
        lines.append(
            f"| {size} | {base}, {4 * base} | {a:.1f} ({a_bs}) | {keras_call:.1f} ({keras_bs}) | {fmt(classic_model)} "
            f"| {fmt(b)} | {fmt(c)} | {fmt(ratio(b, a), 2)} | {fmt(ratio(b, c), 2)} | "
            f"{fmt(ratio(c, classic_model), 2)} | {small['peak_rss_mb']:.0f} → {large['peak_rss_mb']:.0f} "
            f"({100 * growth:+.1f}%) |")
        checks.append(ratio_check(f"b/a at {size} px", ratio(b, a), round_ba, TARGETS["b/a"]))
        if classic and size == 100:
            checks.append(ratio_check("b/c at 100 px", ratio(b, c), round_bc, TARGETS["b/c@100"]))
        checks.append(f"- peak RSS growth N → 4N at {size} px < 10%: {100 * growth:+.1f}% "
                      f"{verdict(growth < TARGETS['rss'])}")
        if workers > 1:
            w_small, w_large = runs[(f"extract-w{workers}", base)], runs[(f"extract-w{workers}", 4 * base)]
            b_w = marginal(w_small, w_large)
            w_growth = w_large["peak_rss_mb"] / w_small["peak_rss_mb"] - 1
            lines.append(
                f"| {size}, WORKERS={workers} | {base}, {4 * base} | {a_w:.1f} ({a_w_bs}) | | | {fmt(b_w)} "
                f"| {fmt(c)} | "
                f"{fmt(ratio(b_w, a_w), 2)} | {fmt(ratio(b_w, c), 2)} | | {w_small['peak_rss_mb']:.0f} → "
                f"{w_large['peak_rss_mb']:.0f} ({100 * w_growth:+.1f}%) |")
            round_w = per_round[f"extract-w{workers}"]
            checks.append(ratio_check(f"WORKERS={workers}: b/a at {size} px (both in {workers} processes)",
                                      ratio(b_w, a_w), round_ratios(round_w, a_w), TARGETS["b/a"]))
            if classic and size == 100:
                checks.append(ratio_check(f"WORKERS={workers}: b/c at 100 px", ratio(b_w, c),
                                          round_ratios(round_w, per_round["classic"]),
                                          TARGETS["b/c@100"]))
            checks.append(f"- WORKERS={workers}: peak RSS growth N → 4N at {size} px < 10%: {100 * w_growth:+.1f}% "
                          f"{verdict(w_growth < TARGETS['rss'])}")
        say(f"{size} px: head swap (logreg, dense) on the {4 * base}-image cache")
        costs = head_swap(cache_file(out, size, subsets[4 * base]), out, repeats)
        logreg, dense = costs["logreg"], costs["dense"]
        extraction = large["process_seconds"]
        share = logreg["seconds"] / extraction
        swap_lines.append(
            f"Head swap on the {4 * base}-image {size} px cache (imports, then the whole `train_head`: read, fit, "
            f"evaluate, save, plots, report), in a fresh process as `make train-head` runs it: logreg "
            f"{logreg['seconds']:.2f} s, dense {dense['seconds']:.2f} s; a second swap in the same process, its "
            f"imports done: logreg {logreg['warm_seconds']:.2f} s, dense {dense['warm_seconds']:.2f} s. Extracting "
            f"the cache took {extraction:.1f} s (imports, TensorFlow's included).")
        checks.append(f"- logreg head swap < 5% of extraction at {size} px: {100 * share:.1f}% "
                      f"{verdict(share < TARGETS['swap'])} (a second swap in the same process, against the "
                      f"extraction without its imports ({large['seconds']:.1f} s): "
                      f"{100 * logreg['warm_seconds'] / large['seconds']:.1f}%)")
        if bf16_size:
            bf16, bf16_bs = compute["bfloat16"]  # fused like (a), measured beside it in this process
            a_beside = compute["fused"][0]
            cos = min_cosine(features["fused"], features["bfloat16"])
            bf16_line = (f"PRECISION=bfloat16 at {size} px (compute-bound, fused like (a), each batch size run right "
                         f"after (a)'s): {bf16:.1f} img/s (batch {bf16_bs}) against float32 {a_beside:.1f} img/s: "
                         f"×{bf16 / a_beside:.2f}; feature cosine to float32 on those tensors ≥ {cos:.5f}.")
            checks.append(f"- bfloat16 ≥ ×{TARGETS['bf16']} float32 at {size} px, compute-bound: "
                          f"×{bf16 / a_beside:.2f} {verdict(bf16 / a_beside >= TARGETS['bf16'])}; cosine ≥ "
                          f"{TARGETS['cosine']} on tensors: {cos:.5f} {verdict(cos >= TARGETS['cosine'])}")
            if bf16_e2e:
                b16 = marginal(runs[("extract-bfloat16", base)], runs[("extract-bfloat16", 4 * base)])
                cached = cache_cosine(cache_file(out, size, subsets[4 * base]),
                                      cache_file(out, size, subsets[4 * base], "bfloat16"))
                bf16_line += (f" End to end, `make extract PRECISION=bfloat16` (marginal {base} → {4 * base}): "
                              f"{fmt(b16)} img/s against float32 {fmt(b)}: ×{fmt(ratio(b16, b), 2)}; cosine of "
                              f"the two caches' features ({4 * base} images, stored as float16) ≥ {cached:.5f}.")
                rounds_16 = round_ratios(per_round["extract-bfloat16"], per_round["extract"])
                checks.append(ratio_check(f"bfloat16 / float32 at {size} px, end to end", ratio(b16, b), rounds_16,
                                          TARGETS["bf16"])
                              + f"; cosine ≥ {TARGETS['cosine']} on the cached images: {cached:.5f} "
                                f"{verdict(cached >= TARGETS['cosine'])}")
    if not (classic and 100 in sizes):  # a target not measured is said so, not left out
        checks.append(f"- b/c at 100 px ≥ {TARGETS['b/c@100']}: not measured ("
                      + ("no 100 px run" if classic else "the classic loop did not run: it needs tf_keras, "
                         "`pip install -e '.[bench]'` as `make bench` does, and no --no-classic")
                      + ")")
    report = "\n".join(lines + ["", *ceiling_lines, "", *swap_lines, "", bf16_line, "", "Targets:", *checks, "",
                                 meter.summary(), "",
                                 "Every run, seconds [peak RSS] (the figures above take the fastest of each, and "
                                 "the largest peak). A classic run "
                                 "ends with its last batch; \"teardown\" is the time tf.data then took to destroy "
                                 "its iterator (autotuning's thread, TF 2.21), which the classic loop's user also "
                                 "waits for but (c) leaves out:", *every_run, "",
                                 "Each round, images/s: (a), the backbone alone in a fresh process at (a)'s batch, run "
                                 "first in the round; the marginal rate of each mode (its N and 4N runs back to back); "
                                 "b/a against that round's (a), b/c against its (c):", *every_round]) + "\n"
    (out / "results.md").write_text(report)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="image folder to use instead of generated JPEGs")
    p.add_argument("--size", type=int, default=None, help="one input size (default: 100 and 299)")
    p.add_argument("--n", type=int, default=None,
                   help="N images (4N is also run); default 512 at 100 px, 64 at 299 px")
    p.add_argument("--no-classic", action="store_true")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the fastest counts")
    p.add_argument("--workers", type=int, default=2, help="also measure WORKERS=K processes (1: skip)")
    args = p.parse_args(argv)
    sizes = (args.size,) if args.size else (100, 299)
    n = {s: args.n for s in sizes} if args.n else None
    print(run_bench(Path(args.data) if args.data else None, sizes, n, classic=False if args.no_classic else None,
                    repeats=args.repeats, workers=args.workers))


if __name__ == "__main__":
    main()
