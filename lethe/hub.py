"""Hub base models (`hf:org/name@revision`): resolving one when it is registered, and the local snapshot a worker
loads it from.

Registration (the API, or `lethe base-models add`) asks the hub for the revision's file listing with metadata
(`model_info(files_metadata=True)`: the commit the revision points to, each file's size and, for LFS files, its
sha256) and downloads only config.json (and the shard index, if any) into a temporary directory: that validates the
repository (safetensors weights, no custom code), pins the commit and gives `weights_sha256` without downloading the
weights. A worker downloads the snapshot on first use (`snapshot_download`, safetensors and the small files only)
and recomputes the digest from the files it loads; a mismatch fails the job (`base_model_unavailable`).

Offline (`HF_HUB_OFFLINE=1` or `LETHE_HF_OFFLINE=1`): both read the local cache only, and say so when the model is
not there. A worker always looks in the cache first, reading nothing but the snapshot's files, so a pre-populated
cache mounted read-only works online and offline alike.
"""

import importlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lethe.base_model_sources import (
    COMMIT,
    HUB_METADATA_PATTERNS,
    PICKLED_WEIGHT_PATTERNS,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    BaseModelSourceError,
    HubSource,
    HubUnreachable,
    check_no_custom_code,
    directory_weights_sha256,
    file_sha256,
    is_pickled_weight,
    layers_in_config,
    read_index,
    read_json_object,
    weight_files,
    weights_sha256,
)

if TYPE_CHECKING:
    from lethe.settings import Settings

# The HTTP client huggingface_hub raises transport errors from: httpx2 since huggingface_hub 2, httpx in 1.x (the GPU
# image's version may differ from the dev machine's).
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = tuple(
    importlib.import_module(name).HTTPError for name in ("httpx2", "httpx") if importlib.util.find_spec(name)
)
_UNREACHABLE: tuple[type[Exception], ...] = (*_TRANSPORT_ERRORS, OfflineModeIsEnabled)


@dataclass(frozen=True)
class HubOptions:
    """How to reach the hub and where its cache is."""

    # None: huggingface_hub's own cache (HF_HUB_CACHE, or HF_HOME/hub, or ~/.cache/huggingface/hub).
    cache_dir: Path | None
    # None: huggingface_hub's endpoint (HF_ENDPOINT when it was set before huggingface_hub was imported).
    endpoint: str | None
    offline: bool
    # Seconds one request to the hub may take (metadata; a download's chunks have huggingface_hub's own timeout).
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: "Settings") -> "HubOptions":
        return cls(
            cache_dir=settings.hf_cache,
            endpoint=settings.hf_endpoint or None,
            # huggingface_hub read HF_HUB_OFFLINE when it was imported; LETHE_HF_OFFLINE is the same switch.
            offline=settings.hf_offline or constants.HF_HUB_OFFLINE,
            timeout_s=settings.hf_timeout_s,
        )

    @classmethod
    def default(cls) -> "HubOptions":
        """huggingface_hub's own cache and endpoint, offline when HF_HUB_OFFLINE says so."""
        return cls(cache_dir=None, endpoint=None, offline=constants.HF_HUB_OFFLINE)

    @property
    def cache_description(self) -> str:
        return str(self.cache_dir or constants.HF_HUB_CACHE)


@dataclass(frozen=True)
class ResolvedHubModel:
    """A hub source pinned to its commit, with what registration records of it."""

    source: HubSource
    requested_revision: str
    weight_files: list[str]
    weights_sha256: str
    n_layers: int | None


def resolve(hub: HubSource, options: HubOptions) -> ResolvedHubModel:
    """Pin `hub` to the commit its revision points to and describe its weights; BaseModelSourceError naming what is
    wrong with the repository (HubUnreachable when the hub did not answer). Offline: from the local cache."""
    if options.offline:
        return _resolve_from_cache(hub, options)
    info = _model_info(hub, options)
    commit = info.sha
    if commit is None or not COMMIT.fullmatch(commit):
        raise HubUnreachable(f"source {hub}: the hub's answer names no commit for revision {hub.revision!r}")
    pinned = HubSource(hub.repo_id, commit)
    siblings = {s.rfilename: s for s in info.siblings or []}
    if "config.json" not in siblings:
        raise BaseModelSourceError(f"source {hub}: the repository has no config.json at commit {commit}")
    with tempfile.TemporaryDirectory(prefix="lethe-hub-") as scratch:
        # A scratch cache: registration keeps nothing on disk (the API may run on a read-only filesystem).
        def fetch(filename: str) -> Path:
            return _fetch_file(pinned, filename, Path(scratch), options)

        config = _json_file(fetch("config.json"), hub, "config.json")
        check_no_custom_code(config, f"source {hub}")
        if SAFETENSORS_INDEX in siblings:
            files = weight_files(_json_file(fetch(SAFETENSORS_INDEX), hub, SAFETENSORS_INDEX))
        elif SAFETENSORS_FILE in siblings:
            files = [SAFETENSORS_FILE]
        else:
            raise BaseModelSourceError(_no_safetensors(hub, commit, siblings))
        missing = [name for name in files if name not in siblings]
        if missing:
            raise BaseModelSourceError(f"source {hub}: {SAFETENSORS_INDEX} names {', '.join(missing)}, not in the repo")
        digests = {}
        for name in files:
            lfs = siblings[name].lfs
            # LFS files (every safetensors file under the hub's default .gitattributes) carry their sha256; a small
            # file stored in git itself carries only its git blob id, so it is downloaded and hashed.
            digests[name] = lfs.sha256 if lfs is not None else file_sha256(fetch(name))
    return ResolvedHubModel(pinned, hub.revision, files, weights_sha256(digests), layers_in_config(config))


def local_snapshot(hub: HubSource, options: HubOptions) -> tuple[Path, list[str]]:
    """The snapshot directory of a pinned hub source and its weight files: from the cache when it is there
    (nothing is written then), otherwise downloaded into the cache unless offline."""
    if not hub.pinned:
        raise BaseModelSourceError(f"source {hub}: a worker loads hub models pinned to a 40-hex commit")
    try:
        return _snapshot(hub, options, local_only=True)
    except _NotCached as miss:
        if options.offline:
            raise BaseModelSourceError(
                f"source {hub}: not in the hub cache at {options.cache_description} and offline mode is on "
                f"(HF_HUB_OFFLINE / LETHE_HF_OFFLINE): {miss}"
            ) from None
    return _snapshot(hub, options, local_only=False)


class _NotCached(Exception):
    """The cache lacks (part of) a snapshot."""


def _snapshot(hub: HubSource, options: HubOptions, local_only: bool) -> tuple[Path, list[str]]:
    # Two passes: the small files first, whose shard index says which weight files to take in the second.
    folder = _download(hub, options, list(HUB_METADATA_PATTERNS), local_only)
    if not (folder / "config.json").is_file():
        if local_only:
            raise _NotCached("config.json is missing")
        raise BaseModelSourceError(f"source {hub}: the repository has no config.json")
    check_no_custom_code(_json_file(folder / "config.json", hub, "config.json"), f"source {hub}")
    files = weight_files(read_index(folder))
    folder = _download(hub, options, [*HUB_METADATA_PATTERNS, *files], local_only)
    missing = [name for name in files if not (folder / name).is_file()]
    if missing and local_only:
        raise _NotCached(f"{', '.join(missing)} missing")
    if missing:
        raise BaseModelSourceError(
            f"source {hub}: no safetensors weights ({', '.join(missing)}) in the repository; pickled weights "
            f"({', '.join(PICKLED_WEIGHT_PATTERNS)}) are never loaded"
        )
    return folder, files


def _download(hub: HubSource, options: HubOptions, patterns: list[str], local_only: bool) -> Path:
    try:
        return Path(
            snapshot_download(
                hub.repo_id,
                revision=hub.revision,
                cache_dir=options.cache_dir,
                endpoint=options.endpoint,
                allow_patterns=patterns,
                local_files_only=local_only,
                etag_timeout=options.timeout_s,
            )
        )
    except LocalEntryNotFoundError as exc:
        if local_only:
            raise _NotCached(str(exc).splitlines()[0]) from None
        raise HubUnreachable(f"source {hub}: the hub at {_endpoint(options)} could not be reached: {exc}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError) as exc:
        raise _hub_error(hub, exc, options) from None
    except _UNREACHABLE as exc:
        raise HubUnreachable(f"source {hub}: the hub at {_endpoint(options)} could not be reached: {exc}") from None


def _model_info(hub: HubSource, options: HubOptions) -> Any:
    try:
        return HfApi(endpoint=options.endpoint).model_info(
            hub.repo_id, revision=hub.revision, files_metadata=True, timeout=options.timeout_s
        )
    except HfHubHTTPError as exc:
        raise _hub_error(hub, exc, options) from None
    except _UNREACHABLE + (OSError,) as exc:
        raise HubUnreachable(f"source {hub}: the hub at {_endpoint(options)} could not be reached: {exc}") from None


def _fetch_file(hub: HubSource, filename: str, cache_dir: Path, options: HubOptions) -> Path:
    try:
        return Path(
            hf_hub_download(
                hub.repo_id,
                filename,
                revision=hub.revision,
                cache_dir=cache_dir,
                endpoint=options.endpoint,
                etag_timeout=options.timeout_s,
            )
        )
    except (HfHubHTTPError, EntryNotFoundError) as exc:
        if isinstance(exc, HfHubHTTPError):
            raise _hub_error(hub, exc, options) from None
        raise BaseModelSourceError(f"source {hub}: {filename} could not be downloaded: {exc}") from None
    except _UNREACHABLE + (OSError,) as exc:
        raise HubUnreachable(
            f"source {hub}: {filename} could not be downloaded from {_endpoint(options)}: {exc}"
        ) from None


def _hub_error(hub: HubSource, exc: HfHubHTTPError, options: HubOptions) -> BaseModelSourceError:
    """The error for the hub's refusal, with the hub's own answer."""
    answer = (exc.server_message or str(exc)).strip().splitlines()[0]
    if isinstance(exc, RevisionNotFoundError):
        return BaseModelSourceError(f"source {hub}: revision {hub.revision!r} not found on the hub ({answer})")
    if isinstance(exc, GatedRepoError):
        return BaseModelSourceError(f"source {hub}: the repository is gated; set HF_TOKEN to a token with access")
    if isinstance(exc, RepositoryNotFoundError):
        return BaseModelSourceError(
            f"source {hub}: repository {hub.repo_id!r} not found on the hub at {_endpoint(options)} (or private "
            f"without a token in HF_TOKEN) ({answer})"
        )
    status = exc.response.status_code if exc.response is not None else None
    if status is None or status >= 500 or status == 429:
        return HubUnreachable(f"source {hub}: the hub answered {status}: {answer}")
    return BaseModelSourceError(f"source {hub}: the hub answered {status}: {answer}")


def _resolve_from_cache(hub: HubSource, options: HubOptions) -> ResolvedHubModel:
    """Offline registration: the revision (a commit, or a branch or tag the cache has a ref for) from the cache,
    and the digest computed from the cached weight files."""
    try:
        folder, files = _snapshot(hub, options, local_only=True)
    except _NotCached as miss:
        raise BaseModelSourceError(
            f"source {hub}: not in the hub cache at {options.cache_description} and offline mode is on "
            f"(HF_HUB_OFFLINE / LETHE_HF_OFFLINE): {miss}"
        ) from None
    commit = folder.name  # snapshots/<commit>
    config = _json_file(folder / "config.json", hub, "config.json")
    return ResolvedHubModel(
        HubSource(hub.repo_id, commit),
        hub.revision,
        files,
        directory_weights_sha256(folder, files),
        layers_in_config(config),
    )


def _no_safetensors(hub: HubSource, commit: str, siblings: dict[str, Any]) -> str:
    pickled = sorted(name for name in siblings if is_pickled_weight(name))
    found = f"; it has {', '.join(pickled)}, and pickled weights are never loaded" if pickled else ""
    return (
        f"source {hub}: no safetensors weights at commit {commit} (neither {SAFETENSORS_FILE} nor "
        f"{SAFETENSORS_INDEX}){found}"
    )


def _json_file(path: Path, hub: HubSource, name: str) -> dict[str, Any]:
    return read_json_object(path, f"source {hub}: {name}")


def _endpoint(options: HubOptions) -> str:
    return options.endpoint or constants.ENDPOINT
