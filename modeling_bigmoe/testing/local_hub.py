"""An offline, in-memory emulator of the Hugging Face Hub HTTP API, for testing push/pull code.

The Hub cannot be reached from CI machines, and no self-hosted Hub server installs cleanly. This module
runs a small Hub-compatible server (standard library only, in the spirit of ``moto`` for S3) on
``127.0.0.1`` and a free port, so that the *unmodified* ``huggingface_hub`` and ``transformers`` clients
can push and pull repositories in tests. It never listens on any other interface, keeps all state in
memory, and stops cleanly (its serving and connection threads are joined on :meth:`LocalHub.stop`).

Users of ``modeling_bigmoe`` can test their own push/pull code offline with it::

    from huggingface_hub import create_repo, hf_hub_download, upload_file
    from modeling_bigmoe.testing.local_hub import LocalHub, use_local_hub

    with LocalHub() as hub, use_local_hub(hub.url):
        create_repo("demo")  # "user/demo"
        upload_file(path_or_fileobj=b"hi", path_in_repo="a.txt", repo_id="user/demo")
        path = hf_hub_download("user/demo", "a.txt")

Client settings: the Xet protocol is not emulated, so uploads must run with ``HF_HUB_DISABLE_XET=1``
(:func:`use_local_hub` sets it). Any token string is accepted (set ``HF_TOKEN`` to anything; repositories
created without a namespace go to the user ``LocalHub(user=...)``, default ``"user"``).
:func:`use_local_hub` patches ``huggingface_hub.constants`` and the pre-built ``HfApi`` instances of
``huggingface_hub`` and ``transformers``; ``HfApi`` objects you built yourself before entering it keep
their old endpoint (pass ``endpoint=hub.url`` to them).

Implemented endpoints (``{t}`` is ``models``, ``datasets`` or ``spaces``; a revision is a branch, a tag
or a full commit sha):

- ``GET /api/whoami-v2``; ``POST /api/validate-yaml`` (model-card front-matter check)
- ``POST /api/repos/create`` (409 when it exists), ``DELETE /api/repos/delete``
- ``GET /api/{t}/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes and LFS info),
  ``GET /api/{t}/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``),
  ``GET /api/{t}/{repo}/commits/{rev}``, ``GET /api/{t}/{repo}/refs``,
  ``POST /api/{t}/{repo}/paths-info/{rev}``
- ``POST /api/{t}/{repo}/preupload/{rev}`` (LFS or regular: ``.gitattributes``, size >= 10 MiB, binary)
- ``POST /{repo}.git/info/lfs/objects/batch`` (basic transfer), ``PUT`` of the bytes to the returned
  href (size and sha256 verified), ``POST`` verify action
- ``POST /api/{t}/{repo}/commit/{rev}`` (NDJSON: header, base64 files, LFS pointers, deletions;
  ``parentCommit`` checked; ``?create_pr=1`` opens ``refs/pr/N``)
- ``POST``/``DELETE /api/{t}/{repo}/branch/{name}``, ``POST /api/{t}/{repo}/tag/{rev}``,
  ``DELETE /api/{t}/{repo}/tag/{name}``
- ``HEAD``/``GET /[datasets/|spaces/]{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``/``X-Linked-Size`` for LFS files, ``Range`` support, and ``X-Error-Code``
  (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so the client raises its own error classes.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import itertools
import json
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LFS_THRESHOLD", "LOOPBACK_HOST", "LocalHub", "git_blob_sha1", "lfs_pointer", "use_local_hub"]

LOOPBACK_HOST = "127.0.0.1"
LFS_THRESHOLD = 10 * 1024 * 1024  # files at least this large always go through LFS (as on the Hub)
_DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.npy", "*.npz",
                    "*.msgpack", "*.pkl", "*.gz", "*.zip", "*.tar", "*.parquet", "*.arrow",
                    "*.tflite")
).encode()
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def git_blob_sha1(data: bytes) -> str:
    """Return the git blob id of ``data``, ``sha1(b"blob <len>\\0" + data)``, as git and the Hub do."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Return the git-LFS pointer file that stands in the git tree for an LFS object of ``size`` bytes."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An API error answered as ``status`` with ``X-Error-Code: code`` and ``X-Error-Message: message``."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass(frozen=True)
class _Entry:
    size: int
    git_oid: str
    sha256: str
    lfs: bool

    @property
    def remote_oid(self) -> str:
        """The oid the preupload endpoint reports: sha256 for LFS files, git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class _Commit:
    oid: str
    tree: dict[str, _Entry]
    title: str
    message: str
    parent: str | None
    date: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)


class _State:
    """All repositories, blobs and LFS objects of one server, guarded by one lock."""

    def __init__(self, user: str):
        self.user = user
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git blob sha1 -> bytes (regular files)
        self.lfs: dict[str, bytes] = {}  # sha256 -> bytes (LFS objects)
        self.lfs_pending: dict[str, int] = {}  # sha256 -> size announced in a batch request
        self.requests: list[tuple[str, str]] = []
        self._counter = itertools.count(1)

    def get_repo(self, rtype: str, repo_id: str) -> _Repo:
        repo = self.repos.get((rtype, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository not found: {rtype} '{repo_id}'")
        return repo

    def resolve(self, repo: _Repo, rev: str) -> str:
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]
        if rev in repo.commits:
            return rev
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def new_commit(self, repo: _Repo, tree: dict[str, _Entry], title: str, message: str,
                   parent: str | None) -> str:
        digest = hashlib.sha1()
        digest.update(f"{next(self._counter)}\0{repo.repo_id}\0{parent}\0{title}\0{message}\0".encode())
        for path in sorted(tree):
            digest.update(f"{path}\0{tree[path].git_oid}\0".encode())
        oid = digest.hexdigest()
        repo.commits[oid] = _Commit(oid, dict(tree), title, message, parent, _now())
        return oid

    def add_blob(self, data: bytes) -> _Entry:
        oid = git_blob_sha1(data)
        self.blobs[oid] = data
        return _Entry(len(data), oid, hashlib.sha256(data).hexdigest(), False)

    def content(self, entry: _Entry) -> bytes:
        return self.lfs[entry.sha256] if entry.lfs else self.blobs[entry.git_oid]


def _lfs_patterns(gitattributes: bytes) -> list[str]:
    patterns = []
    for line in gitattributes.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0].lstrip("/"))
    return patterns


def _matches_lfs(path: str, patterns: list[str]) -> bool:
    base = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else base, p) for p in patterns)


def _check_front_matter(content: str) -> str | None:
    """Return an error message when the YAML front matter of a card is malformed, else None.

    A stdlib-only structural check (the server does not parse YAML): the block must be closed by ``---``
    and be a mapping, so every unindented line must be a ``key:`` entry, a ``- item``, a flow mapping
    (``{}``, which the client writes for empty metadata) or a comment.
    """
    lines = content.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for number, line in enumerate(lines[1:], start=2):
        if line.strip() == "---":
            return None
        if "\t" in line[: len(line) - len(line.lstrip())]:
            return f"Invalid YAML metadata: line {number} is indented with a tab: {line!r}"
        if line and not line[0].isspace() and not line.startswith(("#", "- ", "{")) and line != "-":
            if not re.match(r"^[^\s:#][^:]*:(\s|$)", line):
                return f"Invalid YAML metadata: line {number} is not a 'key: value' entry: {line!r}"
    return "Invalid YAML metadata: the front matter opened by '---' on line 1 is never closed by '---'"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 120  # an idle keep-alive connection is dropped after this many seconds
    server: "_Server"

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (signature of the base class)
        if self.server.log_requests:
            super().log_message(format, *args)

    @property
    def state(self) -> _State:
        return self.server.state

    @property
    def base(self) -> str:
        return "http://%s:%d" % self.server.server_address[:2]

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self, routes) -> None:
        url = urlsplit(self.path)
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.state.requests.append((self.command, unquote(url.path)))
        try:
            body = self._read_body() if self.command in ("POST", "PUT", "DELETE") else b""
            with self.state.lock:
                routes(segs, query, body)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message}, err.status, headers)
        except (ValueError, KeyError, TypeError) as err:  # malformed request body
            message = f"Bad request to {self.command} {url.path}: {type(err).__name__}: {err}"
            self._json({"error": message}, 400, {"X-Error-Message": message})

    def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch(self._route_get)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(self._route_get)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._route_post)

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch(self._route_put)

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch(self._route_delete)

    # ------------------------------------------------------------------ parsing helpers
    def _split_repo(self, rtype: str, segs: list[str]) -> tuple[str, list[str]]:
        """Split ``[ns, name, op, ...]`` or ``[name, op, ...]`` into the repo id and the rest."""
        if len(segs) >= 2 and (rtype, f"{segs[0]}/{segs[1]}") in self.state.repos:
            return f"{segs[0]}/{segs[1]}", segs[2:]
        if segs and (rtype, segs[0]) in self.state.repos:
            return segs[0], segs[1:]
        if len(segs) >= 2:
            return f"{segs[0]}/{segs[1]}", segs[2:]
        return (segs[0] if segs else ""), []

    def _api_repo(self, segs: list[str]) -> tuple[str, str, list[str]] | None:
        if len(segs) >= 3 and segs[0] == "api" and segs[1] in _REPO_TYPES:
            rtype = _REPO_TYPES[segs[1]]
            repo_id, rest = self._split_repo(rtype, segs[2:])
            return rtype, repo_id, rest
        return None

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.base}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _entry_json(self, repo: _Repo, oid: str, path: str, entry: _Entry, expand: bool) -> dict:
        out = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            out["lfs"] = {"oid": entry.sha256, "size": entry.size,
                          "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
        if expand:
            last = self._last_commit(repo, oid, path)
            out["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return out

    def _last_commit(self, repo: _Repo, oid: str, path: str) -> _Commit:
        commit = repo.commits[oid]
        entry = commit.tree.get(path)
        while commit.parent is not None and repo.commits[commit.parent].tree.get(path) == entry:
            commit = repo.commits[commit.parent]
        return commit

    def _folder_json(self, path: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}

    def _info_json(self, repo: _Repo, oid: str, blobs: bool) -> dict:
        commit = repo.commits[oid]
        siblings = []
        for path in sorted(commit.tree):
            entry = commit.tree[path]
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size,
                                      "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
            siblings.append(sibling)
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        return {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "modelId": repo.repo_id, "author": author, "sha": oid, "private": repo.private,
                "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                "lastModified": commit.date, "createdAt": repo.created_at, "siblings": siblings}

    # ------------------------------------------------------------------ GET / HEAD
    def _route_get(self, segs: list[str], query: dict, body: bytes) -> None:
        if segs in (["api", "whoami-v2"], ["api", "whoami"]):
            if not self.headers.get("Authorization"):
                raise HubError(401, None, "Invalid credentials in Authorization header")
            user = self.state.user
            token = {"displayName": "local", "role": "write"}
            return self._json({"type": "user", "id": hashlib.md5(user.encode()).hexdigest()[:24],
                               "name": user, "fullname": user, "email": None, "emailVerified": False,
                               "isPro": False, "orgs": [],
                               "auth": {"type": "access_token", "accessToken": token}})
        parsed = self._api_repo(segs)
        if parsed is not None:
            rtype, repo_id, rest = parsed
            repo = self.state.get_repo(rtype, repo_id)
            op = rest[0] if rest else "revision"
            rev = rest[1] if len(rest) > 1 else "main"
            if op == "refs":
                return self._json(self._refs_json(repo, query.get("include_prs") in ("1", "true", "True")))
            oid = self.state.resolve(repo, rev)
            if op == "revision":
                return self._json(self._info_json(repo, oid, query.get("blobs") in ("1", "true", "True")))
            if op == "tree":
                return self._json(self._tree_json(repo, oid, rev, "/".join(rest[2:]).strip("/"), query))
            if op == "commits":
                out, cur = [], oid
                while cur is not None:
                    commit = repo.commits[cur]
                    out.append({"id": cur, "title": commit.title, "message": commit.message,
                                "date": commit.date, "authors": [{"user": self.state.user, "avatar": ""}]})
                    cur = commit.parent
                return self._json(out)
            raise HubError(404, None, f"Unsupported endpoint: GET /{'/'.join(segs)}")
        return self._resolve(segs)

    def _refs_json(self, repo: _Repo, include_prs: bool) -> dict:
        def ref(name: str, kind: str, target: str) -> dict:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": target}

        branches = {b: c for b, c in repo.branches.items() if not b.startswith("refs/")}
        out = {"branches": [ref(b, "heads", c) for b, c in branches.items()],
               "tags": [ref(t, "tags", c) for t, c in repo.tags.items()], "converts": []}
        if include_prs:
            out["pullRequests"] = [{"name": b.rsplit("/", 1)[1], "ref": b, "targetCommit": c}
                                   for b, c in repo.branches.items() if b.startswith("refs/pr/")]
        return out

    def _tree_json(self, repo: _Repo, oid: str, rev: str, sub: str, query: dict) -> list[dict]:
        tree = repo.commits[oid].tree
        recursive = query.get("recursive") in ("1", "true", "True")
        expand = query.get("expand") in ("1", "true", "True")
        pre = sub + "/" if sub else ""
        if sub and not any(p.startswith(pre) for p in tree):
            raise HubError(404, "EntryNotFound", f"Folder '{sub}' does not exist on revision '{rev}'",
                           {"X-Repo-Commit": oid})
        files, dirs = [], set()
        for path in sorted(tree):
            if not path.startswith(pre):
                continue
            parts = path[len(pre):].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add(pre + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files.append(self._entry_json(repo, oid, path, tree[path], expand))
        return [self._folder_json(d) for d in sorted(dirs)] + files

    def _resolve(self, segs: list[str]) -> None:
        rtype = "model"
        if segs and segs[0] in ("datasets", "spaces") and len(segs) >= 4:
            rtype, segs = _REPO_TYPES[segs[0]], segs[1:]
        if len(segs) >= 5 and segs[2] in ("resolve", "raw"):
            repo_id, rev, path = f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:])
        elif len(segs) >= 4 and segs[1] in ("resolve", "raw"):
            repo_id, rev, path = segs[0], segs[2], "/".join(segs[3:])
        else:
            raise HubError(404, None, f"Unsupported endpoint: {self.command} /{'/'.join(segs)}")
        repo = self.state.get_repo(rtype, repo_id)
        oid = self.state.resolve(repo, rev)
        entry = repo.commits[oid].tree.get(path)
        if entry is None:
            raise HubError(404, "EntryNotFound", f"Entry not found: '{path}' on revision '{rev}'",
                           {"X-Repo-Commit": oid})
        data = self.state.content(entry)
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"ETag": f'"{entry.git_oid}"', "X-Linked-Etag": f'"{entry.sha256}"',
                            "X-Linked-Size": str(entry.size)})
        else:
            headers["ETag"] = f'"{entry.git_oid}"'
        match = re.match(r"^bytes=(\d+)-(\d*)$", self.headers.get("Range", "").strip())
        if match and self.command == "GET":
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data) and len(data) > 0:
                raise HubError(416, None, f"Range start {start} is past the end of '{path}'"
                                          f" ({len(data)} bytes)",
                               {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        return self._send(200, data, headers, "application/octet-stream")

    # ------------------------------------------------------------------ POST
    def _route_post(self, segs: list[str], query: dict, body: bytes) -> None:
        if segs == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body or b"{}"))
        if segs == ["api", "validate-yaml"]:
            payload = json.loads(body or b"{}")
            error = _check_front_matter(str(payload.get("content", "")))
            if error is not None:
                return self._send(400, error.encode(), {"X-Error-Message": error}, "text/plain")
            return self._json({"errors": [], "warnings": []})
        if segs[:1] == ["lfs-verify"] and len(segs) == 2:
            payload = json.loads(body or b"{}")
            data = self.state.lfs.get(segs[1])
            if data is None or payload.get("oid") != segs[1] or payload.get("size") != len(data):
                raise HubError(422, None, f"LFS object {segs[1]} was not uploaded with the announced"
                                          " oid and size")
            return self._json({"success": True})
        if len(segs) >= 5 and segs[-4:] == ["info", "lfs", "objects", "batch"] and segs[-5].endswith(".git"):
            return self._lfs_batch(json.loads(body))
        parsed = self._api_repo(segs)
        if parsed is None:
            raise HubError(404, None, f"Unsupported endpoint: POST /{'/'.join(segs)}")
        rtype, repo_id, rest = parsed
        repo = self.state.get_repo(rtype, repo_id)
        op = rest[0] if rest else ""
        rev = rest[1] if len(rest) > 1 else "main"
        if op == "commit":
            return self._commit(repo, rev, body, "create_pr" in query)
        payload_json = json.loads(body) if body.startswith(b"{") else {}
        if op == "branch":
            branch = "/".join(rest[1:])
            if not branch:
                raise HubError(400, None, "Missing branch name in POST /branch/{name}")
            if branch in repo.branches:
                raise HubError(409, None, f"Branch '{branch}' already exists in {repo.repo_id}")
            repo.branches[branch] = self.state.resolve(repo, payload_json.get("startingPoint") or "main")
            return self._json({})
        if op == "tag":
            tag = payload_json.get("tag")
            if not tag:
                raise HubError(400, None, "Missing field 'tag' in the body of POST /tag/{revision}")
            if tag in repo.tags:
                raise HubError(409, None, f"Tag '{tag}' already exists in {repo.repo_id}")
            repo.tags[tag] = self.state.resolve(repo, rev)
            return self._json({})
        if op == "preupload":
            return self._preupload(repo, rev, payload_json)
        if op == "paths-info":
            oid = self.state.resolve(repo, rev)
            if body.startswith(b"{"):
                paths, expand = payload_json.get("paths", []), bool(payload_json.get("expand"))
            else:
                form = parse_qs(body.decode())
                paths = form.get("paths", [])
                expand = form.get("expand", ["false"])[-1] in ("1", "true", "True")
            tree, out = repo.commits[oid].tree, []
            for path in paths:
                path = path.strip("/")
                if path in tree:
                    out.append(self._entry_json(repo, oid, path, tree[path], expand))
                elif any(p.startswith(path + "/") for p in tree):
                    out.append(self._folder_json(path))
            return self._json(out)
        raise HubError(404, None, f"Unsupported endpoint: POST /{'/'.join(segs)}")

    def _create_repo(self, payload: dict) -> None:
        name, rtype = payload.get("name"), payload.get("type") or "model"
        if not isinstance(name, str) or not _REPO_NAME_RE.match(name):
            raise HubError(400, None, f"Invalid repo name {name!r}: expected letters, digits, '.', '_'"
                                      " or '-'")
        if rtype not in _URL_PREFIX:
            raise HubError(400, None, f"Invalid repo type {rtype!r}: expected one of {sorted(_URL_PREFIX)}")
        namespace = payload.get("organization") or self.state.user
        repo_id = f"{namespace}/{name}"
        url = f"{self.base}/{_URL_PREFIX[rtype]}{repo_id}"
        if (rtype, repo_id) in self.state.repos:
            return self._json({"error": f"You already created this {rtype} repo", "url": url}, 409)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = _Repo(rtype, repo_id, private, _now())
        tree = {".gitattributes": self.state.add_blob(_DEFAULT_GITATTRIBUTES)}
        repo.branches["main"] = self.state.new_commit(repo, tree, "initial commit", "", None)
        self.state.repos[(rtype, repo_id)] = repo
        return self._json({"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def _lfs_batch(self, payload: dict) -> None:
        if payload.get("operation", "upload") != "upload":
            raise HubError(400, None, f"Unsupported LFS batch operation {payload.get('operation')!r}:"
                                      " only 'upload'")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not _SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                error = {"code": 422, "message": f"Invalid LFS object oid={oid!r} size={size!r}"}
                size = size if isinstance(size, int) else -1
                objects.append({"oid": str(oid), "size": size, "error": error})
                continue
            out = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.state.lfs:
                self.state.lfs_pending[oid] = size
                out["actions"] = {"upload": {"href": f"{self.base}/lfs-upload/{oid}"},
                                  "verify": {"href": f"{self.base}/lfs-verify/{oid}"}}
            objects.append(out)
        return self._json({"transfer": "basic", "objects": objects})

    def _gitattributes(self, repo: _Repo, oid: str | None) -> bytes:
        entry = repo.commits[oid].tree.get(".gitattributes") if oid else None
        return self.state.content(entry) if entry is not None else _DEFAULT_GITATTRIBUTES

    def _preupload(self, repo: _Repo, rev: str, payload: dict) -> None:
        oid = self.state.resolve(repo, rev)
        tree = repo.commits[oid].tree
        patterns = _lfs_patterns(self._gitattributes(repo, oid))
        files = []
        for item in payload["files"]:
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            lfs = size >= LFS_THRESHOLD or _matches_lfs(path, patterns) or b"\0" in sample
            old = tree.get(path)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": old.remote_oid if old is not None else None})
        return self._json({"files": files, "commitOid": oid})

    def _commit(self, repo: _Repo, rev: str, body: bytes, create_pr: bool) -> None:
        base_oid = self.state.resolve(repo, rev)
        if not create_pr and rev not in repo.branches:
            raise HubError(400, None, f"Cannot commit to '{rev}': it is not a branch of {repo.repo_id}")
        tree = dict(repo.commits[base_oid].tree)
        title, message, header_seen = "", "", False
        for number, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header_seen = True
                title, message = value.get("summary", ""), value.get("description", "")
                parent = value.get("parentCommit")
                if parent and parent != base_oid:
                    if create_pr and parent in repo.commits:
                        base_oid, tree = parent, dict(repo.commits[parent].tree)
                    else:
                        raise HubError(412, None, "A commit has happened since. Please refresh and try"
                                                  " again.")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"NDJSON line {number}: unsupported encoding"
                                              f" {value.get('encoding')!r}")
                tree[value["path"]] = self.state.add_blob(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                sha = value["oid"]
                data = self.state.lfs.get(sha)
                if data is None:
                    raise HubError(422, None, f"NDJSON line {number}: LFS object {sha} for '{value['path']}'"
                                              " was never uploaded")
                if "size" in value and value["size"] != len(data):
                    raise HubError(422, None, f"NDJSON line {number}: LFS object {sha} has {len(data)} bytes,"
                                              f" the commit says {value['size']}")
                tree[value["path"]] = _Entry(len(data), git_blob_sha1(lfs_pointer(sha, len(data))), sha, True)
            elif key == "deletedFile":
                if tree.pop(value["path"], None) is None:
                    raise HubError(404, "EntryNotFound",
                                   f"A file with this name doesn't exist: '{value['path']}'")
            elif key == "deletedFolder":
                prefix = value["path"].strip("/") + "/"
                doomed = [p for p in tree if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, "EntryNotFound",
                                   f"A folder with this name doesn't exist: '{value['path']}'")
                for path in doomed:
                    del tree[path]
            else:
                raise HubError(400, None, f"NDJSON line {number}: unknown key {key!r}")
        if not header_seen:
            raise HubError(400, None, "NDJSON commit body has no 'header' line")
        new = self.state.new_commit(repo, tree, title, message, base_oid)
        if create_pr:
            number = 1 + sum(b.startswith("refs/pr/") for b in repo.branches)
            target = f"refs/pr/{number}"
        else:
            target = rev
        repo.branches[target] = new
        out = {"success": True, "commitOid": new, "commitUrl": f"{self._repo_url(repo)}/commit/{new}"}
        if create_pr:
            out["pullRequestUrl"] = f"{self._repo_url(repo)}/discussions/{target.rsplit('/', 1)[1]}"
        return self._json(out)

    # ------------------------------------------------------------------ PUT / DELETE
    def _route_put(self, segs: list[str], query: dict, body: bytes) -> None:
        if len(segs) != 2 or segs[0] != "lfs-upload" or not _SHA256_RE.match(segs[1]):
            raise HubError(404, None, f"Unsupported endpoint: PUT /{'/'.join(segs)}")
        oid = segs[1]
        expected = self.state.lfs_pending.get(oid)
        if expected is None and oid not in self.state.lfs:
            raise HubError(404, None, f"LFS object {oid} was not announced in a batch request")
        if expected is not None and len(body) != expected:
            raise HubError(400, None, f"LFS object {oid}: received {len(body)} bytes, announced {expected}")
        actual = hashlib.sha256(body).hexdigest()
        if actual != oid:
            raise HubError(400, None, f"LFS object sha256 mismatch: the URL says {oid}, the bytes hash"
                                      f" to {actual}")
        self.state.lfs[oid] = body
        self.state.lfs_pending.pop(oid, None)
        return self._send(200, b"", {"ETag": f'"{oid}"'})

    def _route_delete(self, segs: list[str], query: dict, body: bytes) -> None:
        if segs == ["api", "repos", "delete"]:
            payload = json.loads(body or b"{}")
            rtype = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or self.state.user}/{payload.get('name')}"
            if self.state.repos.pop((rtype, repo_id), None) is None:
                raise HubError(404, "RepoNotFound", f"Repository not found: {rtype} '{repo_id}'")
            return self._json({})
        parsed = self._api_repo(segs)
        if parsed is not None and len(parsed[2]) >= 2 and parsed[2][0] in ("branch", "tag"):
            rtype, repo_id, rest = parsed
            repo = self.state.get_repo(rtype, repo_id)
            name = "/".join(rest[1:])
            refs = repo.branches if rest[0] == "branch" else repo.tags
            if rest[0] == "branch" and name == "main":
                raise HubError(403, None, "Cannot delete the default branch 'main'")
            if refs.pop(name, None) is None:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {name}")
            return self._json({})
        raise HubError(404, None, f"Unsupported endpoint: DELETE /{'/'.join(segs)}")


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that tracks its connection threads so that ``close`` can end and join them."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, port: int, state: _State, log_requests: bool):
        super().__init__((LOOPBACK_HOST, port), _Handler)
        self.state, self.log_requests = state, log_requests
        self._conn_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}

    def process_request(self, request, client_address) -> None:
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name=f"LocalHub-conn-{self.server_address[1]}", daemon=True)
        with self._conn_lock:
            self._connections[request] = thread
        thread.start()

    def _serve_connection(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._connections.pop(request, None)

    def close_connections(self, timeout: float) -> None:
        """Shut down every open keep-alive connection and join its thread."""
        with self._conn_lock:
            items = list(self._connections.items())
        for sock, _ in items:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in items:
            thread.join(timeout)


class LocalHub:
    """A Hub-API server on ``127.0.0.1`` holding its repositories in memory.

    Args:
        user (`str`, defaults to ``"user"``): the account name answered by ``whoami`` and the namespace of
            repositories created without one.
        port (`int`, defaults to 0): the port to bind on 127.0.0.1; 0 picks a free one.
        log_requests (`bool`, defaults to False): print each request to stderr (for debugging).

    Use it as a context manager (``with LocalHub() as hub: ...``) or call :meth:`start` / :meth:`stop`;
    :attr:`url` is the endpoint to give the client (see :func:`use_local_hub`), :attr:`requests` the
    ``(method, path)`` pairs served so far.
    """

    def __init__(self, user: str = "user", port: int = 0, log_requests: bool = False):
        if not isinstance(user, str) or not _REPO_NAME_RE.match(user):
            raise ValueError(f"LocalHub: user must be a valid Hub account name, got {user!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"LocalHub: port must be an int in [0, 65535] (0 = any free port), got {port!r}")
        self.user, self.port, self.log_requests = user, port, log_requests
        self._state = _State(user)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the server is accepting requests."""
        return self._server is not None

    @property
    def url(self) -> str:
        """The endpoint, ``http://127.0.0.1:<port>``; raises RuntimeError when the server is not running."""
        if self._server is None:
            raise RuntimeError("LocalHub.url: the server is not running; call start() or use"
                               " 'with LocalHub()'")
        return "http://%s:%d" % self._server.server_address[:2]

    @property
    def requests(self) -> list[tuple[str, str]]:
        """A copy of the ``(method, unquoted path)`` pairs received so far, in arrival order."""
        with self._state.lock:
            return list(self._state.requests)

    def start(self) -> "LocalHub":
        """Bind 127.0.0.1 and serve in a background thread; returns ``self``. State survives stop/start."""
        if self._server is not None:
            raise RuntimeError(f"LocalHub.start: already running at {self.url}")
        server = _Server(self.port, self._state, self.log_requests)
        if server.server_address[0] != LOOPBACK_HOST:  # defensive: the bind address is fixed above
            server.server_close()
            raise RuntimeError(f"LocalHub bound {server.server_address[0]}, expected {LOOPBACK_HOST}")
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"LocalHub-serve-{server.server_address[1]}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and every open connection, and join all server threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server, self._thread = None, None
        server.shutdown()
        server.server_close()
        server.close_connections(timeout)
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"LocalHub(user={self.user!r}, {where}, repos={len(self._state.repos)})"


_MISSING = object()


@contextlib.contextmanager
def use_local_hub(url: str) -> Iterator[str]:
    """Point the imported ``huggingface_hub`` (and ``transformers``) clients at ``url``; restore on exit.

    ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import, so a server started later must be patched in:
    this sets ``huggingface_hub.constants.ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_URL_HOSTS`` (hosts
    that keep the auth header on redirects) and ``HF_HUB_DISABLE_XET=True`` (uploads go through LFS),
    re-points the module-level ``huggingface_hub.hf_api.api`` (behind ``create_repo``, ``upload_file``...),
    drops the cached ``transformers.utils.hub._hf_api`` so that transformers builds a new one, and sets
    the ``HF_ENDPOINT`` and ``HF_HUB_DISABLE_XET`` environment variables for subprocesses.

    Args:
        url (`str`): the endpoint, e.g. ``LocalHub().start().url``.

    Yields:
        The endpoint without a trailing slash.
    """
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"use_local_hub: url must be an http(s) URL such as 'http://127.0.0.1:8080',"
                         f" got {url!r}")
    from huggingface_hub import constants, hf_api

    endpoint = url.rstrip("/")
    saved_constants = {name: getattr(constants, name) for name in
                       ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_DISABLE_XET", "HF_URL_HOSTS")}
    saved_env = {name: os.environ.get(name) for name in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET")}
    saved_api_endpoint = hf_api.api.endpoint
    tf_hub = sys.modules.get("transformers.utils.hub")
    saved_tf_api = getattr(tf_hub, "_hf_api", _MISSING) if tf_hub is not None else _MISSING
    try:
        constants.ENDPOINT = endpoint
        constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_HUB_DISABLE_XET = True
        host = urlsplit(endpoint).hostname.lower()
        constants.HF_URL_HOSTS = frozenset(saved_constants["HF_URL_HOSTS"] | {host})
        hf_api.api.endpoint = endpoint
        if saved_tf_api is not _MISSING:
            tf_hub._hf_api = None
        os.environ["HF_ENDPOINT"] = endpoint
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        yield endpoint
    finally:
        for name, value in saved_constants.items():
            setattr(constants, name, value)
        hf_api.api.endpoint = saved_api_endpoint
        tf_hub_now = sys.modules.get("transformers.utils.hub")
        if tf_hub_now is not None and hasattr(tf_hub_now, "_hf_api"):
            # A client built inside the block points at the local hub: drop it (or put back the old one).
            tf_hub_now._hf_api = None if saved_tf_api is _MISSING else saved_tf_api
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
