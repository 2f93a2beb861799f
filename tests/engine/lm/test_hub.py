"""Hub base models against a loopback hub: registration's resolution (pinning, digest, refusals), the worker's
download with allow-patterns, the offline cache path, a read-only cache and a digest that does not match."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from lethe.base_model_sources import BaseModelSourceError, HubSource, directory_weights_sha256, weights_sha256
from lethe.hub import HubOptions, resolve
from tests.hub_server import LoopbackHub, files_of
from worker.engine.lm.load import BaseLMCache, load_base_lm

REPO = "lethe-test/tiny"


@pytest.fixture
def hub(tiny_lm_dir: Path) -> Iterator[LoopbackHub]:
    """A loopback hub serving the tiny LM at `lethe-test/tiny` (main), with files a worker must never fetch."""
    server = LoopbackHub().start()
    never = {"pytorch_model.bin": b"pickled weights", "modeling_tiny.py": b"raise SystemExit", "README.md": b"# tiny"}
    server.add(REPO).commit({**files_of(tiny_lm_dir), **never})
    yield server
    server.stop()


def _options(server: LoopbackHub, cache: Path, offline: bool = False) -> HubOptions:
    return HubOptions(cache_dir=cache, endpoint=server.url, offline=offline, timeout_s=10)


def _state(directory: Path) -> list[tuple[str, int, int]]:
    """Every entry under `directory` with its size and modification time: what a load must leave as it was."""
    return sorted(
        (str(p.relative_to(directory)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in directory.rglob("*")
    )


def test_the_digest_is_sha256sum_of_the_sorted_weight_files(tiny_lm_dir: Path) -> None:
    file_hash = hashlib.sha256((tiny_lm_dir / "model.safetensors").read_bytes()).hexdigest()
    # What `LC_ALL=C sha256sum model.safetensors | sha256sum` prints.
    expected = hashlib.sha256(f"{file_hash}  model.safetensors\n".encode()).hexdigest()
    assert directory_weights_sha256(tiny_lm_dir, ["model.safetensors"]) == expected
    assert (
        weights_sha256({"b.safetensors": "2", "a.safetensors": "1"})
        == hashlib.sha256(b"1  a.safetensors\n2  b.safetensors\n").hexdigest()
    )


def test_registration_pins_the_commit_and_digests_without_downloading_weights(
    hub: LoopbackHub, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    resolved = resolve(HubSource(REPO, "main"), _options(hub, tmp_path / "cache"))
    commit = hub.repos[REPO].refs["main"]
    assert str(resolved.source) == f"hf:{REPO}@{commit}" and resolved.requested_revision == "main"
    assert resolved.weights_sha256 == directory_weights_sha256(tiny_lm_dir, ["model.safetensors"])
    assert resolved.n_layers == 2
    assert hub.downloads == ["config.json"]  # the weights' digest came from the hub's LFS metadata
    assert not (tmp_path / "cache").exists()  # registration keeps nothing


def test_a_worker_downloads_the_snapshot_once_and_only_the_allowed_files(
    hub: LoopbackHub, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    resolved = resolve(HubSource(REPO, "main"), _options(hub, tmp_path / "cache"))
    hub.downloads.clear()
    cache = BaseLMCache(tmp_path / "lm", _options(hub, tmp_path / "cache"))
    loaded = cache.get("tiny-hub", str(resolved.source), resolved.weights_sha256)
    assert loaded.weights_sha256 == resolved.weights_sha256
    assert "model.safetensors" in hub.downloads and "config.json" in hub.downloads
    assert not {"pytorch_model.bin", "modeling_tiny.py", "README.md"} & set(hub.downloads)
    reference = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    # In the dtypes the worker stores them in (bf16 for the blocks' linear weights under bf16 autocast).
    pairs = zip(loaded.lm.parameters(), reference.parameters(), strict=True)
    assert all((p.detach() == q.to(p.dtype)).all() for p, q in pairs)


def test_offline_loads_from_the_cache_and_names_a_missing_model(hub: LoopbackHub, tmp_path: Path) -> None:
    resolved = resolve(HubSource(REPO, "main"), _options(hub, tmp_path / "cache"))
    load_base_lm("tiny-hub", str(resolved.source), tmp_path / "lm", _options(hub, tmp_path / "cache"))
    hub.stop()
    offline = _options(hub, tmp_path / "cache", offline=True)
    again = load_base_lm("tiny-hub", str(resolved.source), tmp_path / "lm", offline, resolved.weights_sha256)
    assert again.weights_sha256 == resolved.weights_sha256
    with pytest.raises(BaseModelSourceError, match="not in the hub cache at .* offline mode is on"):
        load_base_lm("tiny-hub", str(resolved.source), tmp_path / "lm", _options(hub, tmp_path / "empty", True))
    # Offline registration resolves from the cache too, with the digest computed from the cached files.
    pinned = resolve(resolved.source, offline)
    assert (pinned.source, pinned.weights_sha256, pinned.n_layers) == (resolved.source, resolved.weights_sha256, 2)


def test_a_read_only_cache_is_read_and_never_written(hub: LoopbackHub, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    resolved = resolve(HubSource(REPO, "main"), _options(hub, cache_dir))
    load_base_lm("tiny-hub", str(resolved.source), tmp_path / "lm", _options(hub, cache_dir))
    hub.downloads.clear()
    for path in [cache_dir, *cache_dir.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _state(cache_dir)
    try:
        # Online, yet a cached snapshot is read without asking the hub; root ignores the mode bits, so the test also
        # compares every entry's size and mtime.
        loaded = load_base_lm("tiny-hub", str(resolved.source), tmp_path / "lm", _options(hub, cache_dir))
        assert loaded.weights_sha256 == resolved.weights_sha256
        assert hub.downloads == []
        assert _state(cache_dir) == before
    finally:
        for path in [cache_dir, *cache_dir.rglob("*")]:
            if not path.is_symlink():
                os.chmod(path, path.stat().st_mode | stat.S_IWUSR)


def test_weights_that_differ_from_the_registered_digest_are_refused(hub: LoopbackHub, tmp_path: Path) -> None:
    resolved = resolve(HubSource(REPO, "main"), _options(hub, tmp_path / "cache"))
    with pytest.raises(BaseModelSourceError, match=f"not {'0' * 64} as registered"):
        load_base_lm("tiny-hub", str(resolved.source), tmp_path / "lm", _options(hub, tmp_path / "cache"), "0" * 64)
    cache = BaseLMCache(tmp_path / "lm", _options(hub, tmp_path / "cache"))
    cache.get("tiny-hub", str(resolved.source), resolved.weights_sha256)
    with pytest.raises(BaseModelSourceError, match="as registered"):
        cache.get("tiny-hub", str(resolved.source), "1" * 64)


def test_weights_stored_in_git_itself_are_downloaded_and_hashed_at_registration(
    tiny_lm_dir: Path, tmp_path: Path
) -> None:
    server = LoopbackHub(lfs=False).start()  # no LFS metadata: the hub gives no sha256 to read
    try:
        server.add(REPO).commit(files_of(tiny_lm_dir))
        resolved = resolve(HubSource(REPO, "main"), _options(server, tmp_path / "cache"))
        assert resolved.weights_sha256 == directory_weights_sha256(tiny_lm_dir, ["model.safetensors"])
        assert server.downloads == ["config.json", "model.safetensors"]
    finally:
        server.stop()


def test_a_sharded_checkpoint_is_named_by_its_shards(tiny_lm_dir: Path, tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_lm_dir).save_pretrained(sharded, max_shard_size="20KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / name).write_bytes((tiny_lm_dir / name).read_bytes())
    shards = sorted(set(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(shards) > 1
    server = LoopbackHub().start()
    try:
        server.add("lethe-test/sharded").commit({**files_of(sharded), "consolidated.safetensors": b"not these"})
        options = _options(server, tmp_path / "cache")
        resolved = resolve(HubSource("lethe-test/sharded", "main"), options)
        assert resolved.weight_files == shards
        assert resolved.weights_sha256 == directory_weights_sha256(sharded, shards)
        loaded = load_base_lm("sharded", str(resolved.source), tmp_path / "lm", options, resolved.weights_sha256)
        assert loaded.lm.config.num_hidden_layers == 2
        assert "consolidated.safetensors" not in server.downloads
    finally:
        server.stop()


def test_pickled_weights_only_are_refused(tiny_lm_dir: Path, tmp_path: Path) -> None:
    server = LoopbackHub().start()
    try:
        small = {name: (tiny_lm_dir / name).read_bytes() for name in ("config.json", "tokenizer.json")}
        commit = server.add("lethe-test/pickled").commit({**small, "pytorch_model.bin": b"pickled weights"})
        options = _options(server, tmp_path / "cache")
        with pytest.raises(BaseModelSourceError, match="no safetensors weights .*pytorch_model.bin.*never loaded"):
            resolve(HubSource("lethe-test/pickled", "main"), options)
        with pytest.raises(BaseModelSourceError, match="no safetensors weights"):
            load_base_lm("pickled", f"hf:lethe-test/pickled@{commit}", tmp_path / "lm", options)
        assert "pytorch_model.bin" not in server.downloads
    finally:
        server.stop()


def test_custom_code_unknown_repos_and_revisions_are_refused(tiny_lm_dir: Path, tmp_path: Path) -> None:
    server = LoopbackHub().start()
    try:
        config = json.loads((tiny_lm_dir / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}
        custom = {**files_of(tiny_lm_dir), "config.json": json.dumps(config).encode()}
        commit = server.add("lethe-test/custom").commit(custom)
        options = _options(server, tmp_path / "cache")
        with pytest.raises(BaseModelSourceError, match="auto_map.*trust_remote_code"):
            resolve(HubSource("lethe-test/custom", "main"), options)
        with pytest.raises(BaseModelSourceError, match="auto_map"):
            load_base_lm("custom", f"hf:lethe-test/custom@{commit}", tmp_path / "lm", options)
        with pytest.raises(BaseModelSourceError, match="repository 'lethe-test/nope' not found on the hub"):
            resolve(HubSource("lethe-test/nope", "main"), options)
        with pytest.raises(BaseModelSourceError, match="revision 'v9' not found on the hub"):
            resolve(HubSource("lethe-test/custom", "v9"), options)
    finally:
        server.stop()
