"""The import directions of docs/architecture.md, read from every module's source (lazy imports included).

cli/ at the top may import anything; api/ and worker/ sit on models/, storage/ and the torch-free core lethe/;
the engine (worker/engine/) sees only the core's params, specs and row types; lethe/ imports nothing of ours.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"cli", "api", "worker", "models", "storage", "migrations", "lethe"}
# The core's modules the engine may use: what a method, metric or attack is and the rows it runs on.
ENGINE_CORE = {
    "lethe.rows",
    "lethe.methods",
    "lethe.attacks",
    "lethe.metrics",
    "lethe.forgetting",
    "lethe.registry",
    "lethe.specs",
    # What a base model's source is, which files of a checkpoint are its weights and their digest, and the hub
    # snapshot a hub source loads from: the loader's inputs.
    "lethe.base_model_sources",
    "lethe.hub",
}
# Packages no torch-free layer may load: the engine's ML stack.
ML_STACK = {"torch", "transformers", "peft", "accelerate", "sklearn", "safetensors", "numpy", "matplotlib"}

# (package as a path prefix, the packages of ours it may import besides itself)
ALLOWED = {
    "lethe": set(),
    "models": {"lethe", "migrations"},
    "migrations": {"lethe", "models"},
    "storage": {"lethe"},
    "api": {"lethe", "models", "storage"},
    "worker": {"lethe", "models", "storage"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (absolute names; the project uses no relative imports)."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules_of(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def violations(package: str, allowed: set[str]) -> list[str]:
    found = []
    for path in modules_of(package):
        in_engine = path.is_relative_to(REPO / "worker" / "engine")
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in OURS and top != package and top not in allowed:
                found.append(f"{path.relative_to(REPO)} imports {name}")
            in_core = any(name == core or name.startswith(core + ".") for core in ENGINE_CORE)
            if in_engine and top in OURS and top != "worker" and not in_core:
                found.append(f"{path.relative_to(REPO)} (engine) imports {name}")
            if in_engine and top == "worker" and not name.startswith("worker.engine"):
                found.append(f"{path.relative_to(REPO)} (engine) imports {name}")
            if package in {"lethe", "api", "models", "storage", "migrations"} and top in ML_STACK:
                found.append(f"{path.relative_to(REPO)} imports the ML stack ({name})")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package: str) -> None:
    assert modules_of(package), f"no modules found under {package}/"
    assert violations(package, ALLOWED[package]) == []


def test_the_checker_sees_a_wrong_direction(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from worker.engine.lm import load\n    import api.app\n")
    assert imported_modules(module) == {"worker.engine.lm.load", "api.app"}


def test_nothing_below_the_cli_imports_it() -> None:
    for package in ALLOWED:
        for path in modules_of(package):
            assert not any(name.split(".")[0] == "cli" for name in imported_modules(path)), path


def test_the_core_and_the_api_load_without_the_ml_stack() -> None:
    code = (
        "import sys, pkgutil, importlib, lethe, api.app\n"
        "for module in pkgutil.iter_modules(lethe.__path__):\n"
        "    importlib.import_module('lethe.' + module.name)\n"
        f"heavy = {sorted(ML_STACK)!r}\n"
        "loaded = [name for name in heavy if name in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
