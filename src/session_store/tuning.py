"""Process tuning: two process-wide tricks for large loads and large caches, off unless asked for.

A library should not change its host's process-wide settings behind its back, so the
store plays neither of these unless the program calls :func:`tune_process`:

- pausing the cyclic garbage collector while a large part of a session loads
  (:class:`_GcPause`): every :class:`Message` is an object the collector tracks, and
  a load makes no reference cycles for it to find. Measured on this project's 2-core
  machine: a cold load of one 200,000-message session took 1.30-1.66 s paused and
  2.33-2.36 s not (``benchmarks/``);
- giving the C allocator's freed memory back to the operating system when a store
  that read at least 16 MiB of records closes (glibc's ``malloc_trim``,
  :func:`_give_back_freed_memory`): measured, a process that read 100,000 sessions of
  20 messages kept 38% of the growth after ``close()`` without it, 5% with it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from typing import Any

#: What :func:`tune_process` turned on; both off by default.
_TUNED = {"pause_gc": False, "trim_memory": False}


def tune_process(*, pause_gc: bool = True, trim_memory: bool = True) -> None:
    """Let every store in this process change process-wide state for speed and memory.

    ``pause_gc``: automatic garbage collection is disabled while a part of 256 KiB or
    more of a session loads, and enabled again when the last such load ends (unless
    the program had disabled it itself). A load makes no reference cycles, so nothing
    is lost; a large cold load is 1.4-1.8x faster. ``trim_memory``: a store that read
    16 MiB of records or more returns the freed memory to the operating system on
    :meth:`SessionStore.close` (glibc only; elsewhere nothing happens).

    Off by default. Call it once, early (before the first store opens): it looks
    ``malloc_trim`` up now, which imports ``ctypes``. ``tune_process(pause_gc=False,
    trim_memory=False)`` turns both off again.
    """
    _TUNED["pause_gc"] = bool(pause_gc)
    _TUNED["trim_memory"] = bool(trim_memory)
    if trim_memory:
        _find_malloc_trim()


class _GcPause:
    """Automatic garbage collection paused while a large part of a session loads.

    Every :class:`Message` is an object the collector tracks, and its generational
    heuristic walks the whole growing set again and again while a million of them are
    built (a quarter of a 200,000-message load; more the larger). A load makes no
    reference cycles, so nothing is lost by collecting afterwards. Nested and
    concurrent loads count: the last to finish re-enables collection, and only when a
    load disabled it (a program that turned it off keeps it off). A child forked
    mid-load starts with collection as the parent had it before the load.
    """

    BYTES = 256 * 1024  # parts smaller than this load as they are

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loads = 0
        self._was_enabled = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def pause(self) -> None:
        if not _TUNED["pause_gc"]:
            return
        with self._lock:
            if self._loads == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._loads += 1

    def resume(self) -> None:
        with self._lock:
            if self._loads == 0:  # paused before tuning was turned on, or not paused at all
                return
            self._loads -= 1
            if self._loads == 0 and self._was_enabled:
                gc.enable()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        if self._loads:
            self._loads = 0
            if self._was_enabled:
                gc.enable()


_GC_PAUSE = _GcPause()

_TRIM_AFTER = 16 * 2**20  # records read since open past which close() gives freed memory back


def _give_back_freed_memory() -> None:
    """Return the C allocator's free memory to the operating system (glibc's
    ``malloc_trim(0)``; nothing elsewhere).

    Dropping a cache frees its objects, but glibc keeps freed heap memory for reuse: only
    the top of its heap goes back, so one live block above thousands of freed session
    tables keeps them all resident. ``malloc_trim`` releases the free pages wherever
    they are (measured: a process that read 100,000 sessions of 20 messages kept 38% of
    the growth after close() without it, 5% with it). It costs 0.04-0.5 ms, so close()
    calls it only after reading at least :data:`_TRIM_AFTER` bytes of records (a store
    opened per request never pays it). Memory that CPython's own allocator holds goes
    back when its arenas empty: an object the program keeps that was made while the
    cache was full can keep one resident.
    """
    if _TUNED["trim_memory"] and _find_malloc_trim():
        _malloc_trim(0)


def _find_malloc_trim() -> bool:
    """Look up glibc's ``malloc_trim``, once per process, when :func:`tune_process`
    turns trimming on (3-6 ms: it imports ctypes). Not later: what the import makes
    lives on, and made among a cache's objects it pins the memory around it (done in
    close(), it kept 10% of the growth from the OS; done first, 2%)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
        except (AttributeError, ValueError, OSError):
            glibc = False
        _malloc_trim = False
        if glibc:
            with contextlib.suppress(Exception):  # an optimization: whatever fails, the store does without it
                import ctypes

                _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", False)
    return bool(_malloc_trim)


_malloc_trim: Any = None  # glibc's malloc_trim once looked up; False where there is none
