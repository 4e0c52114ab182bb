"""concurrent.futures-style executors: in-process, a local process pool, or a Dask cluster.

Every stage submits pure functions of picklable tasks, so results do not depend on where they run.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from pipeline.config import ConfigError


class InlineExecutor(Executor):
    """Runs each submitted call immediately in this process (``--workers 1``; easiest to debug)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, like a pool would
            future.set_exception(exc)
        return future


def _init_worker() -> None:
    # ngspice's OpenMP threads slow small decks down: one thread per process, one process per core.
    os.environ["OMP_NUM_THREADS"] = "1"


@contextmanager
def make_executor(workers: int, scheduler: str | None = None) -> Iterator[Executor]:
    """Yield an executor: Dask when ``scheduler`` is an address, else ``workers`` local processes."""
    if scheduler:
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise RuntimeError("dask[distributed] is not installed; run ./ngspice_setup.sh") from exc
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); start it (`dask scheduler`) "
                              "and its workers, or drop --scheduler to run locally") from exc
        try:
            yield client.get_executor()
        finally:
            client.close()
        return
    if workers <= 1:
        yield InlineExecutor()
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        yield pool
