"""A fake Hugging Face hub: a real HTTP server on 127.0.0.1 that speaks just enough of the hub's
API for `transformers` `from_pretrained` and `huggingface_hub` `snapshot_download`.

What the clients need (read from huggingface_hub 0.36 and transformers 4.57):
- `GET /api/{models|datasets}/{repo}/revision/{rev}`: JSON with `id`, `sha` (the commit) and
  `siblings` (`rfilename` each); snapshot_download names the snapshot folder after `sha`.
- `HEAD` and `GET /{repo}/resolve/{rev}/{file}` (`/datasets/{repo}/resolve/...` for datasets):
  the HEAD must carry `X-Repo-Commit`, an `ETag` and `Content-Length`, or the client refuses
  the file; the commit names the snapshot folder, the ETag the blob.
- `GET /api/models/{repo}/tree/{rev}/{path}`: transformers lists chat templates this way.
- Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo), which
  the client turns into its typed errors.

The server can answer 503 for the next N requests, or 401/403 for every request, and records
every request, so a test can count attempts, read the waits between them or assert that none
was made. It is also the HTTP(S) proxy of the test, so a request that escapes to the real hub
is recorded (as CONNECT) instead of leaving the machine.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

MODEL_ID = "fake-org/tiny-bert"
DATASET_ID = "fake-org/redsm5"
MODEL_COMMIT = hashlib.sha1(b"tiny-bert").hexdigest()
DATASET_COMMIT = hashlib.sha1(b"redsm5").hexdigest()
SAMPLE_POSTS = 30  # enough posts for both CSVs to hold every kind of row, small enough to be fast

API_INFO = re.compile(
    r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$"
)
API_TREE = re.compile(
    r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"
)
RESOLVE = re.compile(
    r"^/(?P<prefix>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"
)


@dataclass(frozen=True)
class Repo:
    kind: str  # "models" or "datasets", as in the API paths
    repo_id: str
    commit: str
    files: dict[str, bytes]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    at: float  # time.monotonic() when the request arrived
    authorized: bool  # whether an Authorization header came with it


@dataclass
class Faults:
    unavailable_left: int = 0  # answer 503 to this many more requests
    refuse_status: int | None = None  # answer this (401/403) to every request
    refuse_code: str | None = None  # with this X-Error-Code, e.g. GatedRepo
    refuse_only: str | None = None  # only requests whose path names this repo


@dataclass
class FakeHub:
    """The running server; `url` goes into HF_ENDPOINT."""

    url: str = ""
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: _Server | None = None
    thread: threading.Thread | None = None

    def add_repo(self, kind: str, repo_id: str, commit: str, files: dict[str, bytes]) -> None:
        self.repos[(kind, repo_id)] = Repo(kind, repo_id, commit, files)

    def unavailable_for(self, n_requests: int) -> None:
        self.faults.unavailable_left = n_requests

    def refuse(self, status: int, error_code: str | None = None, only: str | None = None) -> None:
        """Answer `status` to every request from now on (or to those for repo `only`)."""
        self.faults.refuse_status, self.faults.refuse_code = status, error_code
        self.faults.refuse_only = only

    def stop(self) -> None:
        """Stop listening: later requests find the port closed (a connection error)."""
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
        self.server = self.thread = None

    def clear(self) -> None:
        """Forget the recorded requests and heal every fault."""
        with self.lock:
            self.requests.clear()
            self.faults = Faults()

    def hub_requests(self) -> list[Request]:
        """The requests meant for this hub (not the ones that came here as a proxy)."""
        return [request for request in self.requests if request.path.startswith("/")]

    def stray(self) -> list[Request]:
        """Requests that tried to leave for another host and came here as to a proxy."""
        return [request for request in self.requests if not request.path.startswith("/")]

    def _next_fault(self, path: str) -> tuple[int, str | None] | None:
        with self.lock:
            if self.faults.unavailable_left > 0:
                self.faults.unavailable_left -= 1
                return 503, None
            only = self.faults.refuse_only
            if self.faults.refuse_status is not None and (only is None or f"/{only}/" in path):
                return self.faults.refuse_status, self.faults.refuse_code
        return None

    def _record(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_CONNECT(self) -> None:  # a request for another host, sent here as to a proxy
        self._send(405, {}, b"", with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is the record; stderr noise would hide test output

    def _answer(self, with_body: bool) -> None:
        hub = self.server.hub
        fault = hub._next_fault(self.path)
        if fault is not None:
            status, code = fault
            self._refuse(status, code, with_body)
            return
        status, headers, body = self._route(hub, urlsplit(self.path).path)
        self._send(status, headers, body, with_body)

    def _refuse(self, status: int, code: str | None, with_body: bool) -> None:
        # The worst case on purpose: the answer echoes the credential it was sent, as a
        # misbehaving proxy might, so the tests prove that our messages mask it anyway.
        sent = self.headers.get("Authorization", "no credentials")
        message = f"refused ({status}); the request carried {sent}"
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, headers, json.dumps({"error": message}).encode(), with_body)

    def _route(self, hub: FakeHub, path: str) -> tuple[int, dict[str, str], bytes]:
        if match := API_INFO.match(path):
            repo = hub.repos.get((match["kind"], match["repo"]))
            return _repo_info(repo, unquote(match["rev"]))
        if match := API_TREE.match(path):
            repo = hub.repos.get((match["kind"], match["repo"]))
            return _tree(repo, unquote(match["rev"]), match["path"] or "")
        if match := RESOLVE.match(path):
            kind = "datasets" if match["prefix"] else "models"
            repo = hub.repos.get((kind, match["repo"]))
            return _resolve(repo, unquote(match["rev"]), unquote(match["file"]))
        return _error(404, "RepoNotFound", f"no route {path}")

    def _send(self, status: int, headers: dict[str, str], body: bytes, with_body: bool) -> None:
        self.server.hub._record(
            Request(
                method=self.command,
                path=self.path,
                status=status,
                at=time.monotonic(),
                authorized="Authorization" in self.headers,
            )
        )
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
    return status, headers, json.dumps({"error": message}).encode()


def _known_revision(repo: Repo, revision: str) -> bool:
    return revision in ("main", repo.commit)


def _repo_info(repo: Repo | None, revision: str) -> tuple[int, dict[str, str], bytes]:
    if repo is None:
        return _error(404, "RepoNotFound", "Repository not found")
    if not _known_revision(repo, revision):
        return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
    info = {
        "id": repo.repo_id,
        "sha": repo.commit,
        "private": False,
        "siblings": [{"rfilename": name} for name in sorted(repo.files)],
    }
    return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()


def _tree(repo: Repo | None, revision: str, folder: str) -> tuple[int, dict[str, str], bytes]:
    if repo is None:
        return _error(404, "RepoNotFound", "Repository not found")
    if not _known_revision(repo, revision):
        return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
    prefix = f"{folder.rstrip('/')}/" if folder else ""
    entries = [
        {"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
        for name, data in sorted(repo.files.items())
        if name.startswith(prefix) and "/" not in name[len(prefix) :]
    ]
    return 200, {"Content-Type": "application/json"}, json.dumps(entries).encode()


def _resolve(repo: Repo | None, revision: str, name: str) -> tuple[int, dict[str, str], bytes]:
    if repo is None:
        return _error(404, "RepoNotFound", "Repository not found")
    if not _known_revision(repo, revision):
        return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
    if name not in repo.files:
        status, headers, body = _error(404, "EntryNotFound", f"{name} does not exist")
        # The client caches the absence under the commit, as with the real hub.
        return status, {**headers, "X-Repo-Commit": repo.commit}, body
    data = repo.files[name]
    headers = {
        "X-Repo-Commit": repo.commit,
        "ETag": f'"{_git_oid(data)}"',
        "Content-Type": "application/octet-stream",
    }
    return 200, headers, data


def _git_oid(data: bytes) -> str:
    """The blob id git would give the file: what the hub sends as the ETag of a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub


def start_fake_hub() -> FakeHub:
    """Start a server on a free port of 127.0.0.1 (port 0 lets the kernel choose)."""
    hub = FakeHub()
    hub.server = _Server(hub)
    hub.url = f"http://127.0.0.1:{hub.server.server_address[1]}"
    # A short poll interval: stop() waits for one poll, and every test stops a server.
    hub.thread = threading.Thread(
        target=hub.server.serve_forever, args=(0.02,), name="fake-hub", daemon=True
    )
    hub.thread.start()
    return hub


def tiny_model_files(folder: Path) -> dict[str, bytes]:
    """A small random BERT with the bundled MiniLM tokenizer, as save_pretrained writes it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from leanhpo.models.encoder import TINY_BERT, minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **TINY_BERT))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def redsm5_files(folder: Path) -> dict[str, bytes]:
    """The two ReDSM5 CSVs from the bundled generator, in a `data/` folder as on the real hub."""
    from leanhpo.data import generate_sample

    paths = generate_sample(folder, SAMPLE_POSTS, seed=5)
    return {f"data/{Path(path).name}": Path(path).read_bytes() for path in paths.values()}


@pytest.fixture(scope="session")
def fake_hub_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Built once: a model takes a second to build, and the tests never change the files."""
    return {
        "model": tiny_model_files(tmp_path_factory.mktemp("tiny-bert")),
        "dataset": redsm5_files(tmp_path_factory.mktemp("redsm5")),
    }


@pytest.fixture
def fake_hub(
    fake_hub_repos: dict[str, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FakeHub]:
    """A fake hub serving MODEL_ID and DATASET_ID, with this process pointed at it, online,
    and with an empty HF cache of its own under `tmp_path/hf_home`."""
    hub = start_fake_hub()
    hub.add_repo("models", MODEL_ID, MODEL_COMMIT, fake_hub_repos["model"])
    hub.add_repo("datasets", DATASET_ID, DATASET_COMMIT, fake_hub_repos["dataset"])
    point_hub_clients_at(hub.url, tmp_path / "hf_home", monkeypatch)
    try:
        yield hub
    finally:
        hub.stop()
        _reset_hub_sessions()
    # A safety net for every test: nothing tried to reach the real hub (or any other host).
    assert not hub.stray(), f"requests left for other hosts: {hub.stray()}"


def point_hub_clients_at(url: str, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point huggingface_hub and transformers, already imported, at `url`, online.

    Both read HF_ENDPOINT and HF_HUB_OFFLINE once, at import (tests/conftest.py sets
    HF_HUB_OFFLINE=1 before that), so the environment alone is not enough in-process: the
    values they copied are patched as well, the way huggingface_hub's own tests patch them.
    """
    import huggingface_hub.constants
    import huggingface_hub.file_download
    import huggingface_hub.hf_api
    import transformers.utils.hub

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # Anything that tries another host reaches this server as its proxy and is recorded there.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", url)  # behind list_repo_tree
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", False)
    # Sessions made while offline refuse every request; make new ones.
    _reset_hub_sessions()


def _reset_hub_sessions() -> None:
    from huggingface_hub.utils import reset_sessions

    reset_sessions()
