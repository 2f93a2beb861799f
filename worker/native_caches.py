"""The CPU matmul library's caches, bounded in a worker: oneDNN's primitive cache and ideep's LRU cache.

On a CPU that computes bf16 natively the decoder blocks' weights are stored in bf16 (`engine/lm/block_weights.py`)
and every matmul goes through oneDNN (torch's fp32 products go through MKL instead). oneDNN compiles a primitive for
each shape it meets and keeps it in a cache of ONEDNN_PRIMITIVE_CACHE_CAPACITY entries (1,024 by default); ideep,
torch's layer over it, keeps its own LRU_CACHE_CAPACITY (1,024) entries. A forget job meets a new shape with nearly
every batch (packed rows and padded batches take their length from their rows), so both caches fill up and stay
full: SmolLM2's forward and backward passes over 57 lengths (20 to 412 tokens) left 690 MB more allocated than
before, and the demo forget job (examples/demo_request.json: 48 PIQA rows, fine-tune, random_label, probes) held
about 710 MB more allocated at its end than at its start while its own tensors were back to the LM's, and peaked
at 2,116 MB RSS (AMD EPYC with native bf16, jemalloc; /proc and jemalloc's stats.allocated sampled every 5 ms).

A pass uses the same few dozen shapes in every one of its layers, so a cache of WORKER_CAPACITY entries still
serves each pass from its first layer on; what it loses is the primitives of a length met again only in a later
pass. With both caches at 64 the 57 lengths left 76 MB. The demo job, run in turns (two runs of each, same machine):
peak 2,058 and 2,060 MB at the libraries' defaults, 1,595 and 1,598 MB at 256, 1,455 and 1,453 MB at 64, in 107 s
at the defaults (the other run was slowed by other work) against 107 and 115 s at 64 and 122 and 103 s at 256: no
difference the machine's drift does not cover. With no cache at all (oneDNN's at 0, ideep's at 1: 0 crashes it)
every layer compiles its primitives again, and the 57 lengths' passes took 4× the time.

The worker sets both where the environment does not (`bound_native_caches`): an operator's own values win. Both
libraries read them when they first compute, so this must run before the process's first matmul: the worker's
start-up does it (`startup.check_worker_devices`), before any job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

# The two libraries' own variable names (oneDNN's, and ideep's, read by torch's mkldnn matmul), each with the least
# value it takes: 0 turns oneDNN's cache off, and crashes ideep.
NATIVE_CACHE_VARIABLES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": 0, "LRU_CACHE_CAPACITY": 1}
# Entries each cache keeps in a worker (module docstring).
WORKER_CAPACITY = 64


def native_cache_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The capacity each of NATIVE_CACHE_VARIABLES has in a worker started with `environ`: its own value, or
    WORKER_CAPACITY where it is unset or empty. ValueError naming a variable whose value is not a whole number at
    least its least value."""
    values: dict[str, str] = {}
    for variable, least in NATIVE_CACHE_VARIABLES.items():
        raw = environ.get(variable, "").strip() or str(WORKER_CAPACITY)
        if not raw.isdigit() or int(raw) < least:
            raise ValueError(f"{variable}={raw!r} is not a whole number of cache entries of at least {least}")
        values[variable] = raw
    return values


def bound_native_caches(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Write `native_cache_settings(environ)` into `environ` (the process's own by default: see the module docstring
    for when it takes effect); the values. ValueError as there."""
    values = native_cache_settings(environ)
    environ.update(values)
    return values
