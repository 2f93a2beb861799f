"""The worker's memory allocator: jemalloc where the host has it (LETHE_ALLOCATOR), glibc's malloc otherwise.

A forget job allocates and frees hundreds of megabytes of activations per training step, between scoring passes
whose tensors have other sizes. glibc's malloc serves tensors of a few MB from its arenas once a large block has
been freed (its mmap threshold rises to the largest block freed, up to 32 MB), and the arenas fragment: the bench's
SmolLM2 job (bench/jobs.py, AMD EPYC without bf16, 2026-11-30) peaked at 2,095 MB RSS with glibc and 1,755 MB
with jemalloc, and with LETHE_ACTIVATION_BUDGET_MB=256 (then checkpointing every layer) at 1,613 and 1,318 MB,
in about the same time (48–56 s each). jemalloc's own settings moved little: one arena 1,728 MB, pages returned
at once 1,667 MB in twice the time. Pinning glibc's threshold at 128 KiB (MALLOC_MMAP_THRESHOLD_) gave nearly
jemalloc's peak but 60% more time, every tensor then being fresh pages from the kernel. PyTorch's CPU tuning guide
recommends jemalloc or tcmalloc for the same reason.

An allocator is chosen when the process starts, so `lethe worker` re-executes itself once with jemalloc in
LD_PRELOAD (`exec_with_allocator`) before it imports torch. LETHE_ALLOCATOR:
- `auto` (default): jemalloc when the host has it (Debian/Ubuntu package libjemalloc2; the worker image installs
  it), otherwise glibc's malloc with a warning;
- `jemalloc`: jemalloc or the worker refuses to start (status 78, as for any configuration error);
- `system`: the C library's malloc, never re-executed.
A process that already runs with jemalloc (LD_PRELOAD set by hand, or the re-executed worker) is left as it is.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("lethe.worker")

ALLOCATOR_VARIABLE = "LETHE_ALLOCATOR"
ALLOCATORS = ("auto", "jemalloc", "system")
JEMALLOC = "libjemalloc.so.2"
# Where Debian and Ubuntu's libjemalloc2 puts the library (by architecture), then the usual prefixes.
LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


class AllocatorError(ValueError):
    """LETHE_ALLOCATOR is not a known value, or asks for an allocator this host does not have."""


def requested(environ: Mapping[str, str] = os.environ) -> str:
    """LETHE_ALLOCATOR, checked: one of ALLOCATORS (`auto` when unset)."""
    value = environ.get(ALLOCATOR_VARIABLE, "").strip().lower() or "auto"
    if value not in ALLOCATORS:
        raise AllocatorError(f"{ALLOCATOR_VARIABLE}={value!r} is not one of {', '.join(ALLOCATORS)}")
    return value


def find_jemalloc(dirs: Sequence[str] = LIBRARY_DIRS) -> Path | None:
    """The path of libjemalloc.so.2 on this host, or None."""
    for directory in dirs:
        candidate = Path(directory) / JEMALLOC
        if candidate.is_file():
            return candidate
    return None


def jemalloc_loaded() -> bool:
    """Whether jemalloc is mapped into this process (preloaded)."""
    try:
        return "libjemalloc" in Path("/proc/self/maps").read_text()
    except OSError:  # no /proc (not Linux): nothing was preloaded by us
        return False


def preload_environment(environ: Mapping[str, str], library: Path | None) -> dict[str, str] | None:
    """The environment to re-execute with so that jemalloc is the allocator, or None to run as it is.

    `library`: jemalloc's path on this host (`find_jemalloc`), None where it has none. AllocatorError where
    LETHE_ALLOCATOR is bad, or is `jemalloc` and the host has none.
    """
    choice = requested(environ)
    if choice == "system":
        return None
    if library is None:
        if choice == "jemalloc":
            raise AllocatorError(
                f"{ALLOCATOR_VARIABLE}=jemalloc but {JEMALLOC} is not installed (Debian/Ubuntu package libjemalloc2; "
                f"looked in {', '.join(LIBRARY_DIRS)})"
            )
        return None
    preload = [entry for entry in environ.get("LD_PRELOAD", "").split() if entry]
    if any("libjemalloc" in entry for entry in preload):
        return None
    return {**environ, "LD_PRELOAD": " ".join([str(library), *preload])}


def exec_with_allocator(argv: Sequence[str]) -> None:
    """Re-execute this process as `argv` with jemalloc preloaded where LETHE_ALLOCATOR wants it (see the module
    docstring); return where it already runs with the allocator it should, or with glibc's where jemalloc is
    missing under `auto` (logged). Call it before torch is imported. AllocatorError on a bad setting, and where
    `jemalloc` is required but LD_PRELOAD already names it and it did not load."""
    if jemalloc_loaded():
        return
    environment = preload_environment(os.environ, find_jemalloc())
    if environment is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], list(argv), environment)
    choice = requested()
    if choice == "jemalloc":
        raise AllocatorError(f"{ALLOCATOR_VARIABLE}=jemalloc but LD_PRELOAD names a jemalloc that did not load")
    if choice == "auto":
        log.warning(
            "jemalloc is not in use (%s not found or not loadable): this worker uses the C library's malloc, whose "
            "fragmentation raises a job's peak memory by a few hundred MB (install libjemalloc2, or set %s=system "
            "to silence this)",
            JEMALLOC,
            ALLOCATOR_VARIABLE,
        )


def allocator_label() -> str:
    """Which allocator this process runs with, for the worker's start-up log line."""
    return "jemalloc" if jemalloc_loaded() else "the C library's malloc"
