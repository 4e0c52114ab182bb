"""The executors' contract the stages rely on: results persisted as they arrive survive an interrupt."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import pipeline.characterize as characterize_stage
from pipeline.characterize import ChunkTask, run_chunks
from pipeline.executor import as_completed, make_executor, threads_per_worker
from pipeline.paths import RunPaths


def test_inline_executor_runs_one_call_per_step_of_as_completed():
    ran: list[int] = []
    with make_executor(1) as ex:
        futures = {ex.submit(ran.append, i): i for i in range(3)}
        assert ran == []  # nothing runs at submit
        for n, f in enumerate(as_completed(futures), start=1):
            assert len(ran) == n and f.result() is None
    assert ran == [0, 1, 2]
    with make_executor(1) as ex:
        f = ex.submit(lambda: 1 / 0)
        assert isinstance(f.exception(), ZeroDivisionError)
        with pytest.raises(ZeroDivisionError):
            f.result()


def test_inline_characterize_keeps_the_chunks_finished_before_an_interrupt(tmp_path, monkeypatch):
    """``--workers 1`` used to run every chunk at submit time and write none before the last: a Ctrl-C
    lost the whole Monte Carlo. (The SPICE call is replaced here: this tests the stage's bookkeeping.)"""
    import pandas as pd

    from pipeline import schemas

    calls: list[str] = []

    def fake_chunk(ctx, task):
        calls.append(task.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return pd.DataFrame({f.name: pd.Series([], dtype=f.type.to_pandas_dtype()) for f in schemas.CHUNK})

    monkeypatch.setattr(characterize_stage, "run_chunk", fake_chunk)
    monkeypatch.setattr(characterize_stage, "_chunk_path",
                        lambda paths, ctx, task: paths.characterize_chunks / f"{task.name}.parquet")
    paths = RunPaths(tmp_path)
    paths.characterize_chunks.mkdir(parents=True)
    tasks = [ChunkTask("sa", 4.0, ref, 0, 8) for ref in range(4)]
    with make_executor(1) as ex, pytest.raises(KeyboardInterrupt):
        run_chunks(None, tasks, paths, ex, "hash")
    assert len(calls) == 3 and sorted(p.stem for p in paths.characterize_chunks.iterdir()) == sorted(calls[:2])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_worker_threads_follow_the_cpu_affinity_not_the_core_count():
    # a job pinned with taskset to one core must not start os.cpu_count() threads per worker
    cpu = sorted(os.sched_getaffinity(0))[0]
    code = (f"import os; os.sched_setaffinity(0, {{{cpu}}}); "
            "from pipeline.executor import threads_per_worker, usable_cpus; "
            "print(usable_cpus(), threads_per_worker(1), threads_per_worker(4))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "1"]
    assert threads_per_worker(1) == len(os.sched_getaffinity(0))


def test_pool_workers_die_with_a_killed_stage(tmp_path):
    """A stage killed outright (SIGKILL: no cleanup runs) must not leave its pool's workers running as orphans."""
    import signal
    import time

    pid_file = tmp_path / "worker.pid"
    script = (
        "import os, time\n"
        "from pipeline.executor import make_executor\n"
        "def work(path):\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    with make_executor(2) as ex:\n"
        f"        ex.submit(work, {str(pid_file)!r}).result()\n"
    )
    (tmp_path / "stage.py").write_text(script)
    stage = subprocess.Popen([sys.executable, str(tmp_path / "stage.py")], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline and stage.poll() is None, "the worker never started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        os.kill(worker, 0)  # alive while its stage runs
        stage.send_signal(signal.SIGKILL)
        stage.wait(10)
        deadline = time.monotonic() + 10
        while _alive(worker):
            assert time.monotonic() < deadline, "the worker outlived its killed stage"
            time.sleep(0.1)
    finally:
        stage.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie (dead, not yet reaped by init) counts as gone
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
