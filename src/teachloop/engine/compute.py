"""``ComputeThread``: the one thread on which an engine runs all of its torch work.

Why a dedicated thread: PyTorch's CPU build parallelises with libgomp, which
keeps one OpenMP thread team *per calling thread*. Once a thread has run a
parallel region, its idle team keeps waking and spinning; any other thread
that then runs torch work competes with it for the cores. Measured on a
2-core machine: the same ``sample`` call took 6.2 s from the thread that
loaded the model and 12.5 s from an ``asyncio.to_thread`` worker. Running
loading, sampling, training and serving steps on one long-lived thread keeps
a single team, whoever the caller is (event loop, scheduler, trainer).

``run`` executes inline when called from the compute thread itself, so
engine methods may call each other and callbacks (streaming ``on_token``)
may use the engine. Calls from other threads queue up and run one at a time
in arrival order, which also serialises the engine's state.

``trim_heap`` hands the heap's free pages back to the operating system
(glibc ``malloc_trim``): a training step frees its activations when its
backward is done, but glibc keeps the pages for reuse, so without it a
process's RSS between steps stays at the step's peak.

This module knows nothing about models; it only runs callables.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Item = tuple["concurrent.futures.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class ComputeThread:
    """A daemon thread that runs submitted callables one at a time.

    Args:
        name: the thread's name (shows in ``py-spy`` and ``ps -L``).
    """

    def __init__(self, name: str = "teachloop-engine") -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The compute thread."""
        return self._thread

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the compute thread; returns its result or raises its exception."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        if self._closed:
            raise RuntimeError("the engine is closed")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fut, fn, args, kwargs))
        return fut.result()

    def close(self) -> None:
        """Let the thread finish the queued calls and exit (its OpenMP team goes with it)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as err:  # delivered to the caller, the thread goes on
                fut.set_exception(err)
            del item, fut, fn, args, kwargs


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def trim_heap() -> bool:
    """Return the heap's free pages to the OS (glibc ``malloc_trim(0)``); False where there is no glibc."""
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


__all__ = ["ComputeThread", "trim_heap"]
