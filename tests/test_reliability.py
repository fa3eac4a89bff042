"""A cache you can trust: resume after SIGKILL, incremental updates, locks, write failures, refusals."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SIZE, draw, write_class_folders

from extract import CacheError, FeatureCache, extract_features, pipeline
from extract import cache as cache_mod

QUIET = {"progress": False, "log": lambda m: None}
KW = dict(size=SIZE, weights="none", dtype="float32", **QUIET)
REPO = Path(__file__).resolve().parents[1]


def rows_by_path(path) -> dict[tuple[str, int], tuple[np.ndarray, int, str]]:
    with FeatureCache(path) as c:
        X = c.features()
        return {(p, int(r)): (X[i], int(lab), s) for i, (p, r, lab, s) in
                enumerate(zip(c.column("path"), c.column("round"), c.column("label"), c.column("split")))}


def assert_same_cache(a, b):
    ra, rb = rows_by_path(a), rows_by_path(b)
    assert sorted(ra) == sorted(rb)
    for key in ra:
        np.testing.assert_allclose(ra[key][0], rb[key][0], atol=1e-5, rtol=1e-4)
        assert ra[key][1:] == rb[key][1:]
    with FeatureCache(a) as ca, FeatureCache(b) as cb:
        assert sorted(ca.skipped()) == sorted(cb.skipped())
        assert ca.complete and cb.complete


@pytest.fixture
def count_embedded(monkeypatch):
    """Record the paths the backbone is run on."""
    seen: list[str] = []
    real = pipeline.embed

    def counting(paths, *a, **kw):
        seen.extend(paths)
        return real(paths, *a, **kw)

    monkeypatch.setattr(pipeline, "embed", counting)
    return seen


def test_incremental_update_extracts_only_what_changed(tmp_path, count_embedded):
    data = write_class_folders(tmp_path / "d", per_class=6)
    logs = []
    extract_features(data, out=tmp_path / "c.h5", **{**KW, "log": logs.append})
    assert len(count_embedded) == 18
    count_embedded.clear()
    assert extract_features(data, out=tmp_path / "c.h5", **KW).up_to_date
    assert count_embedded == []

    rng = np.random.default_rng(11)
    draw("square", rng).save(data / "square" / "added.png")
    (data / "circle" / "circle_00.png").unlink()
    draw("stripes", rng).save(data / "stripes" / "stripes_01.png")  # new content, same name
    os.utime(data / "stripes" / "stripes_01.png", ns=(1, 1))
    logs.clear()
    result = extract_features(data, out=tmp_path / "c.h5", **{**KW, "log": logs.append})
    assert sorted(Path(p).name for p in count_embedded) == ["added.png", "stripes_01.png"]
    assert any("1 added, 1 removed, 1 modified" in m for m in logs)
    assert result.rows == 18

    fresh = extract_features(data, out=tmp_path / "independent" / "fresh.h5", **KW)
    assert_same_cache(result.path, fresh.path)


def test_changed_config_writes_another_file(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    a = extract_features(data, cache_dir=tmp_path / "fc", **KW)
    b = extract_features(data, cache_dir=tmp_path / "fc", **{**KW, "dtype": "float16"})
    c = extract_features(data, cache_dir=tmp_path / "fc", **{**KW, "seed": 1})
    assert len({a.path, b.path, c.path}) == 3 and not (b.up_to_date or c.up_to_date)
    assert all(p.exists() for p in (a.path, b.path, c.path))


def test_write_failure_is_clear_and_the_rerun_resumes(tmp_path, monkeypatch, count_embedded):
    data = write_class_folders(tmp_path / "d", per_class=8)
    out = tmp_path / "c.h5"
    half = {**KW, "dtype": "float16"}
    real_savez, calls = np.savez, []

    def disk_full_on_third_part(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(*a, **kw)

    monkeypatch.setattr(cache_mod.np, "savez", disk_full_on_third_part)
    with pytest.raises(CacheError, match="No space left on device.*rerun the same command to resume"):
        extract_features(data, out=out, flush_rows=4, batch_size=4, **half)
    assert not out.exists()
    parts = sorted(cache_mod.parts_dir(out).glob("part-*.npz"))
    assert len(parts) == 2
    with np.load(parts[0]) as part:  # parts hold features as the cache will (float16: half the disk of float32)
        assert part["features"].dtype == np.float16 and len(part["features"]) == 4
    with pytest.raises(CacheError, match="incomplete.*Rerun the same `make extract`"):
        FeatureCache(out)
    monkeypatch.setattr(cache_mod.np, "savez", real_savez)
    count_embedded.clear()
    logs = []
    extract_features(data, out=out, flush_rows=4, batch_size=4, **{**half, "log": logs.append})
    assert "resuming: 8 of 24 done" in logs
    assert len(count_embedded) == 16
    assert not cache_mod.parts_dir(out).exists()
    assert_same_cache(out, extract_features(data, out=tmp_path / "independent" / "fresh.h5", **half).path)


def test_second_extract_is_refused_while_one_runs_and_a_stale_lock_is_taken_over(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    out = tmp_path / "c.h5"
    lock = tmp_path / "c.h5.lock"
    holder = ("import fcntl, os, sys, time\n"
              "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\n"
              "os.write(fd, str(os.getpid()).encode())\n"
              "print('locked', flush=True)\n"
              "time.sleep(60)\n")
    running = subprocess.Popen([sys.executable, "-c", holder, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert running.stdout.readline().strip() == "locked"
        with pytest.raises(CacheError, match=f"another extract \\(pid {running.pid}\\) is writing"):
            extract_features(data, out=out, **KW)
    finally:
        running.kill()
        running.wait()
    assert lock.exists()  # left behind by the killed holder, with its pid inside
    logs = []
    extract_features(data, out=out, **{**KW, "log": logs.append})
    assert any(f"stale lock left by pid {running.pid}" in m for m in logs)
    assert out.exists() and not lock.exists()


def test_our_own_pid_in_a_stale_lock_does_not_block(tmp_path):
    """pid reuse (e.g. a new container): a lock file nobody holds is stale whatever pid it names."""
    data = write_class_folders(tmp_path / "d", per_class=2)
    (tmp_path / "c.h5.lock").write_text(str(os.getpid()))
    assert extract_features(data, out=tmp_path / "c.h5", **KW).rows == 6


def test_failed_assembly_after_every_row_was_flushed_finishes_on_rerun(tmp_path, monkeypatch, count_embedded):
    data = write_class_folders(tmp_path / "d", per_class=3)
    out = tmp_path / "c.h5"

    def disk_full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_writer = cache_mod.HDF5Writer
    monkeypatch.setattr(cache_mod, "HDF5Writer", disk_full)
    with pytest.raises(CacheError, match="No space left on device.*rows are kept in .*rerun the same command"):
        extract_features(data, out=out, **KW)
    assert len(count_embedded) == 9  # the backbone ran; the rows are in parts
    monkeypatch.setattr(cache_mod, "HDF5Writer", real_writer)
    count_embedded.clear()
    logs = []
    extract_features(data, out=out, **{**KW, "log": logs.append})
    assert count_embedded == [] and "resuming: 9 of 9 done" in logs
    assert_same_cache(out, extract_features(data, out=tmp_path / "independent" / "fresh.h5", **KW).path)


def test_other_format_versions_are_refused(tmp_path, folder_cache):
    old = tmp_path / "old.h5"
    shutil.copy(folder_cache, old)
    with h5py.File(old, "a") as f:
        f.attrs["format_version"] = 0
    with pytest.raises(CacheError, match="format version 0, this headswap reads version 1. Re-extract"):
        FeatureCache(old)
    with h5py.File(old, "a") as f:
        del f.attrs["format"]
    with pytest.raises(CacheError, match="not a headswap feature cache"):
        FeatureCache(old)


def test_heads_open_caches_read_only(folder_cache, tmp_path):
    from heads import train_head

    ro = tmp_path / "ro.h5"
    shutil.copy(folder_cache, ro)
    ro.chmod(0o444)
    train_head("logreg", ro, tmp_path / "run", log=lambda m: None)
    assert ro.stat().st_mode & 0o777 == 0o444


@pytest.mark.parametrize("gap_bytes, slab_bytes", [(0, 1), (1, 3 << 20), (256 << 10, 64 << 20)])
def test_feature_reads_through_slabs_equal_row_by_row_reads(folder_cache, monkeypatch, gap_bytes, slab_bytes):
    monkeypatch.setattr(cache_mod, "READ_GAP_BYTES", gap_bytes)
    monkeypatch.setattr(cache_mod, "READ_SLAB_BYTES", slab_bytes)
    with h5py.File(folder_cache, "r") as f:
        direct = np.stack([f["features"][i] for i in range(len(f["features"]))]).astype(np.float32)
    n = len(direct)
    rng = np.random.default_rng(0)
    wanted = [np.arange(n), np.arange(0, n, 3), np.array([n - 1, 0, 2, 2, 1]), rng.permutation(n)[: n // 2],
              np.array([], dtype=np.int64)]
    with FeatureCache(folder_cache) as c:
        for index in wanted:
            got = c.features(index)
            assert got.dtype == np.float32 and got.shape == (len(index), *direct.shape[1:])
            np.testing.assert_array_equal(got, direct[index])


def _extract_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "extract", "--data", str(data), "--out", str(out), "--size", str(SIZE),
            "--weights", "none", "--dtype", "float32", "--batch", "8", "--flush-rows", "8", "--no-progress"]


def test_sigkill_then_rerun_resumes_and_equals_an_uninterrupted_run(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=24)
    out = tmp_path / "killed.h5"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(_extract_cmd(data, out), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = cache_mod.parts_dir(out)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part-*.npz"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_parts = len(list(parts.glob("part-*.npz")))
    assert 3 <= n_parts < 9, "the kill should land mid-run"
    assert not out.exists()
    assert (tmp_path / "killed.h5.lock").exists()  # left behind by the dead process; must be taken over

    # The rerun, as the killed command's settings (in this process: a fresh one would add 6 s of imports).
    logs: list[str] = []
    extract_features(data, out=out, size=SIZE, weights="none", dtype="float32", batch_size=8, flush_rows=8,
                     progress=False, log=logs.append)
    rerun = "\n".join(logs)
    done = int(rerun.split("resuming: ")[1].split(" of ")[0].replace(",", ""))
    assert done >= 8 * n_parts - 8 and "of 72 done" in rerun
    assert "stale lock" in rerun
    fresh = extract_features(data, out=tmp_path / "independent" / "fresh.h5", batch_size=32, **KW)
    assert_same_cache(out, fresh.path)


def test_config_is_recorded(folder_cache):
    with FeatureCache(folder_cache) as c:
        config = json.loads(c._f.attrs["config"])
    assert set(config) >= {"backbone", "size", "pooling", "weights", "dtype", "precision", "seed", "val",
                           "augmentation"}


def test_verify_reports_nan_and_stale_data(tmp_path):
    from extract.verify import verify_cache

    data = write_class_folders(tmp_path / "d", per_class=3)
    out = extract_features(data, out=tmp_path / "c.h5", **KW).path
    report = verify_cache(out)
    assert report["ok"] and report["fingerprint"] == "matches DATA"
    assert report["rows_per_split_round"] and sum(report["rows_per_split_round"].values()) == 9
    with h5py.File(out, "a") as f:
        f["features"][2, 5] = np.nan
    draw("circle", np.random.default_rng(5)).save(data / "circle" / "new.png")
    report = verify_cache(out)
    assert not report["ok"] and report["n_nonfinite_rows"] == 1
    assert any("NaN" in p for p in report["problems"]) and any("stale" in p for p in report["problems"])
    out2 = subprocess.run([sys.executable, "-m", "extract.verify", "--features", str(out)], capture_output=True,
                          text=True, cwd=REPO)
    assert out2.returncode == 1 and "PROBLEMS" in out2.stdout
    # All-zero rows (what float16 made of a random MobileNetV2's ~1e-11 features) tell no class apart.
    assert report["n_all_zero_rows"] == 0
    with h5py.File(out, "a") as f:
        f["features"][4] = 0
    report = verify_cache(out)
    assert report["n_all_zero_rows"] == 1
    assert any(p.startswith("1 row has all-zero features") for p in report["problems"])
