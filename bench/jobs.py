"""A small SmolLM2 forget job as the worker runs it: for the cached-start time and the peak-memory figure.

`python -m bench.jobs CACHE_DIR` runs one whole job and prints its peak RSS, the peak of each stage and the
breakdown of `bench.memory` as JSON (run in a fresh process, so the figures are the job's own);
`python -m bench.jobs CACHE_DIR conversion` converts the bundled GGUF instead and prints that peak and its time.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.memory import (
    PEAK_RSS_SOURCE,
    RssSampler,
    cpu_breakdown,
    lora_bytes,
    peak_rss_mb,
    rss_mb,
    tensor_bytes,
)
from bench.tasks import TASKS
from lethe.methods import GradientAscentParams
from lethe.rows import ChoiceRow
from worker.allocator import allocator_label
from worker.engine.forget.run import ForgetPlan, run_forget
from worker.engine.lm.load import BaseLMCache, LoadedLM, bundled_safetensors_dir
from worker.native_caches import native_cache_settings

BASE_LM = ("smollm2-135m-instruct", "bundled:smollm2-135m-instruct")
# Rows past the ones the scoring benchmark uses, so no row is both scored and forgotten.
FORGET_TRAIN_ROWS = 32
FORGET_HELDOUT_ROWS = 8
RETAIN_ROWS = 16


def job_rows() -> tuple[list[ChoiceRow], list[ChoiceRow], dict[str, list[ChoiceRow]]]:
    """forget-train and forget-heldout from ARC-Easy, one retain set from PIQA."""
    arc = TASKS["arc_easy"].rows(2000)[-(FORGET_TRAIN_ROWS + FORGET_HELDOUT_ROWS) :]
    retain = {"piqa": TASKS["piqa"].rows(1000)[-RETAIN_ROWS:]}
    return arc[:FORGET_TRAIN_ROWS], arc[FORGET_TRAIN_ROWS:], retain


def plan(max_steps: int, probe: bool) -> ForgetPlan:
    """Gradient ascent with the default params, capped at `max_steps` optimiser steps."""
    return ForgetPlan(
        method="gradient_ascent", method_params={"max_steps": max_steps}, finetune=None, probe=probe, seed=0
    )


class _FirstStep(Exception):
    """Raised from the progress callback once forgetting has taken its first optimiser step."""


@dataclass(frozen=True)
class StartTimes:
    """A job's seconds from its start (getting the base LM from the cache) to forgetting's start and to the end of
    forgetting's first optimiser step."""

    training_started: float
    first_step: float


def seconds_to_first_step(cache: BaseLMCache) -> StartTimes:
    """From the job's start (getting the base LM from the cache) to the start of forgetting and to the end of its
    first optimiser step.

    The job evaluates the base LM on every split first, as the worker does (a second job takes those scores from the
    worker's base-stage cache); the progress callback reports "forgetting" as forgetting starts and again after
    each optimiser step, and the job is stopped after the first.
    """
    forget_train, forget_heldout, retain = job_rows()
    reports: list[float] = []

    def stop_at_first_step(stage: str, _fraction: float) -> None:
        if stage == "forgetting":
            reports.append(time.perf_counter() - started)
            if len(reports) == 2:
                raise _FirstStep

    started = time.perf_counter()
    try:
        base = cache.get(*BASE_LM)
        run_forget(base, plan(max_steps=1, probe=False), forget_train, forget_heldout, retain, stop_at_first_step)
    except _FirstStep:
        return StartTimes(training_started=reports[0], first_step=reports[1])
    raise RuntimeError("the job ended without a forgetting step")


def run_whole_job(
    cache_dir: str,
    on_progress: Callable[[str, float], None] = lambda _s, _f: None,
    on_loaded: Callable[[LoadedLM], None] = lambda _base: None,
) -> float:
    """One complete job (probes included); its wall time. `on_loaded(base)` runs once the base LM is loaded."""
    forget_train, forget_heldout, retain = job_rows()
    started = time.perf_counter()
    base = BaseLMCache(cache_dir).get(*BASE_LM)
    on_loaded(base)
    run_forget(base, plan(max_steps=4, probe=True), forget_train, forget_heldout, retain, on_progress)
    return time.perf_counter() - started


def measure_memory(cache_dir: str) -> dict:
    """One whole job (`run_whole_job`) with its RSS sampled: peak, per-stage peaks and the breakdown, in MiB."""
    baseline = rss_mb()
    loaded: list[tuple[LoadedLM, float]] = []
    with RssSampler() as sampler:

        def on_loaded(base: LoadedLM) -> None:
            # Loading maps the safetensors file: its pages become resident when read. Read them all (as the first
            # forward pass would), so that the RSS here holds the weights.
            with torch.no_grad():
                for parameter in base.lm.parameters():
                    parameter.sum()
            loaded.append((base, rss_mb()))
            sampler.stage = "starting"

        def on_progress(stage: str, _fraction: float) -> None:
            sampler.stage = stage

        sampler.stage = "loading"
        seconds = run_whole_job(cache_dir, on_progress, on_loaded)
    peak = peak_rss_mb()
    base, after_load = loaded[0]
    params = GradientAscentParams.model_validate({})
    lora = lora_bytes(base, params.lora_rank, params.lora_alpha)
    return {
        "peak_rss_mb": peak,
        "peak_rss_from": PEAK_RSS_SOURCE,
        "job_seconds": seconds,
        "breakdown": cpu_breakdown(baseline, after_load, tensor_bytes(base.lm), lora, peak),
        "stage_peaks_mb": sampler.peaks,
        "allocator": allocator_label(),
        "native_caches": native_cache_settings(os.environ),
    }


def measure_conversion(cache_dir: str) -> dict:
    """Converting the bundled GGUF to safetensors, what a worker's first job on a fresh cache does once: its peak
    RSS and seconds. It converts into a fresh directory inside `cache_dir` (so it is measured whether or not the
    cache holds a copy already), which then becomes the cache's copy where there was none."""
    bundled_id = BASE_LM[1].removeprefix("bundled:")
    with tempfile.TemporaryDirectory(prefix=".conversion-", dir=cache_dir) as scratch:
        started = time.perf_counter()
        converted = bundled_safetensors_dir(bundled_id, Path(scratch))
        seconds = time.perf_counter() - started
        peak = peak_rss_mb()
        target = Path(cache_dir) / "bundled" / bundled_id
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(converted, target)
    return {"peak_rss_mb": peak, "peak_rss_from": PEAK_RSS_SOURCE, "seconds": seconds}


if __name__ == "__main__":
    # python -m bench.jobs CACHE_DIR [conversion]
    measure = measure_conversion if sys.argv[2:] == ["conversion"] else measure_memory
    print(json.dumps(measure(sys.argv[1])))
