"""What the benchmark ran on: CPU, cores, library versions, date, and how busy the machine was."""

from __future__ import annotations

import datetime
import os
import platform
import re
from importlib.metadata import version

import torch

from worker.engine.precision import bf16_supported


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_family() -> int | None:
    """The CPU family number from /proc/cpuinfo (AMD: 25 for Zen 3 and Zen 4, 26 for Zen 5; Intel: 6 for every
    Xeon of the last decades), None where it does not say."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("cpu family"):
                    return int(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def cpu_kind(machine: dict) -> str:
    """The key of a machine's figures in results.json: CPU vendor, product line, family number and the precision
    it trains in, e.g. `amd-epyc-family26-bf16` (native bf16) or `intel-xeon-family6-fp32` (none): the same code's
    figures differ most by these.

    The family number tells CPUs of one line apart that the model name ("AMD EPYC" on these machines) and the
    precision do not: a Zen 5 EPYC (family 26) multiplies bf16 at twice a Zen 4's rate (family 25; both native bf16:
    898 against 404 GFLOP/s on two cores). Entries measured before machines recorded it (2026-12-01) keep their
    key without it, e.g. `amd-epyc-bf16`."""
    name = machine["cpu"].lower()
    words = re.findall(r"[a-z]+", name.replace("(r)", " ").replace("(tm)", " "))
    vendor = next((w for w in words if w in ("amd", "intel", "arm", "apple", "ampere")), words[0] if words else "cpu")
    line = next((w for w in words if w in ("epyc", "ryzen", "xeon", "core", "threadripper", "neoverse")), "")
    precision = "bf16" if machine["bf16_native"] else "fp32"
    number = machine.get("cpu_family")
    generation = f"family{number}" if number is not None else ""
    return "-".join(part for part in (vendor, line, generation, precision) if part)


def load_average() -> float:
    """The 1-minute load average (other work on a shared machine slows every measurement)."""
    return os.getloadavg()[0]


def machine() -> dict:
    """The machine and software the figures were measured on."""
    return {
        "cpu": cpu_model(),
        "cpu_family": cpu_family(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_native": bf16_supported("cpu"),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
