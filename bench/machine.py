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


def amx_supported() -> bool:
    """Whether the CPU has AMX tiles (Intel Xeon from Sapphire Rapids on), which multiply bf16 in matrix units."""
    return bool(torch.cpu._is_amx_tile_supported())


def cpu_kind(machine: dict) -> str:
    """The key of a machine's figures in results.json: CPU vendor, product line, family number, AMX where the CPU
    has it, and the precision it trains in, e.g. `amd-epyc-family26-bf16` (native bf16),
    `intel-xeon-family6-amx-bf16` or `intel-xeon-family6-fp32` (none): the same code's figures differ most by these.

    The family number tells CPUs of one line apart that the model name ("AMD EPYC" on these machines) and the
    precision do not: a Zen 5 EPYC (family 26) multiplies bf16 at twice a Zen 4's rate (family 25; both native bf16:
    898 against 404 GFLOP/s on two cores). Every Intel Xeon is family 6, so there AMX tells them apart: an Intel
    Xeon with AMX multiplied bf16 at 1,965 and 2,295 GFLOP/s on two cores (two runs), the one of the 2026-11-30
    entry at 946 (it recorded neither). Entries measured before machines recorded the family (2026-12-01) or AMX
    (2026-12-02) keep their key without it, e.g. `amd-epyc-bf16`."""
    name = machine["cpu"].lower()
    words = re.findall(r"[a-z]+", name.replace("(r)", " ").replace("(tm)", " "))
    vendor = next((w for w in words if w in ("amd", "intel", "arm", "apple", "ampere")), words[0] if words else "cpu")
    line = next((w for w in words if w in ("epyc", "ryzen", "xeon", "core", "threadripper", "neoverse")), "")
    precision = "bf16" if machine["bf16_native"] else "fp32"
    number = machine.get("cpu_family")
    generation = f"family{number}" if number is not None else ""
    amx = "amx" if machine.get("amx") else ""
    return "-".join(part for part in (vendor, line, generation, amx, precision) if part)


def load_average() -> float:
    """The 1-minute load average (other work on a shared machine slows every measurement)."""
    return os.getloadavg()[0]


def machine() -> dict:
    """The machine and software the figures were measured on."""
    return {
        "cpu": cpu_model(),
        "cpu_family": cpu_family(),
        "amx": amx_supported(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_native": bf16_supported("cpu"),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
