from bench.machine import cpu_kind
from bench.report import measured_dates, render, render_all


def results() -> dict:
    run = {"system": "lethe", "precision": "fp32", "batch_size": 16, "seconds": 2.0, "rows": 4, "accuracy": 0.5}
    return {
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "torch_threads": 2,
            "bf16_native": True,
            "torch": "2.13.0",
            "transformers": "5",
            "peft": "0.21",
            "python": "3.11",
            "date": "2026-11-22",
        },
        "matmul_peak_gflops": {"fp32": 150.0, "bf16": 400.0, "repeats": 30},
        "scoring": {
            "task": "arc_easy",
            "rows": 4,
            "choices": 16,
            "lethe_rows_per_s": 10.0,
            "lmeval_rows_per_s": 4.0,
            "speedup": 2.5,
            "lethe_accuracy": 0.5,
            "lmeval_accuracy": 0.5,
            "lmeval_fp32_accuracy": 0.5,
            "accuracy_delta_pts": 0.0,
            "lethe_vs_lmeval_fp32": {
                "max_abs_loglikelihood_diff": 0.1,
                "mean_abs_loglikelihood_diff": 0.01,
                "prediction_agreement": 1.0,
            },
            "runs": [run | {"rows_per_s": 2.0, "load_average": 0.3, "stage": "final"}],
        },
        "training": {
            "rows": 8,
            "epochs": 1,
            "batch_size": 4,
            "learning_rate": 5e-4,
            "steps": 2,
            "tokens": 100,
            "naive_tokens": 100,
            "lethe_tokens_per_s": 200.0,
            "naive_tokens_per_s": 100.0,
            "speedup": 2.0,
            "model_flops_per_token": 5e8,
            "lethe_tflops": 0.1,
            "mfu_vs_bf16_peak": 0.25,
            "naive_mfu_vs_fp32_peak": 0.3,
            "loss_curve_max_rel_diff": 0.05,
            "lethe_losses": [-1.0, -2.0],
            "naive_losses": [-1.0, -2.1],
        },
        "cached_start_s": 3.0,
        "cold_start_s": 5.0,
        "peak_rss_mb": 2000.0,
        "memory_job_s": 30.0,
        "bench_wall_s": 600.0,
    }


def test_report_tables_come_from_the_results() -> None:
    markdown = render(results())
    assert (
        "| scoring arc_easy (4 rows, 16 choices), rows/s | 10.00 | 4.00 (lm-eval) | 2.50× | ≥ 2.0× | yes |" in markdown
    )
    assert (
        "| forget training (8 rows, 2 steps, bf16), tokens/s | 200 | 100 (naive PEFT loop) | 2.00× | ≥ 1.8× | yes |"
        in markdown
    )
    assert "| final | lethe | fp32 | 16 | 2.0 | 2.00 | 0.5000 | 0.30 |" in markdown
    assert "| 2 | -2.000 | -2.100 |" in markdown
    assert "Test CPU" in markdown
    # Older results: MFU against the bf16 peak, as they recorded it.
    assert "| training MFU (vs bf16 peak) | 25.0% |" in markdown
    # Older results timed the cached start to the end of the first optimizer step only, against the target.
    assert (
        "| second job on the same base and rows: claim to the end of its first optimizer step | 3.0 s | 5.0 s "
        "(first job) |  | ≤ 2 s | **no** |" in markdown
    )
    assert "claim to the start of training" not in markdown


def test_the_cached_start_target_is_read_against_the_start_of_training() -> None:
    markdown = render(results() | {"cached_training_start_s": 0.8, "cold_training_start_s": 4.1})
    assert (
        "| second job on the same base and rows: claim to the start of training | 0.8 s | 4.1 s (first job) |  "
        "| ≤ 2 s | yes |" in markdown
    )
    # The first step's end is still reported, without the target.
    assert (
        "| second job on the same base and rows: claim to the end of its first optimizer step | 3.0 s | 5.0 s "
        "(first job) |  |  |  |" in markdown
    )


def fp32_results() -> dict:
    """A run on a CPU without native bf16: fp32 training, MFU against the fp32 peak, no bf16 peak measured."""
    earlier = results()
    return earlier | {
        "machine": earlier["machine"] | {"cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz", "bf16_native": False},
        "matmul_peak_gflops": {"fp32": 150.0, "bf16": None, "repeats": 30},
        "training": {k: v for k, v in earlier["training"].items() if k != "mfu_vs_bf16_peak"}
        | {"precision": "fp32", "mfu": 0.4, "speedup": 1.4, "runs": [], "repeats": 2},
        "cached_start_s": 1.5,
        "cached_training_start_s": 0.7,
        "cold_training_start_s": 4.0,
    }


def test_each_cpu_kind_keeps_its_own_figures() -> None:
    assert cpu_kind(results()["machine"] | {"cpu": "AMD EPYC 7B13"}) == "amd-epyc-bf16"
    assert cpu_kind(fp32_results()["machine"]) == "intel-xeon-fp32"
    # Machines that record their CPU family number (from 2026-12-01) are told apart by it: Zen 4 and Zen 5 EPYCs
    # are both "AMD EPYC" with native bf16.
    zen5 = results()["machine"] | {"cpu": "AMD EPYC", "cpu_family": 26}
    assert cpu_kind(zen5) == "amd-epyc-family26-bf16"
    assert cpu_kind(zen5 | {"cpu_family": 25}) == "amd-epyc-family25-bf16"
    # Every Intel Xeon is family 6: machines that record AMX (from 2026-12-02) are told apart by it.
    xeon = results()["machine"] | {"cpu": "Intel(R) Xeon(R) Processor", "cpu_family": 6}
    assert cpu_kind(xeon | {"amx": True}) == "intel-xeon-family6-amx-bf16"
    assert cpu_kind(xeon | {"amx": False}) == cpu_kind(xeon) == "intel-xeon-family6-bf16"
    assert "native bf16: yes (AMX tiles); torch" in render(results() | {"machine": xeon | {"amx": True}})
    assert "Machine: AMD EPYC (CPU family 26), 2 cores" in render(results() | {"machine": zen5})
    markdown = render_all({"by_cpu": {"amd-epyc-bf16": results(), "intel-xeon-fp32": fp32_results()}})
    # The cached start: to the start of training where an entry timed it, else to the first step's end, said so.
    assert (
        "| amd-epyc-bf16 | 2.50× | 2.00× | 25.0% (vs bf16 peak) | 3.0 s (to the first step's end) | 2000 MB | — |"
        in markdown
    )
    assert "| intel-xeon-fp32 | 2.50× | 1.40× | 40.0% (vs fp32 peak) | 0.7 s | 2000 MB | — |" in markdown
    assert "## amd-epyc-bf16" in markdown and "## intel-xeon-fp32" in markdown and "make bench" in markdown
    # Without native bf16: the fp32 target, MFU against the fp32 peak, the cached start within its target.
    assert "| 1.40× | ≥ 1.3× | yes |" in markdown and "| training MFU (vs fp32 peak) | 40.0% |" in markdown
    assert "bf16 not measured (not native)" in markdown
    assert "| 0.7 s | 4.0 s (first job) |  | ≤ 2 s | yes |" in markdown


def audit(ratio: float) -> dict:
    judged = {"params": {}, "metric": "accuracy", "split": "forget_train", "effect": "recovery", "excess_drop": None}
    return {
        "date": "2026-11-22T12:00:00+00:00",
        "method": "random_label",
        "method_params": {"epochs": 10},
        "finetune": {"epochs": 4, "learning_rate": 0.001},
        "probe": True,
        "seed": 0,
        "splits": {"forget_train": 48, "forget_heldout": 48, "retain:arc_easy": 32, "general_text": 20},
        "forget_steps": 60,
        "stop_reason": "target",
        "forget_seconds": 100.0,
        "forget_seconds_by_stage": {"evaluating": 40.0, "finetuning": 20.0, "forgetting": 30.0, "probing": 10.0},
        "forget_load_average": 2.1,
        "audit_seconds": 100.0 * ratio,
        "audit_load_average": 2.3,
        "ratio": ratio,
        "thresholds": {"recovery": 0.25, "attacks": {}, "trigger_drop": 0.05, "min_forgetting": 0.05},
        "verdict": "shallow",
        "attacks": [
            judged
            | {"name": "quantize", "seconds": 75.0 * ratio, "load_average": 2.2, "peak_rss_mb": 2400.4, "before": 0.9}
            | {"after_forgetting": 0.5, "after_attack": 0.8, "recovery": 0.75, "verdict": "shallow"}
            | {"worst_variant": "int4", "variants": []},
            {"name": "restore", "seconds": 20.0 * ratio, "load_average": 2.4, "diagnostic": True, "metric": "krs"}
            | {"split": "forget_train", "rows": 48, "rows_undefined": 0, "variants": []},
            judged
            | {"name": "trigger", "effect": "damage", "metric": "accuracy", "split": "retain"}
            | {"seconds": 4.0 * ratio, "load_average": 2.0, "before": 0.7, "after_forgetting": 0.7}
            | {"after_attack": 0.6, "recovery": None, "excess_drop": 0.1, "verdict": "shallow"}
            | {"worst_variant": "prefix", "variants": []},
            {"name": "paraphrase", "seconds": 1.0 * ratio, "load_average": 2.0, "skipped": "no paraphrased rows"},
        ],
        "not_applicable": [],
        "peak_rss_after_forget_mb": 3000.0,
        "peak_rss_mb": 3500.0,
    }


def test_audit_section_reports_the_ratio_against_its_target() -> None:
    met = render(results() | {"audit": audit(1.2)})
    assert (
        "| full audit (4 attacks) of the demo forget job, seconds | 120 | 100 (the forget job) | 1.20× | ≤ 1.5× | yes |"
        in met
    )
    assert "**Audit / forget job: 1.20×; target ≤ 1.5×: met.**" in met
    not_met = render(results() | {"audit": audit(2.0)})
    assert "| 200 | 100 (the forget job) | 2.00× | ≤ 1.5× | **no** |" in not_met
    assert "target ≤ 1.5×: NOT met.**" in not_met
    # Two forget runs around the audit: the report says the time is their mean.
    bracketed = render(
        results() | {"audit": audit(1.2) | {"forget_seconds_runs": [90.0, 110.0], "second_forget_load_average": 1.5}}
    )
    assert "100 s, the mean of a run before the audit (90 s: evaluating 40 s," in bracketed
    assert "the same job run again after it (110 s)" in bracketed and "forget again 1.50" in bracketed
    sampled = render(results() | {"audit": audit(1.2) | {"forget_peak_rss_by_stage_mb": {"evaluating": 1999.6}}})
    assert "The forget job's resident set at its highest by stage (sampled every 20 ms): evaluating 2000 MB." in sampled
    # Results from before the audit step render without its section.
    assert "## Audit cost" not in render(results()) and "## Audit cost" in met


def test_audit_section_tables_come_from_the_results() -> None:
    markdown = render(results() | {"audit": audit(1.0)})
    # One forget run, before the audit (results from before the bench ran it twice): the report says so.
    assert "(evaluating 40 s, finetuning 20 s, forgetting 30 s, probing 10 s; one run, before the audit" in markdown
    assert "retain arc_easy (32 rows)" in markdown and "3000 MB after the forget job, 3500 MB after" in markdown
    # Each attack's peak resident set where the run sampled it.
    assert "| quantize | 75.0 | 75% | 2.20 | 2400 MB | shallow |" in markdown
    assert "| paraphrase | 1.0 | 1% | 2.00 | — | skipped |" in markdown
    assert "Recovery = (after attack − floor) / (before − floor)" in markdown
    assert "| quantize | accuracy (forget_train) | 0.900 | 0.500 | 0.800 | 0.75 | shallow | int4 |" in markdown
    # A diagnostic is timed, never judged: no recovery row.
    assert "| restore | 20.0 | 20% | 2.40 | — | diagnostic |" in markdown
    assert "| restore | krs" not in markdown
    assert "| trigger | accuracy (retain) | 0.700 | 0.700 | 0.600 | excess drop +0.100 | shallow | prefix |" in markdown
    # A skipped attack has no recovery row; it is listed with its reason, and so is an attack that did not run.
    assert "| paraphrase | accuracy" not in markdown
    assert "Skipped (nothing to measure on these rows): paraphrase: no paraphrased rows." in markdown
    assert "Not applicable" not in markdown


def test_audit_section_lists_the_attacks_that_do_not_apply() -> None:
    partial = audit(1.0) | {"not_applicable": [{"name": "probe", "reason": "does not apply to text rows"}]}
    markdown = render(results() | {"audit": partial})
    assert (
        "Not applicable to these rows (a full audit leaves them out): probe: does not apply to text rows." in markdown
    )


def test_each_step_says_when_it_was_measured() -> None:
    # An entry a run recorded step by step: its dates, in the run's order whatever order they were recorded in.
    recorded = results() | {"audit": audit(1.2), "measured": {"audit": "2026-11-25T09:00", "training": "2026-11-20"}}
    assert measured_dates(recorded) == {
        "scoring": "2026-11-22",
        "training": "2026-11-20",
        "cached-start": "2026-11-22",
        "memory": "2026-11-22",
        "audit": "2026-11-25T09:00",
    }
    # An entry from before: the audit's own date, the scoring's where it kept one, the machine's for the rest.
    older = results() | {"audit": audit(1.2)}
    older["scoring"] = older["scoring"] | {"measured_with": {"date": "2026-11-02T08:00", "transformers": "5.2"}}
    assert measured_dates(older) == {
        "scoring": "2026-11-02T08:00",
        "training": "2026-11-22",
        "cached-start": "2026-11-22",
        "memory": "2026-11-22",
        "audit": "2026-11-22T12:00:00+00:00",
    }
    markdown = render_all({"by_cpu": {"amd-epyc-bf16": recorded, "intel-xeon-fp32": fp32_results()}})
    # The summary gives each kind's span of days; each section, every step's date.
    assert "| 1.20× | 2026-11-20 to 2026-11-25 |" in markdown
    assert "| — | 2026-11-22 |" in markdown
    assert (
        "Measured: scoring 2026-11-22, training 2026-11-20, cached-start 2026-11-22, memory 2026-11-22, audit "
        "2026-11-25T09:00." in markdown
    )
    # An entry with no step measured says nothing about dates.
    assert measured_dates({"machine": results()["machine"]}) == {}


def test_the_demo_jobs_peak_and_the_matmul_caches_are_reported_where_recorded() -> None:
    caches = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "64"}
    own_peak = {"peak_rss_from": "VmHWM"}
    recorded = render(
        results()
        | {"memory_allocator": "jemalloc", "memory_native_caches": caches, "memory_peak_rss_from": "VmHWM"}
        | {"audit": audit(1.2) | {"peak_rss_after_forget_mb": 1450.4, "native_caches": caches} | own_peak}
    )
    row = (
        "| peak RSS of the demo forget job (48 PIQA rows, fine-tune, random_label, probes; the audit step's) | 1450 MB"
    )
    assert row + " |  |  | ≤ 1500 MB | yes |" in recorded
    clause = (
        "; matmul caches as a worker bounds them: ONEDNN_PRIMITIVE_CACHE_CAPACITY=64, LRU_CACHE_CAPACITY=64 "
        "(worker/native_caches.py)."
    )
    assert "with the allocator a worker runs with (jemalloc, worker/allocator.py)" + clause in recorded
    assert "3500 MB after the audit" + clause in recorded
    # Runs from before the caches were bounded (and recorded) say nothing of them, and give no demo-job row: that
    # peak was measured at the libraries' defaults.
    older = render(results() | {"audit": audit(1.2)})
    assert "matmul caches" not in older and "peak RSS of the demo forget job" not in older
    # Their peaks were read from ru_maxrss, which a process the bench starts inherits from the bench: said so.
    assert "The peak RSS (`ru_maxrss`, which Linux carries across fork and exec" in older
    assert "process (`ru_maxrss`, which Linux carries across fork and exec" in older
    assert "The peak RSS (`VmHWM`, the high-water mark of the process's own memory) of a fresh process" in recorded
    # A run whose audit read ru_maxrss (caches recorded, the peak not yet from VmHWM) gives no demo-job row either.
    read_from_ru_maxrss = audit(1.2) | {"peak_rss_after_forget_mb": 3415.0, "native_caches": caches}
    inherited = render(results() | {"audit": read_from_ru_maxrss})
    assert "peak RSS of the demo forget job" not in inherited


def test_the_conversions_peak_and_the_jobs_stage_peaks_are_reported_where_recorded() -> None:
    conversion = {"peak_rss_mb": 1194.2, "peak_rss_from": "VmHWM", "seconds": 19.3}
    stages = {"loading": 900.4, "evaluating": 1100.0, "forgetting": 1300.6}
    markdown = render(results() | {"memory_conversion": conversion, "memory_stage_peaks_mb": stages})
    assert (
        "| peak RSS converting the bundled GGUF to safetensors (once per cache: a worker's first job on it) | 1194 MB"
        " |  |  | ≤ 1500 MB | yes |"
    ) in markdown
    assert "Its stage peaks: loading 900 MB, evaluating 1100 MB, forgetting 1301 MB." in markdown
    assert "does once, `bundled_safetensors_dir`), 19 s, peak RSS 1194 MB (`VmHWM`" in markdown
    older = render(results())
    assert "converting the bundled GGUF" not in older and "Its stage peaks" not in older


def test_lethes_fp32_scoring_rows_say_what_they_computed_in() -> None:
    not_fp32 = "**Lethe's fp32 rows here are not fp32.**"
    # Scored on a CPU with native bf16 after the worker began storing the blocks in bf16, before the bench loaded
    # an fp32 copy for that setting: the rows are flagged.
    scored_then = results() | {"measured": {"scoring": "2026-12-01T11:45:15+00:00"}}
    assert not_fp32 in render(scored_then) and "its headline are as labelled" in render(scored_then)
    fp32_headline = scored_then | {"scoring": scored_then["scoring"] | {"lethe_setting": {"precision": "fp32"}}}
    assert "Lethe's headline is such a run" in render(fp32_headline)
    # Before block weights, or on a CPU without native bf16, the blocks were fp32: nothing to flag.
    assert not_fp32 not in render(results())
    assert not_fp32 not in render(scored_then | {"machine": results()["machine"] | {"bf16_native": False}})
    # Runs that record each setting's block dtype say them instead.
    dtypes = {"fp32": "float32", "bf16 autocast": "bfloat16"}
    recorded = scored_then | {"scoring": scored_then["scoring"] | {"lethe_block_dtypes": dtypes}}
    markdown = render(recorded)
    assert not_fp32 not in markdown
    assert "decoder blocks' matmul weights are stored in (fp32: float32, bf16 autocast: bfloat16)" in markdown
