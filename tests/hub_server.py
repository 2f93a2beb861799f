"""A loopback Hugging Face Hub: the routes huggingface_hub's `model_info`, `list_repo_tree`, `hf_hub_download` and
`snapshot_download` call, answering from repositories held in memory, so hub sources are tested without internet.

Routes (as huggingface_hub builds them, `huggingface_hub/hf_api.py` and `file_download.py`):
- `GET /api/models/{repo_id}/revision/{revision}`: the repository at a revision, `sha` the commit and `siblings` the
  files (with `?blobs=true`, each file's size, git blob id and, for LFS files, `lfs.sha256`).
- `GET /api/models/{repo_id}/tree/{revision}`: the files as tree entries (`type`, `path`, `size`, `oid`, `lfs.oid`).
- `HEAD`/`GET /{repo_id}/resolve/{revision}/{filename}`: a file, with `X-Repo-Commit`, `ETag` (the LFS sha256, or the
  git blob id) and `Content-Length`.
An unknown repository or revision gets 404 with `X-Error-Code: RepoNotFound` / `RevisionNotFound`, as the hub does.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Files the hub stores with Git LFS under its default .gitattributes (safetensors and pickles among them).
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt", ".model")


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class HubRepo:
    """One repository: its commits (each a file name -> content map) and its branches and tags."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def commit(self, files: dict[str, bytes], ref: str = "main") -> str:
        """Add a commit with `files`, point `ref` at it; its 40-hex id."""
        digest = hashlib.sha1(json.dumps(sorted((n, hashlib.sha256(c).hexdigest()) for n, c in files.items())).encode())
        commit = digest.hexdigest()
        self.commits[commit] = dict(files)
        self.refs[ref] = commit
        return commit


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file of a checkpoint directory (no subfolders), by name."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


class LoopbackHub:
    """The server; `repos` may be changed while it runs. Records the file downloads (GET resolve) it served.
    `lfs=False` serves every file as stored in git itself (no LFS metadata, the git blob id as ETag)."""

    def __init__(self, lfs: bool = True) -> None:
        self.lfs_suffixes = _LFS_SUFFIXES if lfs else ()
        self.repos: dict[str, HubRepo] = {}
        self.downloads: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hub._answer(self, head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                hub._answer(self, head=True)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LoopbackHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo_id: str) -> HubRepo:
        return self.repos.setdefault(repo_id, HubRepo())

    def _answer(self, request: BaseHTTPRequestHandler, head: bool) -> None:
        path = urlsplit(request.path).path
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo_id, kind, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            files, commit = self._lookup(request, repo_id, revision)
            if files is None or commit is None:
                return
            if kind == "revision":
                siblings = _siblings(files, self.lfs_suffixes)
                self._json(request, {"id": repo_id, "modelId": repo_id, "sha": commit, "siblings": siblings})
            else:
                self._json(request, _tree(files, self.lfs_suffixes))
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, filename = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
            files, commit = self._lookup(request, repo_id, revision)
            if files is None or commit is None:
                return
            if filename not in files:
                self._error(request, 404, "EntryNotFound", f"{filename} does not exist at {revision}")
                return
            content = files[filename]
            lfs = self.lfs_suffixes and filename.endswith(self.lfs_suffixes)
            etag = hashlib.sha256(content).hexdigest() if lfs else git_blob_id(content)
            request.send_response(200)
            request.send_header("X-Repo-Commit", commit)
            request.send_header("ETag", f'"{etag}"')
            request.send_header("Content-Length", str(len(content)))
            request.send_header("Content-Type", "application/octet-stream")
            request.end_headers()
            if not head:
                self.downloads.append(filename)
                request.wfile.write(content)
            return
        self._error(request, 404, "", f"no route {path}")

    def _lookup(
        self, request: BaseHTTPRequestHandler, repo_id: str, revision: str
    ) -> tuple[dict[str, bytes] | None, str | None]:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(request, 404, "RepoNotFound", "Repository not found")
            return None, None
        commit = repo.refs.get(revision, revision)
        if commit not in repo.commits:
            self._error(request, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None, None
        return repo.commits[commit], commit

    def _json(self, request: BaseHTTPRequestHandler, value: object) -> None:
        body = json.dumps(value).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)

    def _error(self, request: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        request.send_response(status)
        if code:
            request.send_header("X-Error-Code", code)
        request.send_header("X-Error-Message", message)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)


def _lfs(name: str, content: bytes, suffixes: tuple[str, ...]) -> dict[str, object] | None:
    if not suffixes or not name.endswith(suffixes):
        return None
    return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}


def _siblings(files: dict[str, bytes], suffixes: tuple[str, ...]) -> list[dict[str, object]]:
    siblings: list[dict[str, object]] = []
    for name, content in sorted(files.items()):
        sibling: dict[str, object] = {"rfilename": name, "size": len(content), "blobId": git_blob_id(content)}
        if (lfs := _lfs(name, content, suffixes)) is not None:
            sibling["lfs"] = lfs
        siblings.append(sibling)
    return siblings


def _tree(files: dict[str, bytes], suffixes: tuple[str, ...]) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = []
    for name, content in sorted(files.items()):
        entry: dict[str, object] = {"type": "file", "path": name, "size": len(content), "oid": git_blob_id(content)}
        if (lfs := _lfs(name, content, suffixes)) is not None:
            entry["lfs"] = {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
        entries.append(entry)
    return entries
