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
    report = run_bench(sizes=(71,), n={71: 4}, classic=False, batch_sizes=(4,), repeats=1, out=tmp_path)
    assert (tmp_path / "results.md").read_text() == report
    row = next(line for line in report.splitlines() if line.startswith("| 71 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "4, 16"
    # Compute-bound rates as extract runs the backbone (fused) and as the plain Keras call; classic not run here.
    assert float(cells[2].split()[0]) > 0 and float(cells[3].split()[0]) > 0
    assert cells[4] == cells[6] == cells[9] == "n/a"
    # With 4 and 16 images the marginal rate is within noise: a positive rate, or n/a, never a made-up number.
    assert cells[5] == "n/a" or float(cells[5]) > 0
    assert (cells[5] == "n/a") == (cells[7] == "n/a")
    assert re.search(r"\d+ → \d+ \([+-]\d+\.\d%\)", cells[10])
    # The same in two processes: (a) side by side, (b) as `make extract WORKERS=2`, RSS of every process.
    row = next(line for line in report.splitlines() if line.startswith("| 71, WORKERS=2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "4, 16" and float(cells[2].split()[0]) > 0 and cells[3] == cells[4] == cells[9] == ""
    assert cells[5] == "n/a" or float(cells[5]) > 0
    assert re.search(r"\d+ → \d+ \([+-]\d+\.\d%\)", cells[10])
    assert re.search(r"WORKERS=2: b/a at 71 px .*(PASS|MISS)", report)
    # Head swaps run in fresh processes (this one has TensorFlow, which imports scikit-learn and matplotlib).
    assert re.search(r"Head swap on the 16-image 71 px cache .* in a fresh process as `make train-head` runs it: "
                     r"logreg \d+\.\d\d s, dense \d+\.\d\d s; a second swap in the same process, its imports "
                     r"done: logreg \d+\.\d\d s, dense \d+\.\d\d s\. Extracting the cache took \d+\.\d s", report)
    assert "PRECISION=bfloat16 at 71 px" in report and "cosine" in report
    assert re.search(r"End to end, `make extract PRECISION=bfloat16` \(marginal 4 → 16\): (n/a|\d+\.\d)", report)
    for target in ("b/a at 71 px", "peak RSS growth", "logreg head swap", "bfloat16 ≥"):
        assert re.search(re.escape(target) + r".*(PASS|MISS)", report), target
    assert "Machine: " in report and "cores" in report
    assert re.search(r"- 71 px: extract N=4: \d+\.\d \[[\d,]+ MB\]; extract N=16: \d+\.\d \[[\d,]+ MB\]; "
                     r"extract-w2 N=4: \d+\.\d", report)
    # bfloat16: compute-bound beside float32, end to end, and the two caches' features compared image by image.
    assert re.search(r"bfloat16 ≥ ×1\.35 float32 at 71 px, compute-bound: ×\d+\.\d\d (PASS|MISS).*cosine ≥ 0\.999 on "
                     r"tensors: \d\.\d{5} (PASS|MISS)", report)
    assert re.search(r"bfloat16 / float32 at 71 px, end to end ≥ 1\.35: (n/a|\d+\.\d\d) (PASS|MISS).* \(per round: .*"
                     r"median .*\); cosine ≥ 0\.999 on the cached images: \d\.\d{5} (PASS|MISS)", report)
    # A target the run could not measure is reported as such, not left out.
    assert "- b/c at 100 px ≥ 1.25: not measured (the classic loop did not run" in report
    # Each round's own marginal rates, and the ratios per round beside the fastest-of verdicts.
    assert re.search(r"^- 71 px: extract (n/a|\d+\.\d); extract-w2 (n/a|\d+\.\d); extract-bfloat16 "
                     r"(n/a|\d+\.\d); b/a (n/a|\d\.\d\d)$", report, re.M)
    assert re.search(r"b/a at 71 px ≥ 0\.95: .*\(per round: (n/a|\d\.\d\d); median (n/a|\d\.\d\d)\)", report)
    assert re.search(r"CPU contention during the run: other processes \d+\.\d%, hypervisor steal \d+\.\d%", report)


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
    assert "0.90 MISS" in ratio_check("b/a", 0.90, [0.99, 0.99, 0.99], 0.95)
