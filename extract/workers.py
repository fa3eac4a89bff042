"""``WORKERS=K``: K extraction processes, one per device, each with its own decoders and backbone.

Worker ``k`` takes every K-th batch of the views (so all finish together), runs
:func:`extract.pipeline.embed` on them and sends each batch's features back; the parent takes the
batches in order and keeps the single writer, the progress bar and the skip list: the cache is the
one a single process writes. On a GPU box worker ``k`` sees only GPU ``k mod n``; on a CPU each
worker gets its share of the cores as intra-op threads. On this repo's 2-core CPU two one-thread
processes computed 3-6% more images/s than one two-thread process, and MirroredStrategy over two
logical CPUs 0-2% (README, `make bench`).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue as queue_mod
import resource
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

# Errors whose message already tells the user what to do: re-raised as they are (the CLI prints one line).
_USER_ERRORS = (ValueError, FileNotFoundError, MemoryError)
POLL_SECONDS = 0.5


class WorkerError(RuntimeError):
    """An extraction worker failed or died; the message says which and why."""


def peak_rss_mb() -> float:
    """This process's own peak RSS in MB. Not ``getrusage``: on Linux its ``ru_maxrss`` survives ``exec``, so a
    new process would report its parent's peak when that is larger. ``VmHWM`` belongs to the new address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: an upper bound


def cpu_threads(workers: int) -> int:
    """Intra-op threads per worker on a CPU: an equal share of the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def default_workers(devices: Sequence[str] | None, gpus: Sequence[Any] | None = None) -> int:
    """WORKERS when not given: one process per GPU when there are several (and no DEVICES), else 1.
    Processes measured better than MirroredStrategy where we could measure (module docstring)."""
    if devices:
        return 1
    if gpus is None:
        import tensorflow as tf  # noqa: PLC0415  (lists devices without starting the runtime)

        gpus = tf.config.list_physical_devices("GPU")
    return len(gpus) if len(gpus) > 1 else 1


def _setup_device(k: int, workers: int) -> str:
    """Pin worker ``k`` to its device before TensorFlow starts; returns a description for the log."""
    import tensorflow as tf  # noqa: PLC0415

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        gpu = gpus[k % len(gpus)]
        tf.config.set_visible_devices([gpu], "GPU")
        return gpu.name.replace("/physical_device:", "")
    threads = cpu_threads(workers)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    return f"CPU, {threads} intra-op thread{'s' if threads > 1 else ''}"


def _exit_with_parent(parent: int) -> None:
    """End this process at once when its parent is gone (killed), wherever the worker is blocked then
    (a full queue, a pipe nobody reads, the queue's flush at exit)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(3)

    threading.Thread(target=watch, name="extract-parent-watch", daemon=True).start()


def _worker(k: int, workers: int, job: dict[str, Any], queue, parent: int) -> None:
    """Body of worker ``k``: build the backbone, embed its views, send every batch to ``queue``."""
    _exit_with_parent(parent)
    try:
        from .pipeline import embed, load_backbone, replica_strategy  # noqa: PLC0415

        device = _setup_device(k, workers)
        replica_strategy()  # memory growth on the GPU; one inter-op thread on a CPU (as in one process)
        model = load_backbone(job["config"])
        queue.put(("ready", k, tuple(int(d) for d in model.output_shape[1:]), device))
        for idx, feats, reasons in embed(job["paths"], model, job["config"]["size"], job["batch_size"],
                                         job["max_pixels"], **job["augment"]):
            queue.put(("batch", k, idx, feats, reasons))
        queue.put(("done", k, peak_rss_mb()))
    except BaseException as err:  # noqa: BLE001  (reported to the parent, which decides)
        try:
            user_error = pickle.loads(pickle.dumps(err)) if isinstance(err, _USER_ERRORS) else None
        except Exception:  # noqa: BLE001  (an error that does not pickle goes as text)
            user_error = None
        queue.put(("error", k, user_error, traceback.format_exc()))
        raise SystemExit(1) from None  # a non-zero exit code, even if the message were lost


def _unspawnable_main() -> str | None:
    """The main script's ``__file__`` when spawn could not run it again (``<stdin>``: a script piped to python).

    Spawn re-imports ``python -m`` modules by name and skips a main without a file (``python -c``, the REPL,
    notebooks), so only a ``__file__`` that is no file fails, in every worker, after the parent started them."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(getattr(main, "__spec__", None), "name", None) or path is None or os.path.isfile(path):
        return None
    return str(path)


def _shards(n: int, batch_size: int, workers: int) -> list[np.ndarray]:
    """Positions for each worker: batches k, k + K, k + 2K, ... of ``range(n)``."""
    batches = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return [np.concatenate(batches[k::workers]) if batches[k::workers] else np.zeros(0, int)
            for k in range(workers)]


def _slice(value: Any, positions: np.ndarray, n: int) -> Any:
    """A per-view argument (list or array of length ``n``) restricted to ``positions``; others as they are."""
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == n:
        return np.asarray(value)[positions]
    return value


class WorkerPool:
    """Runs :func:`extract.pipeline.embed` in ``workers`` processes; see the module docstring.

    After :meth:`embed` has run, ``feature_shape`` is the backbone's output shape and ``peak_rss_mb``
    holds each worker's own peak RSS.
    """

    def __init__(self, workers: int, config: dict[str, Any], batch_size: int, max_pixels: int,
                 log: Callable[[str], None], target: Callable = _worker):
        main_file = _unspawnable_main()
        if main_file:
            raise ValueError(f"WORKERS={workers} starts its processes with Python's spawn, which runs the main script "
                             f"again from its file, and {main_file} is none (a script piped to python?): save it "
                             f"and run `python script.py` (with `if __name__ == \"__main__\":`), or use WORKERS=1")
        self.workers, self.config, self.batch_size, self.max_pixels = int(workers), config, batch_size, max_pixels
        self.log, self.target = log, target
        self.feature_shape: tuple[int, ...] | None = None
        self.peak_rss_mb: list[float] = []

    def embed(self, paths: Sequence[str], **augment_kw: Any) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """Yield (positions, features, reasons) batches like :func:`extract.pipeline.embed`, in the same order.

        Batch ``j`` comes from worker ``j mod K``'s own queue (two batches deep), so the cache is the one a
        single process writes, and a worker that runs ahead waits instead of filling memory.
        """
        n = len(paths)
        n_batches = -(-n // self.batch_size)
        # No worker without a batch. extract_features already starts at most one worker per batch and says so
        # (a single batch runs in the calling process); this guards other callers.
        workers = min(self.workers, n_batches)
        shards = _shards(n, self.batch_size, workers)
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: TensorFlow does not survive fork
        queues = [ctx.Queue(maxsize=2) for _ in range(workers)]
        procs = []
        for k, shard in enumerate(shards):
            job = {"config": self.config, "batch_size": self.batch_size, "max_pixels": self.max_pixels,
                   "paths": [paths[i] for i in shard],
                   "augment": {key: _slice(v, shard, n) for key, v in augment_kw.items()}}
            procs.append(ctx.Process(target=self.target, args=(k, workers, job, queues[k], os.getpid()),
                                     name=f"extract-worker-{k + 1}", daemon=True))
        try:
            for p in procs:
                p.start()
            for j in range(n_batches):
                k = j % workers
                _, _, idx, feats, reasons = self._next(procs, queues, k, "batch")
                yield shards[k][idx], feats, reasons
            for k in range(workers):
                self.peak_rss_mb.append(self._next(procs, queues, k, "done")[2])
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
            for q in queues:
                q.close()
                q.cancel_join_thread()

    def _next(self, procs: list, queues: list, k: int, want: str) -> tuple:
        """The next ``want`` message of worker ``k``, logging its device and raising its errors on the way."""
        while True:
            try:
                msg = queues[k].get(timeout=POLL_SECONDS)
            except queue_mod.Empty:
                self._check_alive(procs, queues)
                continue
            if msg[0] == want:
                return msg
            if msg[0] == "ready":
                self.feature_shape = msg[2]
                self.log(f"worker {k + 1} of {len(procs)}: {msg[3]}")
            elif msg[0] == "error":
                self._raise(k, len(procs), msg)
            else:
                raise WorkerError(f"extract worker {k + 1} sent {msg[0]!r} where {want!r} was due (a bug)")

    @staticmethod
    def _raise(k: int, workers: int, msg: tuple) -> None:
        _, _, err, text = msg
        if err is not None:
            raise err
        raise WorkerError(f"extract worker {k + 1} of {workers} failed:\n{text.rstrip()}\n"
                          f"The rows written so far are kept: rerun the same command to resume.")

    def _check_alive(self, procs: list, queues: list) -> None:
        for k, p in enumerate(procs):
            if p.exitcode not in (None, 0):
                try:  # its last words, if it sent them before exiting
                    while True:
                        msg = queues[k].get(timeout=POLL_SECONDS)
                        if msg[0] == "error":
                            self._raise(k, len(procs), msg)
                except queue_mod.Empty:
                    pass
                code = p.exitcode
                why = f"killed by signal {-code}" if code < 0 else f"exit code {code}; its error is printed above"
                hint = " (SIGKILL: out of memory? Try a smaller BATCH= or fewer WORKERS=)" if code == -9 else ""
                raise WorkerError(f"extract worker {k + 1} of {len(procs)} died ({why}){hint}. The rows written so "
                                  f"far are kept: rerun the same command to resume.")
