"""numba for the CPU kernels: compiled once per machine, safely across processes.

A kernel module defines its kernels at module level with `njit(signature)`, so importing it
compiles them or loads them from numba's cache; `load(name)` imports such a module (first use
only: numba's import and compilation cost about a second, which only the callers that use the
kernels should pay) under an inter-process file lock, and gives numba torch's thread count.
Ranks of one job, or test processes, that start together would otherwise compile and write
numba's cache at once, which numba does not guard (numba issues #4807 and #10128: crashes
loading a half-written cache entry)."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import tempfile
from collections.abc import Callable, Iterator


def njit(signature: str | list[str], **kw) -> Callable:
    """numba.njit(signature, cache=True, **kw) (a signature string, or a list of them for one
    kernel over several dtypes); without the cache where there is nowhere writable to keep it
    (each process then compiles for itself)."""
    import numba

    def wrap(fn):
        try:
            return numba.njit(signature, cache=True, **kw)(fn)
        except RuntimeError:
            return numba.njit(signature, **kw)(fn)

    return wrap


def load(module: str):
    """The kernel module `module` (relative to stitchkit.ops), imported under the lock on first
    use; each call also gives numba torch's thread count (torch.get_num_threads(), which follows
    OMP_NUM_THREADS and torch.set_num_threads), so the parallel kernels take the threads torch's
    own ops take and no more. numba's OpenMP layer resets torch's count to the core count when it
    starts (two OpenMP runtimes share the process), so torch's count is read first and put back."""
    import torch

    n = torch.get_num_threads()
    kernels = _import(module)
    import numba

    want = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:  # the first call starts numba's threads
        numba.set_num_threads(want)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return kernels


@functools.cache
def _import(module: str):
    with _locked():
        return importlib.import_module(f"stitchkit.ops.{module}")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): compile unguarded
        yield
        return
    path = os.path.join(tempfile.gettempdir(), f"stitchkit-numba-{os.getuid()}.lock")
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
