"""Fan-out: a streamed run's replay jobs on worker processes or a cluster, through Dask.

Given the reference's recorded boundary activations, layer i's replay needs nothing from layer
i - 1: the jobs are independent, and each is a plain picklable function call
(`stream.replay_layer(job)`). `map_jobs` runs them in this process one after another, on a
`distributed.LocalCluster` of worker processes on this machine (`workers=N`), or on a running
Dask cluster (`cluster="tcp://host:8786"`): the same task code in all three, and the results
come back as they finish, so the caller writes each one at once (an interrupted run resumes).

Why Dask and not Ray: the jobs are coarse (seconds to minutes each), independent and stateless
apart from a per-process module cache, so a task scheduler is all that is needed; `distributed`
is pure Python on top of tornado and msgpack (a few MB, no binaries of its own), a LocalCluster is
an ordinary set of processes started and stopped from here, and a real cluster is `dask
scheduler` on one host and `dask worker ADDRESS` on each of the others. Ray brings its own
object store, raylet and GCS binaries (a wheel of ~60 MB) and actors this does not use.

Each local worker gets an equal share of the cores: its BLAS, oneDNN, torch and TensorFlow
thread pools are sized to cpu_count / N through the environment it starts with.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
CONNECT_SECONDS = 10


def threads_env(threads: int) -> dict:
    """The environment that sizes every thread pool a worker's frameworks start to `threads`."""
    return {**{k: str(threads) for k in THREAD_VARIABLES}, "TF_NUM_INTEROP_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(os.path.abspath(p or ".") for p in sys.path))}  # this code


@contextlib.contextmanager
def executor(workers: int | None = None, cluster: str | None = None, timeout: float = CONNECT_SECONDS):
    """A Dask client on `workers` local worker processes or at the scheduler `cluster` (answering within
    `timeout` seconds); None for neither (the jobs then run in this process)."""
    if workers is None and cluster is None:
        yield None
        return
    if workers is not None and cluster is not None:
        raise ValueError(f"--workers and --cluster are alternatives; received --workers {workers}, --cluster {cluster}")
    from distributed import Client, LocalCluster
    local = None
    try:
        if cluster is not None:
            try:
                client = Client(cluster, timeout=f"{timeout}s")
            except (OSError, TimeoutError, ValueError) as e:
                raise ValueError(f"--cluster {cluster}: no Dask scheduler answered within {timeout:g} s "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no reply'}); start "
                                 f"one with `dask scheduler` and workers with `dask worker ADDRESS`") from None
        else:
            if workers < 1:
                raise ValueError(f"--workers must be >= 1; received {workers}")
            threads = max(1, (os.cpu_count() or 1) // workers)
            local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                 memory_limit=0, silence_logs=logging.ERROR, env=threads_env(threads))
            client = Client(local)
        try:
            yield client
        finally:
            client.close()
    finally:
        if local is not None:
            local.close()


def warm(client, frameworks) -> dict:
    """Import each framework on every worker (seconds each) before the jobs are timed: {worker: pid}."""
    if client is None:
        return {}
    return client.run(_import, list(frameworks))


def _import(frameworks):
    from conformance.backends import backend
    for framework in frameworks:
        backend(framework)
    return os.getpid()


def map_jobs(client, fn, jobs):
    """fn(job) for every job, yielded as each finishes: in this process (client None) or on the workers."""
    if client is None:
        for job in jobs:
            yield fn(job)
        return
    from distributed import as_completed
    futures = [client.submit(fn, job, pure=False) for job in jobs]  # one task each: no one graph of every
    for future in as_completed(futures):                            # job's activations (Dask warns past 10 MB)
        yield future.result()
