"""BENCHMARKS.md, generated from bench/results.json (python -m bench.report re-renders it without measuring)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Lower bounds on Lethe / baseline; training's depends on whether the CPU computes bf16 natively (autocast's gain
# comes on top of the work that does not depend on it).
TARGETS = {"scoring": 2.0, "training": 1.8, "training_fp32": 1.3}
# Claim → first optimizer step of a second job on the same base LM and rows (its base stage cached), seconds.
CACHED_START_TARGET_S = 2.0
# The full audit's time over the forget job's: an upper bound, where the targets above are lower bounds.
AUDIT_COST_TARGET = 1.5
# Peak RSS of a whole SmolLM2 forget job on CPU (issue 11: one copy of the base LM per worker), MiB.
PEAK_RSS_TARGET_MB = 1500


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _other_budget_run(results: dict) -> dict | None:
    """The memory step's second job: without an activation budget (a CPU worker has one by default since
    2026-11-30), or, in entries measured before, with LETHE_ACTIVATION_BUDGET_MB=256."""
    return results.get("memory_without_activation_budget") or results.get("memory_with_activation_budget")


def _met(value: float, target: float) -> str:
    return "yes" if value >= target else "**no**"


def _peak_source(source: str | None) -> str:
    """What a peak RSS was read from: `VmHWM` (bench/memory.py's peak_rss_mb), or for entries from before it was
    recorded `ru_maxrss`, which a process the bench started inherited from the bench's own peak."""
    if source is not None:
        return f"`{source}`, the high-water mark of the process's own memory"
    return (
        "`ru_maxrss`, which Linux carries across fork and exec: where the bench had grown past the job's peak "
        "before starting the process, this figure is the bench's own"
    )


def _stage_peaks(lead: str, peaks: dict[str, float] | None) -> str:
    """`lead` and each stage's peak RSS ("evaluating 1290 MB, forgetting 1446 MB."); empty where none were
    recorded."""
    if not peaks:
        return ""
    return lead + ", ".join(f"{stage} {mb:.0f} MB" for stage, mb in peaks.items()) + "."


def _caches_clause(caches: dict[str, str] | None) -> str:
    """ ", with the matmul caches …" naming the capacities a measured process ran with (worker/native_caches.py);
    empty for a run from before they were recorded (the libraries' defaults, 1,024 each)."""
    if not caches:
        return ""
    settings = ", ".join(f"{name}={value}" for name, value in caches.items())
    return f"; matmul caches as a worker bounds them: {settings} (worker/native_caches.py)"


def _memory_breakdown(breakdown: dict | None) -> list[str]:
    """The peak RSS split as `bench.memory.cpu_breakdown` splits it (absent from results of older runs)."""
    if breakdown is None:
        return []
    parts = [
        ("Python, torch and the libraries (before loading)", "baseline_mb"),
        ("the base LM's weights", "weights_mb"),
        ("what loading and the job's rows left besides", "loading_and_data_mb"),
        ("LoRA + gradients + AdamW moments", "lora_and_optimizer_mb"),
        ("activations, logits and allocator slack at the peak", "activations_and_logits_mb"),
    ]
    return [
        "Where the peak goes (`bench/memory.py`; MB):",
        "",
        _row("part", "MB"),
        _row("---", "---:"),
        *(_row(name, f"{breakdown[key]:.0f}") for name, key in parts),
        _row("peak RSS", f"{breakdown['peak_rss_mb']:.0f}"),
        "",
    ]


def _recovery_cell(attack: dict) -> str:
    if attack["effect"] == "damage":
        return f"excess drop {attack['excess_drop']:+.3f}"
    return "—" if attack["recovery"] is None else f"{attack['recovery']:.2f}"


def _audit_name(audit: dict) -> str:
    return f"full audit ({len(audit['attacks'])} attacks)"


def _forget_time(audit: dict, by_stage: str) -> str:
    """The forget job's time: the mean of the runs around the audit where there were two (entries before them had
    one, before the audit)."""
    runs = audit.get("forget_seconds_runs")
    if not runs:
        return f"{audit['forget_seconds']:.0f} s ({by_stage}; one run, before the audit, as the bench ran then)"
    return (
        f"{audit['forget_seconds']:.0f} s, the mean of a run before the audit ({runs[0]:.0f} s: {by_stage}) and "
        f"the same job run again after it ({runs[1]:.0f} s), as the machine's speed drifts"
    )


def _audit_section(audit: dict) -> list[str]:
    """The audit-cost section: the ratio against its target, time and recovery by attack, what did not run."""
    met = audit["ratio"] <= AUDIT_COST_TARGET
    splits = audit["splits"]
    retain = ", ".join(f"{name.removeprefix('retain:')} ({n} rows)" for name, n in splits.items() if "retain:" in name)
    finetune = audit["finetune"]
    by_stage = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in audit["forget_seconds_by_stage"].items())
    thresholds = audit["thresholds"]
    ran = [attack for attack in audit["attacks"] if "skipped" not in attack and not attack.get("diagnostic")]
    lines = [
        "## Audit cost",
        "",
        "The audited job is Lethe's demo request (`examples/demo_request.json`, what `make demo` sends): "
        f"{audit['method']} forgetting of {splits['forget_train']} PIQA rows ({splits['forget_heldout']} more held "
        "out)"
        + (f" after a {finetune['epochs']}-epoch fine-tune on them" if finetune else "")
        + f", retain {retain}, general-text perplexity ({splits['general_text']} passages)"
        + (", probes" if audit["probe"] else "")
        + f"; {audit['forget_steps']} forgetting steps (stopped by {audit['stop_reason']}).",
        "",
        "Forget: `run_forget` on the base LM already in the worker's cache (every split evaluated before and after, "
        f"the fine-tune, forgetting and its checks, probes), {_forget_time(audit, by_stage)}. Audit: "
        "the audit context built from the job's outcome in memory (the forgotten adapter, the adapter before "
        "forgetting, the same rows, batch size and seed: what the audit pipeline reads back from the object "
        "store), then `run_audit` with every attack that applies at its default params and the default "
        f"thresholds (what `POST /v1/audits` runs when it names no attacks), {audit['audit_seconds']:.0f} s. "
        "Both run one after the other in one fresh process on the same cached base LM. Neither side includes "
        "the pipelines' work around the engine (rows read from the object store; the adapter and evidence "
        "stored; the stored adapter opened on a copy of the base LM; the report built, signed and stored; the "
        "database writes), so the ratio compares the two jobs' compute. Load average at the start: forget "
        f"{audit['forget_load_average']:.2f}, audit {audit['audit_load_average']:.2f}"
        + (f", forget again {audit['second_forget_load_average']:.2f}" if "second_forget_load_average" in audit else "")
        + f"; measured {audit['date']}.",
        "",
        f"**Audit / forget job: {audit['ratio']:.2f}×; target ≤ {AUDIT_COST_TARGET}×: "
        f"{'met' if met else 'NOT met'}.** Overall verdict of the audit: {audit['verdict']}. Peak RSS of the "
        f"process ({_peak_source(audit.get('peak_rss_from'))}; the base LM's loading included): "
        f"{audit['peak_rss_after_forget_mb']:.0f} MB after "
        f"the forget job, {audit['peak_rss_mb']:.0f} MB after the audit"
        + _caches_clause(audit.get("native_caches"))
        + "."
        + _stage_peaks(
            " The forget job's resident set at its highest by stage (sampled every 20 ms): ",
            audit.get("forget_peak_rss_by_stage_mb"),
        ),
        "",
        "Time by attack (from the attack's first progress report to the next attack's; the first includes "
        "building the audit context) and the process's resident set at its highest meanwhile (sampled every "
        "20 ms; runs before that was sampled show —):",
        "",
        _row("attack", "seconds", "share of the audit", "load avg", "peak RSS", "result"),
        _row("---", "---:", "---:", "---:", "---:", "---"),
    ]
    for attack in audit["attacks"]:
        peak = attack.get("peak_rss_mb")
        lines.append(
            _row(
                attack["name"],
                f"{attack['seconds']:.1f}",
                f"{attack['seconds'] / audit['audit_seconds']:.0%}",
                f"{attack['load_average']:.2f}",
                f"{peak:.0f} MB" if peak is not None else "—",
                "skipped" if "skipped" in attack else ("diagnostic" if attack.get("diagnostic") else attack["verdict"]),
            )
        )
    lines += [
        "",
        "Recovery = (after attack − floor) / (before − floor), clipped to [0, 1], floor = max(after forgetting, "
        "chance): the share of what forgetting removed that the attack brings back (an LM forgotten below chance "
        "recovers nothing by guessing again). Each row is the attack's worst variant (the one "
        f"that recovers most); `shallow` from {thresholds['recovery']}, `inconclusive` (—) where forgetting removed "
        f"less than {thresholds['min_forgetting']} of what the attack measures. trigger measures damage instead: "
        f"the retain score's drop beyond what the same insertion costs before forgetting (`shallow` from "
        f"{thresholds['trigger_drop']}). restore and patch are diagnostics (a KRS per component and window of "
        "layers, in the results JSON), never judged: they are timed above and have no row here.",
        "",
        _row(
            "attack", "measures", "before", "after forgetting", "after attack", "recovery", "verdict", "worst variant"
        ),
        _row("---", "---", "---:", "---:", "---:", "---:", "---", "---"),
    ]
    for attack in ran:
        lines.append(
            _row(
                attack["name"],
                f"{attack['metric']} ({attack['split']})",
                f"{attack['before']:.3f}",
                f"{attack['after_forgetting']:.3f}",
                f"{attack['after_attack']:.3f}",
                _recovery_cell(attack),
                attack["verdict"],
                attack["worst_variant"],
            )
        )
    lines.append("")
    skipped = [attack for attack in audit["attacks"] if "skipped" in attack]
    if skipped:
        reasons = "; ".join(f"{attack['name']}: {attack['skipped']}" for attack in skipped)
        lines += [f"Skipped (nothing to measure on these rows): {reasons}.", ""]
    if audit["not_applicable"]:
        reasons = "; ".join(f"{entry['name']}: {entry['reason']}" for entry in audit["not_applicable"])
        lines += [f"Not applicable to these rows (a full audit leaves them out): {reasons}.", ""]
    return lines


# The steps of a run, in order, under the names `--only` takes; where each one's figures are in an entry.
STEPS = {
    "scoring": ("scoring",),
    "training": ("training",),
    "cached-start": ("cached_start_s",),
    "memory": ("peak_rss_mb",),
    "audit": ("audit",),
}


def measured_dates(results: dict) -> dict[str, str]:
    """When each step of a CPU kind's entry was measured (ISO dates, finished-at): its `measured` where a run
    recorded it; for entries from before that, the audit's own date, the scoring's where it kept one, and the
    machine's date for the rest (the date of the run that last wrote the entry, which measured them unless an
    `--only` run came after)."""
    recorded = results.get("measured") or {}
    dates = {}
    for step, (field,) in STEPS.items():
        if step in recorded:
            dates[step] = recorded[step]
        elif step == "audit" and field in results:
            dates[step] = results["audit"]["date"]
        elif step == "scoring" and "measured_with" in results.get("scoring", {}):
            dates[step] = results["scoring"]["measured_with"]["date"]
        elif field in results:
            dates[step] = results["machine"]["date"]
    return dates


def _measured_line(results: dict) -> list[str]:
    dates = measured_dates(results)
    if not dates:
        return []
    return ["Measured: " + ", ".join(f"{step} {date}" for step, date in dates.items()) + ".", ""]


def _measured_span(results: dict) -> str:
    """The days a CPU kind's figures were measured on: one day, or the first and the last."""
    days = sorted({date[:10] for date in measured_dates(results).values()})
    if not days:
        return "—"
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def render_all(everything: dict) -> str:
    """The whole BENCHMARKS.md: a summary across the CPU kinds results.json holds, then each one's figures."""
    by_cpu = everything["by_cpu"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`bench/run.py`) from `bench/results.json`; do not edit by hand. results.json keeps "
        "one entry per CPU kind (vendor, product line, CPU family number and whether it computes bf16 natively; "
        "entries from before machines recorded the family number have none); a run on another machine adds or "
        "replaces its own kind's entry only.",
        "",
        "The machines are shared: every run records the 1-minute load average when it started. The benchmark's own "
        "threads count (about the core count while it runs alone); more means other work competed, which slows both "
        "sides' figures.",
        "",
        "Entries are measured a step at a time (`--only`) as machines of each kind come along, so an entry's "
        "figures may come from different days and commits: `measured` gives their days, and each section says "
        "when each step ran.",
        "",
        _row(
            "CPU kind",
            "scoring vs lm-eval",
            "training vs naive PEFT",
            "MFU",
            "cached start",
            "peak RSS",
            "audit / job",
            "measured",
        ),
        _row("---", "---:", "---:", "---:", "---:", "---:", "---:", "---"),
    ]
    for kind, results in by_cpu.items():
        scoring, training, audit = results.get("scoring", {}), results.get("training"), results.get("audit")
        lines.append(
            _row(
                kind,
                f"{scoring['speedup']:.2f}×" if "speedup" in scoring else "—",
                f"{training['speedup']:.2f}×" if training else "—",
                f"{_mfu(training)[0]:.1%} ({_mfu(training)[1]})" if training else "—",
                _cached_start(results),
                f"{results['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in results else "—",
                f"{audit['ratio']:.2f}×" if audit else "—",
                _measured_span(results),
            )
        )
    lines.append("")
    for kind, results in by_cpu.items():
        lines += [line if not line.startswith("#") else "#" + line for line in render(results, kind).splitlines()]
    lines += [
        "## Reproduce",
        "",
        "```",
        "make bench            # about 15 minutes plus the audit step; creates bench/.lmeval-venv on first use",
        "python -m bench.run --help   # rows, task, --skip-lmeval (Lethe only), paths",
        "python -m bench.run --only training   # one step alone (training|cached-start|memory|audit), merged into",
        "                                      # this CPU kind's entry of bench/results.json",
        "python -m bench.report       # re-render this file from bench/results.json",
        "```",
        "",
        "lm-evaluation-harness runs in its own venv (`bench/setup_lmeval.sh`: torch==2.13.0, the CPU build, "
        "then `lm_eval[hf]`), so its dependencies never meet the project's.",
        "",
    ]
    return "\n".join(lines)


# When the worker began storing the decoder blocks' matmul weights in bf16 on CPUs with native bf16
# (worker/engine/lm/block_weights.py, commit bb1f84c), which the bench's Lethe fp32 scoring setting then also timed.
BLOCK_WEIGHTS_SINCE = "2026-11-30T22:48:57+00:00"


def _lethe_fp32_rows(results: dict) -> list[str]:
    """What Lethe's "fp32" scoring rows computed in: the recorded block dtypes, or, for an entry scored on a CPU with
    native bf16 after block weights came and before the bench recorded them, the warning that they are not fp32."""
    scoring = results["scoring"]
    dtypes = scoring.get("lethe_block_dtypes")
    if dtypes:
        stored = ", ".join(f"{precision}: {dtype}" for precision, dtype in dtypes.items())
        return [
            f"Each Lethe setting scores an LM whose decoder blocks' matmul weights are stored in ({stored}); where "
            "the worker stores them in bf16, the fp32 setting scores a copy loaded as LETHE_PRECISION=fp32 loads it.",
            "",
        ]
    scored = measured_dates(results).get("scoring", "")
    if results["machine"]["bf16_native"] and scored >= BLOCK_WEIGHTS_SINCE:
        headline = scoring.get("lethe_setting", {}).get("precision") == "fp32"
        return [
            "**Lethe's fp32 rows here are not fp32.** They scored the worker's LM, whose decoder blocks this CPU "
            "stores in bf16 (worker/engine/lm/block_weights.py, from 2026-11-30), without autocast, so the blocks "
            "computed in bf16 (the LM head in fp32); the bench loads an fp32 copy for that setting since 2026-12-02. "
            + (
                "Lethe's headline is such a run: its figure is what a worker's LM scores in, with bf16 blocks and no "
                "autocast, not an fp32 one."
                if headline
                else "Lethe's bf16 rows and its headline are as labelled."
            ),
            "",
        ]
    return []


def _cached_start(results: dict) -> str:
    """The overview's cached start: claim to the start of training where the entry timed it, otherwise (older
    entries) claim to the end of the first optimizer step, marked so."""
    if "cached_training_start_s" in results:
        return f"{results['cached_training_start_s']:.1f} s"
    if "cached_start_s" in results:
        return f"{results['cached_start_s']:.1f} s (to the first step's end)"
    return "—"


def _mfu(training: dict) -> tuple[float, str]:
    """Lethe's MFU and the peak it is against: the precision the run computed in (older results: bf16's)."""
    if "mfu" in training:
        return training["mfu"], f"vs {training['precision']} peak"
    return training["mfu_vs_bf16_peak"], "vs bf16 peak"


def _training_target(results: dict) -> float:
    return TARGETS["training"] if results["machine"]["bf16_native"] else TARGETS["training_fp32"]


def render(results: dict, kind: str = "") -> str:
    """One CPU kind's figures (a section of BENCHMARKS.md); steps not measured on it are left out."""
    m = results["machine"]
    peak = results.get("matmul_peak_gflops")
    scoring = results.get("scoring", {})
    training = results.get("training")
    peaks = ""
    if peak is not None:
        bf16_peak = f"bf16 {peak['bf16']:.0f} GFLOP/s" if peak.get("bf16") else "bf16 not measured (not native)"
        peaks = (
            f" Matmul peak (best of {peak['repeats']} square 2048 products): fp32 {peak['fp32']:.0f} GFLOP/s, "
            f"{bf16_peak}."
        )
    wall = f" Whole run: {results['bench_wall_s'] / 60:.1f} min." if "bench_wall_s" in results else ""
    lines = [
        f"# {kind or 'Benchmarks'}",
        "",
        f"Machine: {m['cpu']}"
        + (f" (CPU family {m['cpu_family']})" if m.get("cpu_family") is not None else "")
        + f", {m['cores']} cores ({m['torch_threads']} torch threads), native bf16: "
        f"{'yes' if m['bf16_native'] else 'no (bf16 settings skipped)'}"
        + ({True: " (AMX tiles)", False: " (no AMX)"}.get(m["amx"], "") if "amx" in m else "")
        + f"; torch {m['torch']}, transformers "
        f"{m['transformers']}, peft {m['peft']}, Python {m['python']}; {m['date']}.{peaks}{wall}",
        "",
        *_measured_line(results),
        "## Summary",
        "",
        _row("what", "Lethe", "baseline", "ratio", "target", "met"),
        _row("---", "---:", "---:", "---:", "---:", "---"),
    ]
    if "speedup" in scoring:
        lines.append(
            _row(
                f"scoring {scoring['task']} ({scoring['rows']} rows, {scoring['choices']} choices), rows/s",
                f"{scoring['lethe_rows_per_s']:.2f}",
                f"{scoring['lmeval_rows_per_s']:.2f} (lm-eval)",
                f"{scoring['speedup']:.2f}×",
                f"≥ {TARGETS['scoring']}×",
                _met(scoring["speedup"], TARGETS["scoring"]),
            )
        )
        lines.append(
            _row(
                "scoring accuracy",
                f"{scoring['lethe_accuracy']:.4f}",
                f"{scoring['lmeval_fp32_accuracy']:.4f} (lm-eval fp32)",
                f"{scoring['accuracy_delta_pts']:+.2f} pt",
                "±0.5 pt",
                _met(0.5 - abs(scoring["accuracy_delta_pts"]), 0.0),
            )
        )
    if training is not None:
        mfu, against = _mfu(training)
        lines += [
            _row(
                f"forget training ({training['rows']} rows, {training['steps']} steps, "
                f"{training.get('precision', 'bf16')}), tokens/s",
                f"{training['lethe_tokens_per_s']:.0f}",
                f"{training['naive_tokens_per_s']:.0f} (naive PEFT loop)",
                f"{training['speedup']:.2f}×",
                f"≥ {_training_target(results)}×",
                _met(training["speedup"], _training_target(results)),
            ),
            _row(
                "training loss curve, Lethe against naive (same batches, same start)",
                f"within {training['loss_curve_max_rel_diff']:.1%} at every step",
                "",
                "",
                "",
                "",
            ),
            _row(
                f"training MFU ({against})",
                f"{mfu:.1%}",
                f"{training['naive_mfu_vs_fp32_peak']:.1%} (naive, vs fp32 peak)",
                "",
                "",
                "",
            ),
        ]
    if "cached_training_start_s" in results:
        lines.append(
            _row(
                "second job on the same base and rows: claim to the start of training",
                f"{results['cached_training_start_s']:.1f} s",
                f"{results['cold_training_start_s']:.1f} s (first job)",
                "",
                f"≤ {CACHED_START_TARGET_S:.0f} s",
                _met(CACHED_START_TARGET_S, results["cached_training_start_s"]),  # at most the target: swapped
            )
        )
    if "cached_start_s" in results:
        # Entries from before the start of training was timed have this row only, and it carried the target.
        timed_start = "cached_training_start_s" in results
        lines.append(
            _row(
                "second job on the same base and rows: claim to the end of its first optimizer step",
                f"{results['cached_start_s']:.1f} s",
                f"{results['cold_start_s']:.1f} s (first job)",
                "",
                "" if timed_start else f"≤ {CACHED_START_TARGET_S:.0f} s",
                "" if timed_start else _met(CACHED_START_TARGET_S, results["cached_start_s"]),
            )
        )
    audit_entry = results.get("audit")
    if "peak_rss_mb" in results:
        default_budget = results.get("memory_activation_budget_mb")
        label = "peak RSS of a whole SmolLM2 forget job"
        if default_budget is not None:
            label += f" (as a worker runs it: activation budget {default_budget} MB)"
        memory_rows = [(label, results["peak_rss_mb"])]
        other = _other_budget_run(results)
        if other is not None:
            budget = other["activation_budget_mb"]
            label = f"the same with LETHE_ACTIVATION_BUDGET_MB={budget}" + (" (no budget)" if budget == 0 else "")
            memory_rows.append((label, other["peak_rss_mb"]))
        if audit_entry is not None and "peak_rss_from" in audit_entry:
            # The demo job (the audit step's first forget run) in a process set up as a worker's, caches included.
            memory_rows.append(
                ("peak RSS of the demo forget job (48 PIQA rows, fine-tune, random_label, probes; the audit step's)",
                 audit_entry["peak_rss_after_forget_mb"])
            )  # fmt: skip
        conversion = results.get("memory_conversion")
        if conversion is not None:
            memory_rows.append(
                ("peak RSS converting the bundled GGUF to safetensors (once per cache: a worker's first job on it)",
                 conversion["peak_rss_mb"])
            )  # fmt: skip
        for label, peak in memory_rows:
            # _met(target, value): at most the target, so the arguments are swapped
            met = _met(PEAK_RSS_TARGET_MB, peak)
            lines.append(_row(label, f"{peak:.0f} MB", "", "", f"≤ {PEAK_RSS_TARGET_MB} MB", met))
    audit = results.get("audit")
    if audit is not None:
        lines.append(
            _row(
                f"{_audit_name(audit)} of the demo forget job, seconds",
                f"{audit['audit_seconds']:.0f}",
                f"{audit['forget_seconds']:.0f} (the forget job)",
                f"{audit['ratio']:.2f}×",
                f"≤ {AUDIT_COST_TARGET}×",
                _met(AUDIT_COST_TARGET, audit["ratio"]),  # at most the target: the arguments swapped
            )
        )
    lines.append("")
    if "speedup" in scoring:
        agreement = scoring["lethe_vs_lmeval_fp32"]
        measured = scoring.get("measured_with")
        lines += [
            "## Scoring: every run",
            "",
            *(
                [
                    f"Measured on {measured['date']} with transformers {measured['transformers']}, in a run before "
                    "this entry's other steps (`--only` reruns them, not this one).",
                    "",
                ]
                if measured
                else []
            ),
            f"Task: the first {scoring['rows']} rows of {scoring['task']} (lm-eval's prompt, `Question: ...\\nAnswer:` "
            "and each choice after a space), as the same strings for both: lm-eval reads them as a local YAML task "
            'over a jsonl file (`target_delimiter: ""`, since the choices carry their space) and loads the same '
            "safetensors directory Lethe converted. lm-eval's time is its `HFLM.loglikelihood` call (tokenization "
            "and scoring, what Lethe's `score_choices` times), after an untimed warm-up evaluation in each process.",
            "",
            "Protocol: a sweep of each side's precisions and batch sizes; each side's fastest setting whose accuracy "
            "is within 0.5 pt of lm-eval fp32's is then run twice more, alternating with the other side's, and the "
            "headline takes each side's best run of its setting.",
            "",
            f"Lethe's headline run against lm-eval fp32, choice by choice: largest log-likelihood difference "
            f"{agreement['max_abs_loglikelihood_diff']:.3f}, mean {agreement['mean_abs_loglikelihood_diff']:.4f}, "
            f"same prediction on {agreement['prediction_agreement']:.1%} of rows.",
            "",
            *_lethe_fp32_rows(results),
            _row("stage", "system", "precision", "batch (pairs)", "seconds", "rows/s", "accuracy", "load avg"),
            _row("---", "---", "---", "---:", "---:", "---:", "---:", "---:"),
        ]
        for run in scoring["runs"]:
            lines.append(
                _row(
                    run["stage"],
                    run["system"],
                    run["precision"],
                    run["batch_size"],
                    f"{run['seconds']:.1f}",
                    f"{run['rows_per_s']:.2f}",
                    f"{run['accuracy']:.4f}",
                    f"{run['load_average']:.2f}",
                )
            )
        lines.append("")
    if training is not None:
        lines += [
            "## Forget training",
            "",
            f"Gradient ascent with LoRA r=8 (alpha 16) on every linear layer, {training['rows']} rows, "
            f"{training['epochs']} epochs of batches of {training['batch_size']} rows, AdamW lr "
            f"{training['learning_rate']:g}, gradients clipped to norm 1, the same seeded batch order and LoRA "
            "initialisation on both sides. The naive loop (`bench/naive_peft.py`) is what a user writes with "
            "transformers + peft: fp32, batches padded to their longest row, full logits. Lethe packs each batch "
            "into one row without padding (block-diagonal attention), runs the LM head only where a target is "
            "predicted, and steps AdamW fused. Tokens/s counts the tokens fed (prompt and answer, no padding): "
            f"{training['tokens']} for Lethe, {training['naive_tokens']} for the naive loop. The two loops run "
            f"interleaved, {training.get('repeats', 1)} rounds, each side's best run kept.",
            "",
            f"Model FLOPs per token: {training['model_flops_per_token'] / 1e6:.0f} M = 4·N over the linear "
            "layers' weights (forward, and the backward's activation gradients: the frozen weights need no weight "
            "gradients) + 4·(vocab × hidden) for the LM head only where a target token is predicted + 6·N_lora; "
            "attention's own products (under 2% here) are left out. MFU = tokens/s × that / the measured matmul "
            "peak of the precision the run computed in (fp32 where the CPU has no native bf16). Lethe: "
            f"{training['lethe_tflops'] * 1000:.0f} GFLOP/s.",
            "",
            _row("step", "Lethe loss", "naive loss"),
            _row("---:", "---:", "---:"),
        ]
        for step, (ours, theirs) in enumerate(zip(training["lethe_losses"], training["naive_losses"], strict=False)):
            lines.append(_row(step + 1, f"{ours:.3f}", f"{theirs:.3f}"))
        if "runs" in training:
            lines += ["", _row("round", "system", "tokens/s", "load avg"), _row("---:", "---", "---:", "---:")]
            for index, run in enumerate(training["runs"]):
                lines.append(
                    _row(index // 2 + 1, run["system"], f"{run['tokens_per_s']:.0f}", f"{run['load_average']:.2f}")
                )
    if "cached_start_s" in results:
        lines += [
            "",
            "## Cached start",
            "",
            "Two forget jobs on the same base LM and rows in one process (one worker), each timed from its claim "
            "(getting the base LM from the worker's `BaseLMCache`) to the end of its first optimizer step"
            + (
                " and to the start of forgetting (the first progress report of its forgetting stage: the issue's "
                "target, a second job starting to train within 2 s of its claim; the first step's own time is "
                "training speed)"
                if "cached_training_start_s" in results
                else " (this entry timed only that, against the 2 s target)"
            )
            + ". The first "
            "evaluates the base stage on every split (32 forget-train, 8 forget-heldout ARC-Easy rows, 16 PIQA retain "
            "rows); the second takes those scores from the worker's base-stage cache "
            "(`worker/engine/forget/base_stage.py`). The pipeline's own reads (rows from the object store) are not "
            "included."
            + (
                f" Load average at the start: first job {results['cold_start_load_average']:.2f}, second "
                f"{results['cached_start_load_average']:.2f}."
                if "cached_start_load_average" in results
                else ""
            ),
        ]
    if "peak_rss_mb" in results:
        lines += [
            "",
            "## Memory",
            "",
            f"The peak RSS ({_peak_source(results.get('memory_peak_rss_from'))}) of a fresh process running one "
            "whole job "
            f"(4 steps, probes on; {results['memory_job_s']:.0f} s)"
            + (
                f", with the allocator a worker runs with ({results['memory_allocator']}, worker/allocator.py)"
                if "memory_allocator" in results
                else ""
            )
            + _caches_clause(results.get("memory_native_caches"))
            + "."
            + _stage_peaks(" Its stage peaks: ", results.get("memory_stage_peaks_mb")),
            "",
            *_memory_breakdown(results.get("memory_breakdown")),
        ]
        conversion = results.get("memory_conversion")
        if conversion is not None:
            lines += [
                "",
                "Before it, in a fresh process of its own: converting the bundled GGUF to the safetensors copy the "
                "jobs load (what a worker's first job on a fresh cache does once, `bundled_safetensors_dir`), "
                f"{conversion['seconds']:.0f} s, peak RSS {conversion['peak_rss_mb']:.0f} MB "
                f"({_peak_source(conversion.get('peak_rss_from'))}).",
            ]
        other = _other_budget_run(results)
        if other is not None:
            budget = other["activation_budget_mb"]
            setting = (
                "no activation budget (no checkpointing)"
                if budget == 0
                else f"`LETHE_ACTIVATION_BUDGET_MB={budget}` (activation checkpointing for training batches past it)"
            )
            lines += [
                "",
                f"With {setting} the same job peaked at {other['peak_rss_mb']:.0f} MB "
                f"({other['job_seconds']:.0f} s)" + _stage_peaks("; stage peaks: ", other["stage_peaks_mb"]),
            ]
    lines.append("")
    if audit is not None:
        lines += _audit_section(audit)
    return "\n".join(lines)


if __name__ == "__main__":
    results_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results.json")
    markdown_path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
    stored = json.loads(results_path.read_text())
    if "by_cpu" not in stored:  # the older one-machine shape
        stored = {"by_cpu": {"results": stored}}
    markdown_path.write_text(render_all(stored))
