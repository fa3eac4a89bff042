"""WORKERS=K: one extraction process per device (here: two processes sharing the CPU's cores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_class_folders

from extract import FeatureCache, extract_features
from extract.pipeline import make_config
from extract.workers import WorkerError, WorkerPool, _shards, cpu_threads, default_workers

REPO = Path(__file__).resolve().parents[1]
KW = dict(size=71, weights="none", dtype="float32", progress=False)


def _rows(path: Path) -> dict:
    with FeatureCache(path) as c:
        return {"path": list(c.column("path")), "round": c.column("round").tolist(), "features": c.features(),
                "skipped": sorted(c.skipped())}


def test_two_workers_write_the_cache_one_process_writes(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=4)  # 12 images
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    logs: list[str] = []
    # Batches of 5 views over 2 workers (uneven: 3 and 2 batches, the last one short), augmented rounds
    # (per-view seeds must follow their views into the shards), parts flushed every 4 rows.
    kw = dict(KW, batch_size=5, augment="tutorial", rounds=1, flush_rows=4)
    two = extract_features(data, out=tmp_path / "two.h5", workers=2, log=logs.append, **kw)
    one = extract_features(data, out=tmp_path / "one.h5", log=lambda m: None, **kw)
    assert [line for line in logs if line.startswith("worker ")] == [
        f"worker {k} of 2: CPU, {cpu_threads(2)} intra-op thread{'s' if cpu_threads(2) > 1 else ''}" for k in (1, 2)]
    assert two.rows == one.rows > 12 and two.skipped == one.skipped == 1
    assert len(two.worker_peak_rss_mb) == 2 and min(two.worker_peak_rss_mb) > 100  # each loaded TensorFlow
    a, b = _rows(two.path), _rows(one.path)
    assert a["path"] == b["path"] and a["round"] == b["round"] and a["skipped"] == b["skipped"]
    assert set(a["round"]) == {0, 1}
    np.testing.assert_allclose(a["features"], b["features"], atol=1e-5, rtol=1e-4)


def test_shards_interleave_whole_batches():
    shards = _shards(11, 3, 2)  # batches [0 1 2] [3 4 5] [6 7 8] [9 10]
    assert [s.tolist() for s in shards] == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10]]


def test_a_worker_that_fails_is_reported_with_its_error(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    bad = tmp_path / "xception.weights.h5"
    bad.write_bytes(b"not an HDF5 file")  # the parent only hashes it; each worker fails to load it
    with pytest.raises(WorkerError, match=r"(?s)extract worker \d of 2 failed:.*Traceback.*rerun the same command"):
        extract_features(data, out=tmp_path / "c.h5", workers=2, batch_size=2, log=lambda m: None,
                         **dict(KW, weights=str(bad)))


def _killed_by_oom(k, workers, job, queue, parent):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_is_reported_instead_of_waited_for():
    config = make_config(backbone="xception", size=71, pooling="avg", weights="none", dtype="float32",
                         precision="float32", seed=0, val=0.2)
    pool = WorkerPool(2, config, batch_size=2, max_pixels=10**8, log=lambda m: None, target=_killed_by_oom)
    with pytest.raises(WorkerError, match=r"died \(killed by signal 9\) \(SIGKILL: out of memory\?"):
        list(pool.embed(["a.png", "b.png", "c.png"]))


def test_several_gpus_get_one_process_each_unless_devices_are_named():
    assert default_workers(None, gpus=[]) == default_workers(None, gpus=["gpu0"]) == 1
    assert default_workers(None, gpus=["gpu0", "gpu1", "gpu2"]) == 3
    assert default_workers(["/gpu:0", "/gpu:1"], gpus=["gpu0", "gpu1"]) == 1  # DEVICES: MirroredStrategy


ORPHAN = """
import os, subprocess, sys, time
watcher = ("import os, time\\nfrom extract.workers import _exit_with_parent\\n_exit_with_parent(os.getppid())\\n"
           "print(os.getpid(), flush=True)\\ntime.sleep(600)")
child = subprocess.Popen([sys.executable, "-c", watcher], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except (OSError, IndexError):
        return False


def test_a_worker_whose_parent_is_killed_ends_instead_of_running_on():
    """A worker blocked anywhere (here: asleep) exits within a second or so of its parent's SIGKILL."""
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True, cwd=REPO)
    worker = int(parent.stdout.readline())
    assert _running(worker)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(worker)


def test_workers_settings_are_checked(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    with pytest.raises(ValueError, match="WORKERS=0 must be at least 1"):
        extract_features(data, out=tmp_path / "c.h5", workers=0, **KW)
    with pytest.raises(ValueError, match="give one of them"):
        extract_features(data, out=tmp_path / "c.h5", workers=2, devices=["/cpu:0"], **KW)


UNGUARDED = """
import sys
from extract import extract_features
extract_features(sys.argv[1], out=sys.argv[2], size=71, weights="none", workers=2, batch_size=2, progress=False)
"""


def test_a_script_without_a_main_guard_is_told_how_to_fix_it(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    script = tmp_path / "run.py"
    script.write_text(UNGUARDED)
    out = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / "c.h5")], cwd=REPO, text=True,
                         capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert out.returncode != 0
    assert 'call extract_features under `if __name__ == "__main__":`' in out.stderr
    assert "its error is printed above" in out.stderr


def test_a_script_piped_to_python_is_told_to_run_from_a_file(monkeypatch):
    """`python - < script.py`: spawn would run "<stdin>" again in each worker, which fails after they start."""
    import types

    piped = types.ModuleType("__main__")
    piped.__file__ = "<stdin>"
    monkeypatch.setitem(sys.modules, "__main__", piped)
    with pytest.raises(ValueError, match=r"<stdin> is none \(a script piped to python\?\): save it and run"):
        WorkerPool(2, {}, 4, 100, print)
    piped.__file__ = __file__  # a script run from its file: spawn can run it again
    WorkerPool(2, {}, 4, 100, print)
