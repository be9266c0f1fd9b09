"""Where the raw ReDSM5 CSVs come from: the bundled generator, a local folder or the hub.

Whatever the source, the result is the same pair of CSV paths plus the identity of the data
(dataset id and resolved revision), which goes into MLflow and the reports.
"""

import hashlib
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from leanhpo.data.errors import DataError
from leanhpo.data.redsm5 import ANNOTATIONS_FILE, POSTS_FILE
from leanhpo.data.sample import DEFAULT_PROFILE, SAMPLE_VERSION, generate_sample
from leanhpo.fsutil import atomic_write_bytes, sha256_file
from leanhpo.hub import (
    HUB_RETRY_WAITS,
    HubUnresolvable,
    describe_hub_error,
    error_chain,
    hub_cache_dir,
    hub_error_kind,
    hub_offline,
    hub_retrying,
    hub_status,
    redact,
    single_shot_hub_requests,
)

SOURCES: tuple[str, ...] = ("sample", "local", "hub")
SAMPLE_DATASET_ID = "leanhpo-sample"


def materialize_source(data_cfg: dict[str, Any], raw_dir: Path) -> dict[str, Any]:
    """Make the two CSVs available on disk and say which data they are."""
    source = data_cfg.get("source")
    raw_dir = Path(raw_dir)
    if source == "sample":
        return _materialize_sample(data_cfg, raw_dir)
    if source == "local":
        return _materialize_local(data_cfg)
    if source == "hub":
        return _materialize_hub(data_cfg, raw_dir)
    raise DataError(
        f"Tried to read data.source and found {source!r}. Valid sources are {list(SOURCES)}. "
        "Fix: set data.source to sample (bundled), local (data.path) or hub (data.id)."
    )


def _materialize_sample(data_cfg: dict[str, Any], raw_dir: Path) -> dict[str, Any]:
    # Both are checked by generate_sample, which names the config key to fix.
    n_posts: Any = data_cfg.get("sample_posts")
    seed: Any = (data_cfg.get("split") or {}).get("seed")
    profile: Any = data_cfg.get("sample_profile", DEFAULT_PROFILE)
    paths = generate_sample(raw_dir, n_posts, seed=seed, profile=profile)
    revision = f"{SAMPLE_VERSION}-{profile}-n{n_posts}-s{seed}"
    # The generator is deterministic, so its version and arguments fully identify the data.
    return _result(
        paths["posts_csv"],
        paths["annotations_csv"],
        "sample",
        SAMPLE_DATASET_ID,
        revision,
        revision,
    )


def _materialize_local(data_cfg: dict[str, Any]) -> dict[str, Any]:
    """Read the CSVs where they are: users keep the gated data outside the experiment folder."""
    folder_value = data_cfg.get("path")
    if not folder_value:
        raise DataError(
            "Tried to use data.source: local, but data.path is empty. Fix: set data.path to the "
            f"folder holding {POSTS_FILE} and {ANNOTATIONS_FILE}."
        )
    folder = Path(folder_value).expanduser()
    posts, annotations = folder / POSTS_FILE, folder / ANNOTATIONS_FILE
    if not (posts.is_file() and annotations.is_file()):
        found = sorted(child.name for child in folder.iterdir()) if folder.is_dir() else None
        what = f"it holds {found or 'nothing'}" if found is not None else "it does not exist"
        raise DataError(
            f"Tried to read the ReDSM5 files from data.path={folder}, but {what}. Expected the "
            f"files {POSTS_FILE} and {ANNOTATIONS_FILE} there. Fix: copy both CSVs from "
            "https://huggingface.co/datasets/irlab-udc/redsm5 into that folder, or point "
            "data.path at the folder that has them."
        )
    content_hash = _combined_sha256(posts, annotations)
    return _result(posts, annotations, "local", f"local:{folder}", None, f"sha256:{content_hash}")


def _combined_sha256(*paths: Path) -> str:
    """A short identity of local files, since a folder has no revision of its own."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _result(
    posts: Path,
    annotations: Path,
    source: str,
    dataset_id: str,
    revision: str | None,
    resolved: str | None,
) -> dict[str, Any]:
    return {
        "posts_csv": posts,
        "annotations_csv": annotations,
        "source": source,
        "dataset_id": dataset_id,
        "revision": revision,
        "resolved_revision": resolved,
    }


def _materialize_hub(data_cfg: dict[str, Any], raw_dir: Path) -> dict[str, Any]:
    """Cache first, then the network with retries; copy the CSVs into `raw_dir`."""
    repo_id = str(data_cfg.get("id") or "")
    revision = data_cfg.get("revision") or "main"
    if not repo_id:
        raise DataError(
            "Tried to use data.source: hub, but data.id is empty. "
            "Fix: set data.id to e.g. irlab-udc/redsm5."
        )
    snapshot = _download_snapshot(repo_id, str(revision))
    posts = _copy_into(_find_in_snapshot(snapshot, POSTS_FILE, repo_id), raw_dir)
    annotations = _copy_into(_find_in_snapshot(snapshot, ANNOTATIONS_FILE, repo_id), raw_dir)
    return _result(posts, annotations, "hub", repo_id, str(revision), snapshot.name)


def _download_snapshot(repo_id: str, revision: str) -> Path:
    """The snapshot folder: the cache first (works offline), then the hub with retries."""
    cache = hub_cache_dir()
    kwargs: dict[str, Any] = {
        "repo_id": repo_id,
        "repo_type": "dataset",
        "revision": revision,
        "allow_patterns": ["*.csv"],
        "cache_dir": str(cache),
    }
    try:
        cached = Path(snapshot_download(local_files_only=True, **kwargs))
        # A snapshot fetched earlier with other patterns can exist without our CSVs.
        if all(any(cached.rglob(name)) for name in (POSTS_FILE, ANNOTATIONS_FILE)):
            return cached
    except LocalEntryNotFoundError:
        pass  # a cache miss: the normal first-run case
    if hub_offline():
        reason = (
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so the hub was not tried "
            "(unset it to download)"
        )
        raise DataError(_unreachable_message(repo_id, revision, cache, reason))
    retrying = hub_retrying(_is_transient, HUB_RETRY_WAITS)
    try:
        with single_shot_hub_requests():
            return Path(retrying(snapshot_download, **kwargs))
    except Exception as error:
        attempts = retrying.statistics.get("attempt_number", 1)
        # `from None`: the chained hub errors quote server messages, which may hold the token.
        raise _hub_error(error, repo_id, revision, cache, attempts) from None


def _is_transient(error: BaseException) -> bool:
    """Retry what may pass (connection drops, timeouts, 5xx, 429), not auth or missing repos."""
    return hub_error_kind(error) == "transient"


def _hub_error(
    error: Exception, repo_id: str, revision: str, cache: Path, attempts: int
) -> DataError:
    """Turn a hub failure into the fix the user needs; the error text never holds a token."""
    page = f"https://huggingface.co/datasets/{repo_id}"
    kind = hub_error_kind(error)
    chain = error_chain(error)
    if kind == "refused":
        status = hub_status(error)
        return DataError(
            f"Tried to download dataset '{repo_id}' (revision '{revision}') from the Hugging "
            f"Face hub and was refused ({_last_hub_error_name(chain)}, HTTP {status}; not "
            f"retried, since waiting does not grant access): the dataset is gated or you are "
            f"not logged in. Fix: accept the terms on {page}, then run `huggingface-cli login` "
            "or set the HF_TOKEN environment variable to a token that can read it, and run "
            f"again. Or fill the cache at {cache} on a machine that has access (`huggingface-cli "
            f"download {repo_id} --repo-type dataset --revision {revision} --cache-dir {cache}`) "
            "and run here with HF_HUB_OFFLINE=1."
        )
    if any(isinstance(link, RevisionNotFoundError) for link in chain):
        return DataError(
            f"Tried to download dataset '{repo_id}' at revision '{revision}', but the hub has "
            f"no such revision. Fix: set data.revision to a branch, tag or commit listed on "
            f"{page}/commits/main."
        )
    if any(isinstance(link, RepositoryNotFoundError) for link in chain):
        return DataError(
            f"Tried to download dataset '{repo_id}' and the hub says it does not exist or is "
            f"private. Searched the cache at {cache} too. Fix: check data.id; if it is gated, "
            f"accept the terms on {page} and run `huggingface-cli login` (or set HF_TOKEN)."
        )
    plural = "s" if attempts != 1 else ""
    reason = (
        f"the hub did not answer ({attempts} attempt{plural}, last: "
        f"{redact(describe_hub_error(error))})"
    )
    unresolved = [link for link in chain if isinstance(link, HubUnresolvable)]
    if unresolved:  # the request and the host it could not find say more than the types
        found = redact(str(unresolved[0]))
        reason = f"the hub could not be reached ({attempts} attempt{plural}: {found})"
    return DataError(_unreachable_message(repo_id, revision, cache, reason))


def _last_hub_error_name(chain: list[BaseException]) -> str:
    """The hub's own error type (HfHubHTTPError, GatedRepoError), not the wrapper around it."""
    typed = [link for link in chain if isinstance(link, HfHubHTTPError)]
    return type(typed[-1] if typed else chain[0]).__name__


def _unreachable_message(repo_id: str, revision: str, cache: Path, reason: str) -> str:
    return (
        f"Tried to load dataset '{repo_id}' (revision '{revision}') from the Hugging Face cache "
        f"at {cache}: it is not there, and {reason}. Fix: on a machine with network run "
        f"`huggingface-cli download {repo_id} --repo-type dataset --revision {revision} "
        f"--cache-dir {cache}` (copy that folder over if needed), or download {POSTS_FILE} and "
        f"{ANNOTATIONS_FILE} by hand and set data.source: local with data.path pointing at "
        "their folder. A filled cache loads with HF_HUB_OFFLINE=1 and no network. If the "
        f"dataset is gated, accept its terms on https://huggingface.co/datasets/{repo_id} and "
        "log in with `huggingface-cli login` (or set HF_TOKEN) before downloading."
    )


def _find_in_snapshot(snapshot: Path, name: str, repo_id: str) -> Path:
    """The CSVs may sit in a subfolder of the dataset repo, so search the whole snapshot."""
    matches = sorted(snapshot.rglob(name), key=lambda path: (len(path.parts), str(path)))
    if matches:
        return matches[0]
    found = sorted(str(path.relative_to(snapshot)) for path in snapshot.rglob("*.csv"))
    raise DataError(
        f"Tried to find {name} in the snapshot of '{repo_id}' at {snapshot}; found CSV files "
        f"{found or 'none'}. Fix: check data.id and data.revision point at ReDSM5, or use "
        "data.source: local with a folder holding the two ReDSM5 CSVs."
    )


def _copy_into(source: Path, raw_dir: Path) -> Path:
    """Copy (atomically) so the prepared data folder is self-contained and cache-independent."""
    target = raw_dir / source.name
    with source.open("rb") as handle:
        atomic_write_bytes(target, handle.read())
    return target
