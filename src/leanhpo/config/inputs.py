"""What a valid config points at, checked before any step runs: the data files and the model.

The schema says whether a config is well formed; these checks say whether what it names is
there. They run when the Snakefile is parsed (rules/common.smk) and in `validate-config`, so a
wrong `data.path` or a model this machine cannot load is refused before Snakemake schedules a
job, and so before it deletes the outputs of one it means to rerun.

Hub lookups ask the local cache first, then the hub once with a short timeout: a model that is
neither cached nor reachable cannot be loaded by a trial either (whose own retries then take a
minute to say so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HUB_CHECK_TIMEOUT_S = 10.0


def input_problems(config: dict[str, Any]) -> list[str]:
    """Problems with the data and the model that a validated `config` names (empty: none)."""
    problems = []
    data_problem = _data_problem(config["data"])
    if data_problem:
        problems.append(data_problem)
    model = config["model"]
    model_problem = _model_problem(str(model["id"]), str(model.get("revision") or "main"))
    if model_problem:
        problems.append(model_problem)
    return problems


def _data_problem(data: dict[str, Any]) -> str | None:
    from leanhpo.data.errors import DataError

    if data["source"] == "local":
        from leanhpo.data.redsm5 import load_redsm5
        from leanhpo.data.sources import materialize_source

        try:
            # Reads the two CSVs in place (nothing is written for a local source) and checks
            # columns, labels and encoding, as the prepare step will.
            found = materialize_source(data, raw_dir=Path("."))
            load_redsm5(found["posts_csv"], found["annotations_csv"])
        except DataError as error:
            return f"config key 'data.path': {error}"
    elif data["source"] == "hub":
        return _hub_dataset_problem(str(data["id"]), str(data.get("revision") or "main"))
    return None


def _hub_dataset_problem(repo_id: str, revision: str) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from leanhpo.hub import hub_cache_dir, hub_offline

    if not hub_offline():
        return None  # the prepare step downloads it, with retries
    try:
        snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            local_files_only=True,
            cache_dir=str(hub_cache_dir()),
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return (
            f"config key 'data.id': dataset {repo_id!r} (revision {revision!r}) is not in the "
            f"Hugging Face cache ({hub_cache_dir()}) and HF_HUB_OFFLINE is set. Fix: download it on "
            "a connected machine (`huggingface-cli download --repo-type dataset "
            f"{repo_id} --revision {revision}`) and copy the cache here, or use data.source: local "
            "with data.path pointing at the two CSVs."
        )
    return None


def _model_problem(model_id: str, revision: str) -> str | None:
    """Whether `model.id` names a model this machine can load (the form of the id is checked by
    the schema step, leanhpo.hub.model_id_problem)."""
    from leanhpo.hub import HUB_ALIASES

    if model_id in ("minilm", "tiny"):
        return None  # the bundled package, and a random BERT from a config
    local = Path(model_id).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return None
        return (
            f"config key 'model.id': the folder {local} has no config.json; point it at a "
            "Hugging Face model folder (save_pretrained output: config.json, weights, tokenizer)"
        )
    return _hub_model_problem(HUB_ALIASES.get(model_id, model_id), revision)


def _hub_model_problem(hub_id: str, revision: str) -> str | None:
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from leanhpo.hub import hub_cache_dir, hub_offline

    cached = try_to_load_from_cache(
        hub_id, "config.json", cache_dir=str(hub_cache_dir()), revision=revision
    )
    if isinstance(cached, str):
        return None
    where = f"it is not in the Hugging Face cache ({hub_cache_dir()})"
    fixes = (
        "Fix: correct model.id (a catalog alias such as minilm, a local folder, or a hub id), or "
        f"download it on a connected machine (`huggingface-cli download {hub_id} --revision "
        f"{revision}`), copy the cache here and set HF_HUB_OFFLINE=1."
    )
    if hub_offline():
        return f"config key 'model.id': cannot load {hub_id!r}: {where} and HF_HUB_OFFLINE is set. {fixes}"
    try:
        HfApi().model_info(hub_id, revision=revision, timeout=HUB_CHECK_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return (
            f"config key 'model.id': the hub has no model {hub_id!r} at revision {revision!r} "
            f"(or it is private and no token with access is set), and {where}. {fixes}"
        )
    except GatedRepoError:
        return (
            f"config key 'model.id': {hub_id!r} is gated: accept its licence on "
            f"https://huggingface.co/{hub_id} and log in (`huggingface-cli login` or HF_TOKEN)."
        )
    except HfHubHTTPError:
        return None  # the hub answered with an error worth retrying: the trial's loader retries
    except OSError as error:  # no route, no DNS, refused connection, timeout
        return (
            f"config key 'model.id': cannot load {hub_id!r}: {where}, and the hub cannot be "
            f"reached ({type(error).__name__}). If the network is only down for a moment, run "
            f"again. {fixes}"
        )
    return None
