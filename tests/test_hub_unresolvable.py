"""A hub whose host name does not resolve (no network, no DNS) fails at once, with the same fix
as a hub that stayed down, instead of after the 31 s of backoff meant for a reachable hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

from leanhpo.hub import RETRY_SCALE_ENV

# RFC 6761: no name under .invalid ever resolves, on any network.
UNRESOLVABLE_HUB = "https://hub.invalid"
FAST_S = 5.0  # the backoff alone is 31 s; one failed lookup takes milliseconds


def test_an_unresolvable_hub_fails_fast_for_the_model_and_the_dataset(tmp_path: Path) -> None:
    """A fresh process, as a user runs it: HF_ENDPOINT read at import, the real retry schedule
    (no LEANHPO_HUB_RETRY_SCALE), an empty cache, no proxy."""
    script = textwrap.dedent(
        f"""
        import json, time
        from leanhpo.data import DataError, materialize_source
        from leanhpo.models import ModelLoadError, load_encoder

        data = {{"source": "hub", "id": "irlab-udc/redsm5", "revision": "main", "path": None,
                 "split": {{"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 42}}}}
        out = {{}}
        for what, load, error in (
            ("model", lambda: load_encoder("bert-base"), ModelLoadError),
            ("dataset", lambda: materialize_source(data, {str(tmp_path / "raw")!r}), DataError),
        ):
            started = time.monotonic()
            try:
                load()
            except error as caught:
                out[what] = {{"seconds": time.monotonic() - started, "message": str(caught),
                             "exit_code": caught.exit_code}}
        print(json.dumps(out))
        """
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", RETRY_SCALE_ENV)
        and not key.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
    }
    env.update(
        HF_ENDPOINT=UNRESOLVABLE_HUB,
        HF_HOME=str(tmp_path / "hf_home"),
        PYTHONPATH=str(REPO / "src"),
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert set(results) == {"model", "dataset"}, done.stderr[-3000:]
    for what, result in results.items():
        assert result["seconds"] < FAST_S, (what, result)
        assert result["exit_code"] == 2
        message = result["message"]
        assert "1 attempt" in message and "hub.invalid" in message, message
        # the same actionable fix as after the retries: the cache, a download by hand, offline
        for advice in ("huggingface-cli download", "HF_HUB_OFFLINE=1", str(tmp_path / "hf_home")):
            assert advice in message, (what, advice, message)
    assert "does not resolve" in results["model"]["message"]
    assert "hub attempt" not in done.stderr  # not one retry was logged
