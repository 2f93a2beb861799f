"""Where a base model's weights come from (its `source`), which files of a checkpoint Lethe reads, and the one digest
that names those weights (`weights_sha256`), the same on the API that registers a base model and the worker that
loads it.

Sources:
- `bundled:<id>`: an LM shipped in a Python package (the worker converts it once to safetensors).
- `path:/abs/dir`: a local safetensors checkpoint directory.
- `hf:org/name@revision`: a model repository on the Hugging Face Hub (or a mirror), pinned to a 40-hex commit once
  registered (`@main` or a tag is resolved to the commit it points to then, so a job always loads what was checked).
"""

import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


class BaseModelSourceError(ValueError):
    """A source that cannot be used, with a message naming what is wrong (the API answers it as 422)."""


class HubUnreachable(BaseModelSourceError):
    """The hub did not answer (network, timeout, a 5xx): nothing is wrong with the source itself."""


SCHEMES = ("bundled", "path", "hf")
# A hub repository id: an owner and a name, each of letters, digits, '-', '_', '.' (huggingface_hub's rule).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# A git revision name: a branch, a tag or a commit (no spaces or control characters; '/' allowed as in `refs/pr/1`).
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")

# What a worker takes from a hub snapshot besides the weights: config, tokenizer (any of the usual layouts) and
# generation config. Never code (`*.py`) and never pickled weights.
HUB_METADATA_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "model.safetensors.index.json",
)
# The weights transformers loads: `model.safetensors`, or the shards the index names. Other safetensors files of a
# repository (`consolidated.safetensors`, adapters in subfolders) are not the transformers checkpoint and are not
# downloaded.
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Weights Lethe never loads: unpickling runs code.
PICKLED_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


@dataclass(frozen=True)
class HubSource:
    """`hf:repo_id@revision`."""

    repo_id: str
    revision: str

    @property
    def pinned(self) -> bool:
        return COMMIT.fullmatch(self.revision) is not None

    def __str__(self) -> str:
        return f"hf:{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class ParsedSource:
    scheme: Literal["bundled", "path", "hf"]
    location: str
    hub: HubSource | None = None


def parse_source(source: str) -> ParsedSource:
    """The source's scheme and location; BaseModelSourceError naming what is malformed."""
    scheme, colon, location = source.partition(":")
    if not colon or scheme not in SCHEMES:
        raise BaseModelSourceError(
            f"source {source!r}: unknown scheme {scheme!r}; expected hf:org/name@revision, path:/absolute/dir or "
            "bundled:<id>"
        )
    if scheme == "path":
        if not Path(location).is_absolute():
            raise BaseModelSourceError(f"source {source!r}: a path source is path:/absolute/dir")
        return ParsedSource("path", location)
    if scheme == "bundled":
        if not location:
            raise BaseModelSourceError(f"source {source!r}: a bundled source names its id, bundled:<id>")
        return ParsedSource("bundled", location)
    repo_id, at, revision = location.partition("@")
    if not _REPO_ID.fullmatch(repo_id):
        raise BaseModelSourceError(f"source {source!r}: {repo_id!r} is not a hub repository id (org/name)")
    revision = revision if at else "main"
    if not _REVISION.fullmatch(revision) or ".." in revision:
        raise BaseModelSourceError(f"source {source!r}: {revision!r} is not a revision (a branch, tag or commit)")
    return ParsedSource("hf", location, HubSource(repo_id, revision))


def weight_files(index: Mapping[str, object] | None) -> list[str]:
    """The safetensors files of a checkpoint, from its `model.safetensors.index.json` (None: no index, so the one
    `model.safetensors`)."""
    if index is None:
        return [SAFETENSORS_FILE]
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise BaseModelSourceError(f"{SAFETENSORS_INDEX} has no weight_map")
    files = sorted({str(name) for name in weight_map.values()})
    for name in files:
        if "/" in name or "\\" in name or not name.endswith(".safetensors"):
            raise BaseModelSourceError(f"{SAFETENSORS_INDEX} names {name!r}, not a safetensors file beside it")
    return files


def read_index(directory: Path) -> dict[str, object] | None:
    """A checkpoint directory's safetensors index, or None when it has none."""
    path = directory / SAFETENSORS_INDEX
    if not path.is_file():
        return None
    return read_json_object(path, SAFETENSORS_INDEX)


def directory_weight_files(directory: Path, what: str) -> list[str]:
    """The safetensors files of a local checkpoint directory; BaseModelSourceError naming `what` when it is not a
    directory or a weight file is missing (pickled weights are never a substitute)."""
    if not directory.is_dir():
        raise BaseModelSourceError(f"{what}: {directory} is not a directory this server can read")
    files = weight_files(read_index(directory))
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise BaseModelSourceError(
            f"{what}: no safetensors weights ({', '.join(missing)}) in {directory}; pickled weights (*.bin, *.pt) "
            "are never loaded"
        )
    return files


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; BaseModelSourceError naming `what` when it is unreadable or not an object."""
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaseModelSourceError(f"{what} is not readable JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BaseModelSourceError(f"{what} is not a JSON object")
    return value


def is_pickled_weight(filename: str) -> bool:
    return any(fnmatch.fnmatch(filename.rsplit("/", 1)[-1], pattern) for pattern in PICKLED_WEIGHT_PATTERNS)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(file_digests: Mapping[str, str]) -> str:
    """The digest of a checkpoint's weights from each safetensors file's sha256.

    It is the sha256 of the lines `<file sha256>  <file name>\\n`, sorted by file name (bytewise): exactly what
    `LC_ALL=C sha256sum <the weight files> | sha256sum` prints in the checkpoint directory. One file per line, so a
    sharded checkpoint is named by its shards' hashes; the hub publishes each LFS file's sha256, so the API computes
    it for a hub model without downloading the weights, and the worker recomputes it from the files it loads.
    """
    lines = "".join(f"{file_digests[name]}  {name}\n" for name in sorted(file_digests, key=lambda n: n.encode()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def directory_weights_sha256(directory: Path, files: Iterable[str]) -> str:
    """`weights_sha256` of the named weight files in `directory` (read in full)."""
    return weights_sha256({name: file_sha256(directory / name) for name in files})


def layers_in_config(config: object) -> int | None:
    """The decoder block count a checkpoint's config.json states, or None when it states none."""
    # transformers reads GPT-2's `n_layer` as num_hidden_layers, the attribute the worker uses.
    layers = config.get("num_hidden_layers", config.get("n_layer")) if isinstance(config, dict) else None
    return layers if type(layers) is int and layers > 0 else None


def check_no_custom_code(config: object, where: str) -> None:
    """BaseModelSourceError when the config needs code from the repository (`auto_map`): Lethe never runs
    `trust_remote_code`."""
    if isinstance(config, dict) and config.get("auto_map"):
        classes = ", ".join(sorted(config["auto_map"])) if isinstance(config["auto_map"], dict) else "auto_map"
        raise BaseModelSourceError(
            f"{where}: config.json maps {classes} to code in the repository (auto_map); Lethe never runs a "
            "model's own code (trust_remote_code), so only architectures transformers ships are accepted"
        )
