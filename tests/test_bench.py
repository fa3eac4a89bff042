"""`make bench` in a quick mode: only that the harness runs and reports; timings belong to the bench itself."""

from __future__ import annotations

import re

from bench.run import marginal, run_bench


def test_marginal_rate_cancels_fixed_costs_and_refuses_noise():
    assert marginal({"images": 100, "seconds": 12.0}, {"images": 400, "seconds": 18.0}) == 50.0
    assert marginal({"images": 4, "seconds": 5.0}, {"images": 16, "seconds": 4.9}) is None


def test_quick_bench_reports_every_measurement(tmp_path):
    report = run_bench(sizes=(71,), n={71: 4}, classic=False, batch_sizes=(4,), repeats=1, out=tmp_path)
    assert (tmp_path / "results.md").read_text() == report
    row = next(line for line in report.splitlines() if line.startswith("| 71 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "4, 16"
    assert float(cells[2].split()[0]) > 0 and cells[4] == "n/a"  # compute-bound rate; classic not installed here
    # With 4 and 16 images the marginal rate is within noise: a positive rate, or n/a, never a made-up number.
    assert cells[3] == "n/a" or float(cells[3]) > 0
    assert (cells[3] == "n/a") == (cells[5] == "n/a")
    assert re.search(r"\d+ → \d+ \([+-]\d+\.\d%\)", cells[7])
    assert "Head swap on the 16-image 71 px cache: logreg" in report
    assert "PRECISION=bfloat16 at 71 px" in report and "cosine" in report
    for target in ("b/a at 71 px", "peak RSS growth", "logreg head swap", "bfloat16 ≥"):
        assert re.search(re.escape(target) + r".*(PASS|MISS)", report), target
    assert "Machine: " in report and "cores" in report
