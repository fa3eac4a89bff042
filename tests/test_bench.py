"""`make bench` in a quick mode: only that the harness runs and reports; timings belong to the bench itself."""

from __future__ import annotations

import re

from bench.run import run_bench


def test_quick_bench_reports_every_measurement(tmp_path):
    report = run_bench(sizes=(71,), n={71: 4}, classic=False, batch_sizes=(4,), repeats=1, out=tmp_path)
    assert (tmp_path / "results.md").read_text() == report
    row = next(line for line in report.splitlines() if line.startswith("| 71 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "4, 16"
    compute, extract_rate = float(cells[2].split()[0]), float(cells[3])
    assert compute > 0 and extract_rate > 0 and cells[4] == "n/a"
    assert float(cells[5]) == round(extract_rate / compute, 2)
    assert re.search(r"\d+ → \d+ \([+-]\d+\.\d%\)", cells[7])
    assert "Head swap on the 16-image 71 px cache: logreg" in report
    assert "PRECISION=bfloat16 at 71 px" in report and "cosine" in report
    for target in ("b/a at 71 px", "peak RSS growth", "logreg head swap", "bfloat16 ≥"):
        assert re.search(re.escape(target) + r".*(PASS|MISS)", report), target
    assert "Machine: " in report and "cores" in report
