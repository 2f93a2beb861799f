"""The worker's allocator (worker/allocator.py): which environment it re-executes with for each LETHE_ALLOCATOR,
the errors that name a bad setting, and, in real processes, that a re-executed process runs with jemalloc mapped
in and that `lethe worker` refuses a setting it cannot honour."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli.embedded_worker import EX_CONFIG
from worker import allocator
from worker.allocator import AllocatorError, preload_environment

REPO = Path(__file__).resolve().parents[2]
LIBRARY = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
has_jemalloc = pytest.mark.skipif(allocator.find_jemalloc() is None, reason="libjemalloc2 is not installed here")


@pytest.mark.parametrize("value", ["", "auto", "AUTO", " jemalloc "])
def test_auto_and_jemalloc_preload_the_library_before_what_was_preloaded(value: str) -> None:
    environment = preload_environment({"LETHE_ALLOCATOR": value, "LD_PRELOAD": "libfoo.so", "X": "1"}, LIBRARY)
    assert environment == {"LETHE_ALLOCATOR": value, "LD_PRELOAD": f"{LIBRARY} libfoo.so", "X": "1"}


def test_system_never_preloads() -> None:
    assert preload_environment({"LETHE_ALLOCATOR": "system"}, LIBRARY) is None


def test_a_process_that_already_preloads_jemalloc_is_left_as_it_is() -> None:
    assert preload_environment({"LD_PRELOAD": "/opt/lib/libjemalloc.so.2"}, LIBRARY) is None


def test_auto_without_the_library_runs_as_it_is() -> None:
    assert preload_environment({}, None) is None


def test_jemalloc_required_without_the_library_is_an_error_naming_the_package() -> None:
    with pytest.raises(
        AllocatorError, match="LETHE_ALLOCATOR=jemalloc but libjemalloc.so.2 is not installed.*libjemalloc2"
    ):
        preload_environment({"LETHE_ALLOCATOR": "jemalloc"}, None)


def test_an_unknown_allocator_names_the_allowed_values() -> None:
    with pytest.raises(AllocatorError, match="LETHE_ALLOCATOR='tcmalloc' is not one of auto, jemalloc, system"):
        preload_environment({"LETHE_ALLOCATOR": "tcmalloc"}, LIBRARY)


def test_find_jemalloc_looks_in_the_given_directories(tmp_path: Path) -> None:
    assert allocator.find_jemalloc([str(tmp_path)]) is None
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    assert allocator.find_jemalloc(["/nonexistent", str(tmp_path)]) == tmp_path / "libjemalloc.so.2"


SCRIPT = textwrap.dedent(
    """
    import sys
    from worker.allocator import allocator_label, exec_with_allocator
    exec_with_allocator([sys.executable, __file__])
    print(allocator_label())
    """
)


def _run_script(tmp_path: Path, setting: str, preload: str | None = None) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "which_allocator.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LETHE_ALLOCATOR": setting}
    env.pop("LD_PRELOAD", None)
    if preload is not None:
        env["LD_PRELOAD"] = preload
    return subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@has_jemalloc
def test_a_process_re_executes_itself_once_with_jemalloc_mapped_in(tmp_path: Path) -> None:
    finished = _run_script(tmp_path, "auto")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "jemalloc"


def test_a_required_jemalloc_that_did_not_load_is_an_error(tmp_path: Path) -> None:
    # The dynamic loader only warns about a preloaded library it cannot find, and the process runs on glibc's malloc.
    finished = _run_script(tmp_path, "jemalloc", preload=str(tmp_path / "libjemalloc.so.2"))
    assert finished.returncode != 0
    assert "LETHE_ALLOCATOR=jemalloc but LD_PRELOAD names a jemalloc that did not load" in finished.stderr


def test_with_system_the_process_keeps_the_c_librarys_malloc(tmp_path: Path) -> None:
    finished = _run_script(tmp_path, "system")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "the C library's malloc"


def test_lethe_worker_refuses_an_allocator_setting_it_cannot_honour(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LETHE_ALLOCATOR": "tcmalloc",
        "LETHE_DATA_DIR": str(tmp_path / "lethe-data"),
    }
    finished = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == EX_CONFIG, finished.stderr
    assert "lethe worker: LETHE_ALLOCATOR='tcmalloc' is not one of auto, jemalloc, system" in finished.stderr
