"""The multi-GPU path, on CPU: two logical devices, one backbone replica each (in a subprocess, since
logical devices must be configured before TensorFlow starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import write_class_folders

from extract import FeatureCache

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from extract import extract_features
logs = []
kw = dict(size=71, weights="none", dtype="float32", batch_size=5, progress=False, log=logs.append)
two = extract_features(sys.argv[1], out=sys.argv[2], devices=["/cpu:0", "/cpu:1"], **kw)
one = extract_features(sys.argv[1], out=sys.argv[3], **kw)
print(json.dumps({"logs": logs, "rows": [two.rows, one.rows],
                  "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}))
"""


def test_two_replicas_give_the_same_cache_as_one_device(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=4)  # 12 images, batches of 5: uneven slices too
    two, one = tmp_path / "two" / "c.h5", tmp_path / "one" / "c.h5"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(two), str(one)], cwd=REPO, text=True,
                         capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(line.startswith("2 replicas: ") and "CPU:0" in line and "CPU:1" in line for line in result["logs"])
    assert result["rows"] == [12, 12]
    assert result["inter_op"] == 0  # replicas run as parallel branches: TensorFlow's default pool stays
    with FeatureCache(two) as a, FeatureCache(one) as b:
        assert list(a.column("path")) == list(b.column("path"))
        np.testing.assert_allclose(a.features(), b.features(), atol=1e-5, rtol=1e-4)


ONE_DEVICE = """
import json, sys
import tensorflow as tf
from extract import extract_features
extract_features(sys.argv[1], out=sys.argv[2], size=71, weights="none", batch_size=5, progress=False,
                 log=lambda m: None)
print(json.dumps(tf.config.threading.get_inter_op_parallelism_threads()))
"""


def test_one_cpu_device_runs_one_op_at_a_time(tmp_path):
    """In a fresh process, as `make extract` runs: the setting is made before TensorFlow's runtime starts."""
    data = write_class_folders(tmp_path / "d", per_class=2)
    env = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTEROP_THREADS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", ONE_DEVICE, str(data), str(tmp_path / "c.h5")],
                         cwd=REPO, text=True, capture_output=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == 1


def test_the_users_inter_op_setting_is_left_alone(monkeypatch):
    """TF_NUM_INTEROP_THREADS set: TensorFlow reads it, extract does not override it (in this process, whose
    runtime has started, the call is recorded instead of made)."""
    import tensorflow as tf

    from extract.pipeline import replica_strategy

    calls = []
    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", calls.append)
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    assert replica_strategy() is None and calls == [1]
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "2")
    assert replica_strategy() is None and calls == [1]
