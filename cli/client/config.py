"""Where a client command finds its Lethe: a profile, LETHE_URL / LETHE_API_KEY, or the defaults.

The profile file is TOML, `$LETHE_CONFIG` or `$XDG_CONFIG_HOME/lethe/config.toml` (`~/.config/lethe/config.toml`):

    [profiles.default]
    url = "https://lethe.example.com"
    api_key = "..."

Precedence, per setting: a profile named on purpose (`--profile NAME` or LETHE_PROFILE), then LETHE_URL /
LETHE_API_KEY, then the `default` profile, then http://127.0.0.1:8000 (the URL `lethe serve` listens on). A named
profile wins over the environment because naming it is the more explicit choice; the environment wins over the
file's default profile so that a one-off `LETHE_URL=... lethe jobs list` does what it says.
"""

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import CliError
from cli.exit_codes import ExitCode

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PROFILE = "default"
SETTINGS = ("url", "api_key", "timeout_s")

ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        envvar="LETHE_PROFILE",
        help="a \\[profiles.NAME] of the config file ($LETHE_CONFIG or ~/.config/lethe/config.toml); client commands "
        "only",
        show_default=False,
    ),
]


@dataclass(frozen=True)
class ClientConfig:
    url: str
    api_key: str | None
    timeout_s: float
    source: str  # where the settings came from, for error messages: "profile 'x' of FILE", "LETHE_URL", ...


def config_path(environ: Mapping[str, str]) -> Path:
    if environ.get("LETHE_CONFIG"):
        return Path(environ["LETHE_CONFIG"]).expanduser()
    base = Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "lethe" / "config.toml"


def _profiles(path: Path) -> dict[str, dict[str, object]]:
    """The file's profiles; none when it does not exist. A file that is there but wrong is a usage error."""
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"cannot read the config file {path}: {exc}", ExitCode.USAGE) from exc
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise CliError(f"{path}: `profiles` must be tables: [profiles.NAME]", ExitCode.USAGE)
    for name, profile in profiles.items():
        unknown = sorted(set(profile) - set(SETTINGS))
        if unknown:
            raise CliError(
                f"{path}: [profiles.{name}] has unknown settings {unknown}; known: {list(SETTINGS)}", ExitCode.USAGE
            )
        for key in ("url", "api_key"):
            if key in profile and not isinstance(profile[key], str):
                raise CliError(f"{path}: [profiles.{name}] {key} must be a string", ExitCode.USAGE)
        if "timeout_s" in profile and (
            isinstance(profile["timeout_s"], bool) or not isinstance(profile["timeout_s"], int | float)
        ):
            raise CliError(f"{path}: [profiles.{name}] timeout_s must be a number of seconds", ExitCode.USAGE)
    return profiles


def resolve(profile: str | None, environ: Mapping[str, str] | None = None) -> ClientConfig:
    """The URL, key and timeout a client command uses (module docstring: precedence)."""
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    profiles = _profiles(path)
    layers: list[tuple[str, Mapping[str, object]]] = []
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise CliError(f"no profile '{profile}' in {path} (profiles there: {known})", ExitCode.USAGE)
        layers.append((f"profile '{profile}' of {path}", profiles[profile]))
    from_env = {
        key: environ[variable]
        for key, variable in (("url", "LETHE_URL"), ("api_key", "LETHE_API_KEY"))
        if environ.get(variable)
    }
    layers.append(("LETHE_URL / LETHE_API_KEY", from_env))
    if profile is None and DEFAULT_PROFILE in profiles:
        layers.append((f"profile '{DEFAULT_PROFILE}' of {path}", profiles[DEFAULT_PROFILE]))

    def first(key: str) -> tuple[object | None, str]:
        for source, values in layers:
            if values.get(key) is not None:
                return values[key], source
        return None, "the default"

    url, url_source = first("url")
    api_key, _ = first("api_key")
    timeout_s, _ = first("timeout_s")
    return ClientConfig(
        url=str(url or DEFAULT_URL).rstrip("/"),
        api_key=str(api_key) if api_key else None,
        timeout_s=float(timeout_s) if isinstance(timeout_s, int | float) else 30.0,
        source=url_source,
    )
