"""concurrent.futures-style executors: in-process, a local process pool, or a Dask cluster.

Every stage submits pure functions of picklable tasks, so results do not depend on where they run.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from pipeline.config import ConfigError


class _Deferred(Future):
    """A call of :class:`InlineExecutor`, run in this process when its result is first asked for."""

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        super().__init__()
        self._call: tuple | None = (fn, args, kwargs)

    def run_now(self) -> None:
        if self._call is None:
            return
        fn, args, kwargs = self._call
        self._call = None
        try:
            self.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, like a pool would
            self.set_exception(exc)

    def result(self, timeout: float | None = None) -> Any:
        self.run_now()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self.run_now()
        return super().exception(timeout)


class InlineExecutor(Executor):
    """Runs the submitted calls in this process (``--workers 1``; easiest to debug), one at a time as
    :func:`as_completed` hands them out (or as their result is asked for): a stage that persists each
    result as it arrives then loses only the call in flight to an interrupt, as with a process pool."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return _Deferred(fn, args, kwargs)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, so ``taskset`` and cgroup pinning are honoured)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` local workers sharing this process's CPUs."""
    return max(1, usable_cpus() // max(workers, 1))


def as_completed(futures: Iterable[Future]) -> Iterator[Future]:
    """:func:`concurrent.futures.as_completed` that also runs :class:`InlineExecutor`'s calls, one per
    step (the stdlib one would wait for them forever)."""
    fs = list(futures)
    for f in fs:
        if isinstance(f, _Deferred):
            f.run_now()
            yield f
    others = [f for f in fs if not isinstance(f, _Deferred)]
    if others:
        yield from concurrent.futures.as_completed(others)


def _init_worker(parent: int) -> None:
    # ngspice's OpenMP threads slow small decks down: one thread per process, one process per core.
    os.environ["OMP_NUM_THREADS"] = "1"
    _die_with(parent)


def _die_with(parent: int) -> None:
    """Linux: this worker gets SIGTERM when the stage process that started it dies, however it died (a
    ``kill`` of the command reaches only the command; its pool's workers would otherwise train on as orphans)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl: orphans stay possible
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


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
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(os.getpid(),)) as pool:
        yield pool
