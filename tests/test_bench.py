"""`make bench` in a quick mode: only that the harness runs and reports; timings belong to the bench itself."""

from __future__ import annotations

import re

from PIL import Image

from bench.data import TOP_LEVEL_CLASS, user_subsets
from bench.run import marginal, ratio_check, round_rates, run_bench


def test_marginal_rate_cancels_fixed_costs_and_refuses_noise():
    assert marginal({"images": 100, "seconds": 12.0}, {"images": 400, "seconds": 18.0}) == 50.0
    assert marginal({"images": 4, "seconds": 5.0}, {"images": 16, "seconds": 4.9}) is None


def test_round_rates_pair_each_rounds_own_runs():
    small = {"images": 100, "round_seconds": [12.0, 10.0, 11.0]}
    large = {"images": 400, "round_seconds": [18.0, 16.0, 10.5]}
    assert round_rates(small, large) == [50.0, 50.0, None]  # not fastest-with-fastest (300 / 5.5), and no noise


def test_user_data_subsets_hold_what_both_readers_take(tmp_path):
    data = tmp_path / "data"
    for rel in ("cats/a.jpg", "cats/b.png", "dogs/c.jpg", "dogs/d.gif", "dogs/e.webp", "loose.jpg", ".hidden/f.jpg"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(data / rel)
    subsets = user_subsets(data, tmp_path / "subsets", [1, 4])
    # flow_from_directory skips .gif and .webp, so the bench leaves them out of both; loose files get a class folder
    # inside the subset (a link named "/0000_loose.jpg" would have pointed at the file system's root).
    held = [p.relative_to(subsets[4]) for p in subsets[4].rglob("*") if p.is_file()]
    assert sorted(f"{h.parts[0]}/{h.name.split('_', 1)[1]}" for h in held) == [
        f"{TOP_LEVEL_CLASS}/loose.jpg", "cats/a.jpg", "cats/b.png", "dogs/c.jpg"]
    assert len([p for p in subsets[1].rglob("*") if p.is_file()]) == 1


def test_quick_bench_reports_every_measurement(tmp_path):
    """The bench's processes for real, at tiny N: (a), (b), the head swaps and bfloat16 compute-bound. The
    WORKERS=2 rows, PRECISION=bfloat16 end to end and the classic loop are left out to keep the suite short
    (`make extract WORKERS=2` itself is tested in test_workers.py): the stand-in test below checks their
    report lines. N=8: 32 images, enough for dense's early-stopping holdout (with 16 it ran all 100 epochs)."""
    report = run_bench(sizes=(71,), n={71: 8}, classic=False, batch_sizes=(4,), repeats=1, out=tmp_path,
                       bf16_extract=False, workers=1)
    assert (tmp_path / "results.md").read_text() == report
    row = next(line for line in report.splitlines() if line.startswith("| 71 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "8, 32"
    # Compute-bound rates as extract runs the backbone (fused) and as the plain Keras call; classic not run here.
    assert float(cells[2].split()[0]) > 0 and float(cells[3].split()[0]) > 0
    assert cells[4] == cells[6] == cells[9] == "n/a"
    # With 8 and 32 images the marginal rate is within noise: a positive rate, or n/a, never a made-up number.
    assert cells[5] == "n/a" or float(cells[5]) > 0
    assert (cells[5] == "n/a") == (cells[7] == "n/a")
    assert re.search(r"\d+ → \d+ \([+-]\d+\.\d%\)", cells[10])
    assert "WORKERS=" not in report  # workers=1: no two-process rows, and no empty ones
    # Head swaps run in fresh processes (this one has TensorFlow, which imports scikit-learn and matplotlib).
    assert re.search(r"Head swap on the 32-image 71 px cache .* in a fresh process as `make train-head` runs it: "
                     r"logreg \d+\.\d\d s, dense \d+\.\d\d s; a second swap in the same process, its imports "
                     r"done: logreg \d+\.\d\d s, dense \d+\.\d\d s\. Extracting the cache took \d+\.\d s", report)
    assert "PRECISION=bfloat16 at 71 px" in report and "cosine" in report
    assert re.search(r"^Compute ceiling at 71 px: Xception's convolutions take \d\.\d\d GFLOP per image; this CPU "
                     r"multiplies 2048×2048 matrices at \d+ GFLOP/s in float32 and \d+ in bfloat16, so float32 cannot "
                     r"pass about \d+\.\d img/s here \(bfloat16 \d+\.\d\); \(a\) reaches \d+% of that\.$", report, re.M)
    for target in ("b/a at 71 px", "peak RSS growth", "logreg head swap", "bfloat16 ≥"):
        assert re.search(re.escape(target) + r".*(PASS|MISS)", report), target
    assert "Machine: " in report and "cores" in report
    assert re.search(r"^- 71 px: extract N=8: \d+\.\d \[[\d,]+ MB\]; extract N=32: \d+\.\d \[[\d,]+ MB\]$", report,
                     re.M)
    # bfloat16 compute-bound, measured beside float32 in the same call.
    assert re.search(r"bfloat16 ≥ ×1\.35 float32 at 71 px, compute-bound: ×\d+\.\d\d (PASS|MISS).*cosine ≥ 0\.999 on "
                     r"tensors: \d\.\d{5} (PASS|MISS)", report)
    # A target the run could not measure is reported as such, not left out.
    assert "- b/c at 100 px ≥ 1.25: not measured (the classic loop did not run" in report
    # Each round's own marginal rates, and the ratios per round beside the fastest-of verdicts.
    assert re.search(r"^- 71 px: \(a\) \d+\.\d; extract (n/a|\d+\.\d); b/a (n/a|\d+\.\d\d)$", report, re.M)
    assert re.search(r"b/a at 71 px ≥ 0\.95: .*\(per round: (n/a|\d+\.\d\d); median (n/a|\d+\.\d\d)\)", report)
    assert re.search(r"CPU contention during the run: other processes \d+\.\d%, hypervisor steal \d+\.\d%", report)


def test_conv_flops_agree_with_tensorflows_profiler():
    """The ceiling's FLOP count, from Keras layer shapes, against TensorFlow's own per-op count of the traced
    graph (which also counts batch norm, activations, adds and pooling: a fraction of a percent more)."""
    import tensorflow as tf

    from bench.run import conv_flops
    from extract.backbones import build_backbone, get_backbone

    model = build_backbone(get_backbone("xception"), 71, "avg", "none")
    ours = conv_flops(model)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, 71, 71, 3), tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    theirs = tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
    assert 0.99 * theirs < ours <= theirs


def test_cpu_meter_counts_other_load_not_the_benchs_own(monkeypatch):
    """Machine busy time minus the bench's own CPU (children included) is other processes' share."""
    import bench.run as run

    samples = iter([(0.0, 100.0, 7.0, 3.0),  # start: monotonic s, machine busy s, steal s, own CPU s
                    (10.0, 115.0, 8.0, 13.0)])  # 10 s later: machine busy +15 s, of which the bench +10 s
    monkeypatch.setattr(run.CpuMeter, "_sample", staticmethod(lambda: next(samples)))
    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)
    summary = run.CpuMeter().summary()
    assert "other processes 25.0%, hypervisor steal 5.0% of 2 cores" in summary  # 5 s and 1 s of 20 core-seconds
    assert "NOT quiet" in summary


def test_worker_peak_rss_is_its_own_not_its_parents():
    """A 300 MB parent starts a worker: getrusage's ru_maxrss survives exec (reports ≥ 300 MB); the bench's
    measure must not."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    child = ("import json, resource\nfrom bench.worker import peak_rss_mb\n"
             "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak_rss_mb()]))")
    parent = ("import subprocess, sys\nbig = bytearray(300 * 2**20)\nbig[::4096] = b'x' * len(big[::4096])\n"
              f"sys.stdout.write(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True,"
              " check=True).stdout)")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    inherited, own = json.loads(out.stdout)
    assert inherited >= 300 and own < 150


def test_a_ratio_passes_only_when_its_rounds_agree():
    assert "0.97 PASS (per round: 0.96, 0.95, 0.99; median 0.96)" in ratio_check("b/a", 0.97, [0.96, 0.95, 0.99], 0.95)
    # The fastest N and 4N runs paired across rounds can pass where no round's own pair does.
    assert "0.96 MISS" in ratio_check("b/a", 0.96, [0.93, 0.94, 0.96], 0.95)
    assert "median 0.00" in ratio_check("b/a", 0.99, [None, None, 0.99], 0.95)  # rounds within noise count as 0
    assert "0.90 MISS (per round" in ratio_check("b/a", 0.90, [0.99, 0.99, 0.99], 0.95)  # measured: a plain miss
    assert "n/a MISS (not measurable: within noise)" in ratio_check("b/a", None, [None, 0.99, 0.99], 0.95)


def test_a_full_runs_report_from_stand_in_runs(tmp_path, monkeypatch):
    """Both sizes, 3 rounds, the classic loop, WORKERS=2 and bfloat16 end to end, with every measurement replaced
    by a known number (no process, no image): the rates, ratios and verdicts are the arithmetic of those numbers."""
    from pathlib import Path

    import numpy as np

    import bench.data
    import bench.run as run

    base = {100: 512, 299: 64}
    seconds = {  # (mode, N or 4N): the three rounds' seconds; 3N images more take 15 s (extract) or 20 s (classic)
        "extract": ([10.0, 10.5, 11.0], [25.0, 25.5, 27.0]), "extract-w2": ([9.0] * 3, [22.0] * 3),
        "classic": ([12.0] * 3, [32.0] * 3), "extract-bfloat16": ([6.0] * 3, [14.0] * 3)}
    calls: dict[tuple[str, int], int] = {}

    def worker(mode, data, size, out, batch=None, n_images=256):
        if mode == "classic_compute":
            return {"images": 64, "seconds": 0.8}
        n = int(Path(data).name)
        k = calls[(mode, n)] = calls.get((mode, n), -1) + 1
        small, large = seconds[mode]
        return {"images": n, "seconds": (small if n in base.values() else large)[k] * (size / 100),
                "process_seconds": 30.0, "peak_rss_mb": 1000.0 + n / 100}

    monkeypatch.setattr(bench.data, "synthetic_subsets", lambda root, sizes: {n: tmp_path / str(n) for n in sizes})
    monkeypatch.setattr(run, "warm_page_cache", lambda folder: None)
    features = np.ones((8, 4), np.float32)
    monkeypatch.setattr(run, "compute_bound", lambda size, n, bs, bf16=False: (
        {"fused": (100.0, 32), "keras": (95.0, 32), **({"bfloat16": (190.0, 32)} if bf16 else {})},
        {"fused": features, **({"bfloat16": features} if bf16 else {})}))
    # (a) in a fresh process at the start of each round: 100 px 100, 96, 90; 299 px 100, 105 (faster than this
    # process's 100: it becomes (a)), 90. Two processes at once (WORKERS=2): 110.
    a_rounds = iter([100.0, 96.0, 90.0, 100.0, 105.0, 90.0])
    monkeypatch.setattr(run, "compute_in_processes", lambda size, n, bs, workers: (
        (110.0, 32) if workers > 1 else (next(a_rounds), bs[0])))
    monkeypatch.setattr(run, "compute_ceiling", lambda size: {"gflop": 1.6 * (size / 100) ** 2, "float32": 200.0,
                                                             "bfloat16": 360.0})
    monkeypatch.setattr(run, "worker", worker)
    monkeypatch.setattr(run, "head_swap", lambda cache, out, repeats: {
        "logreg": {"seconds": 1.2, "warm_seconds": 0.3}, "dense": {"seconds": 6.0, "warm_seconds": 2.0}})
    monkeypatch.setattr(run, "cache_cosine", lambda a, b: 0.99999)
    report = run_bench(classic=True, out=tmp_path / "out")

    # 100 px: b = 1536 / (25 - 10) = 102.4 from the fastest runs; (c) 1536 / 20 = 76.8; (a) 100.
    assert "| 100 | 512, 2048 | 100.0 (32) | 95.0 (32) | 80.0 | 102.4 | 76.8 | 1.02 | 1.33 |" in report
    # Each round's b/a against that round's own (a): 102.4 / 100, 102.4 / 96, 96 / 90.
    assert "- b/a at 100 px ≥ 0.95: 1.02 PASS (per round: 1.02, 1.07, 1.07; median 1.07)" in report
    assert "- b/c at 100 px ≥ 1.25: 1.33 PASS (per round: 1.33, 1.33, 1.25; median 1.33)" in report
    # WORKERS=2: 1536 / 13 = 118.2 against (a) in two processes, 110.
    assert "| 100, WORKERS=2 | 512, 2048 | 110.0 (32) | | | 118.2 | 76.8 | 1.07 | 1.54 |" in report
    # 299 px: every time x 2.99, so b = 1536 / 44.85 ... with N=64: 192 / (15 x 2.99) = 4.3.
    assert "| 299 | 64, 256 | 105.0 (32) |" in report and "| 4.3 |" in report
    # bfloat16 at 299 px: x1.90 compute-bound; end to end 192 / (8 x 2.99) = 8.0 against 4.3: x1.87.
    assert "bfloat16 ≥ ×1.35 float32 at 299 px, compute-bound: ×1.90 PASS; cosine ≥ 0.999 on tensors: 1.00000 PASS" \
        in report
    assert "- bfloat16 / float32 at 299 px, end to end ≥ 1.35: 1.87 PASS" in report
    assert "cosine ≥ 0.999 on the cached images: 0.99999 PASS" in report
    # Ceiling: 200 GFLOP/s over 1.6 GFLOP = 125 img/s, of which (a)'s 100 is 80%; at 299 px 1.6 x 2.99² = 14.30.
    assert ("Compute ceiling at 100 px: Xception's convolutions take 1.60 GFLOP per image; this CPU multiplies "
            "2048×2048 matrices at 200 GFLOP/s in float32 and 360 in bfloat16, so float32 cannot pass about 125.0 "
            "img/s here (bfloat16 225.0); (a) reaches 80% of that.") in report
    assert "Compute ceiling at 299 px: Xception's convolutions take 14.30 GFLOP" in report
    # Head swap: 1.2 s against a 30 s extraction (imports included) = 4.0%.
    assert "- logreg head swap < 5% of extraction at 100 px: 4.0% PASS" in report
    assert "- peak RSS growth N → 4N at 100 px < 10%: +1.5% PASS" in report  # 1005.12 -> 1020.48 MB
    # WORKERS=2 against (a) in two processes, 110, and against (c), every round: 118.2 / 110, 118.2 / 76.8.
    assert ("- WORKERS=2: b/a at 100 px (both in 2 processes) ≥ 0.95: 1.07 PASS (per round: 1.07, 1.07, 1.07; "
            "median 1.07)") in report
    assert "- WORKERS=2: b/c at 100 px ≥ 1.25: 1.54 PASS (per round: 1.54, 1.54, 1.54; median 1.54)" in report
    assert "- WORKERS=2: peak RSS growth N → 4N at 100 px < 10%: +1.5% PASS" in report
    assert ("- 100 px: (a) 100.0, 96.0, 90.0; extract 102.4, 102.4, 96.0; extract-w2 118.2, 118.2, 118.2; classic "
            "76.8, 76.8, 76.8; b/a 1.02, 1.07, 1.07; b/c 1.33, 1.33, 1.25") in report
    assert "extract-w2 N=512: 9.0 [1,005 MB], 9.0 [1,005 MB], 9.0 [1,005 MB]" in report


def test_logreg_c_prints_a_row_per_c(folder_cache, capsys):
    """``bench.logreg_c`` runs (timings belong to the bench): a row per C with the head's lbfgs iteration count
    and fit seconds, and the random-weights note under the table."""
    from bench import logreg_c

    logreg_c.main(["--features", str(folder_cache), "--C", "0.001,100"])
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith(("| 0.001", "| 100"))]
    assert [r[0].strip() for r in rows] == ["0.001", "100"]
    assert all(int(r[1]) >= 1 and float(r[2]) >= 0 for r in rows)
    assert "random backbone weights" in out
