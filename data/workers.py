"""Worker processes for the data pipeline that never outlive the command that started them.

A pool worker of `bertPrep.py` holds a few hundred MB (torch, numba, the tokenizer). When the
command is stopped by SIGTERM (a scheduler's time limit) or SIGKILL (out of memory, `kill -9`),
nothing in the command itself can run to stop its workers, so each worker asks Linux to kill it
when its parent dies (PR_SET_PDEATHSIG). On SIGTERM the command also stops its workers itself and
exits with 128 + 15, the code a signal death would give.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_live_pools: list[ProcessPoolExecutor] = []


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux; elsewhere nothing happens).

    With `parent_pid`, a parent that already died before the request took effect is noticed too.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not allowed here (a sandbox): the SIGTERM handler still stops workers
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def _init_worker(parent_pid: int) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker must not run its parent's handler
    _live_pools.clear()
    # Each worker is one of several processes already; the Rust tokenizer's own threads would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


@contextlib.contextmanager
def worker_pool(processes: int, start_method: str | None = None) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers die with this process (and are stopped by `stop_workers_on_sigterm`)."""
    pool = ProcessPoolExecutor(processes, mp_context=get_context(start_method), initializer=_init_worker,
                               initargs=(os.getpid(),))
    _live_pools.append(pool)
    try:
        with pool:
            yield pool
    finally:
        _live_pools.remove(pool)


def _stop_workers(signum: int, frame: object) -> None:
    for pool in _live_pools:  # the executor has no public way to kill its workers without waiting for them
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
    print(f"stopped by signal {signum}; worker processes stopped", file=sys.stderr, flush=True)
    os._exit(128 + signum)  # what a death by the signal reports; temp files are hidden and replaced next run


def stop_workers_on_sigterm() -> None:
    """Install the handler that stops every pool's workers and exits on SIGTERM (call from a command's main)."""
    signal.signal(signal.SIGTERM, _stop_workers)
