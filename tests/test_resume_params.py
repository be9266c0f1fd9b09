"""A trial killed between two `suggest` calls resumes with exactly the parameters an
uninterrupted trial gets (issue 8, part 4.6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from leanhpo.config import sample_params, validate_config
from leanhpo.study.setup import attach_slot, create_or_load_study, open_study


class Killed(Exception):
    """Stands for the kill -9 between two suggest calls: the process stops right there."""


class StopAfter:
    """Passes `count` suggest calls through to the real trial, then stops the 'process'."""

    def __init__(self, trial, count: int) -> None:
        self.trial, self.left = trial, count

    def __getattr__(self, name):
        method = getattr(self.trial, name)

        def suggest(*args, **kwargs):
            if self.left == 0:
                raise Killed
            self.left -= 1
            return method(*args, **kwargs)

        return suggest


def _params(storage: str, slot: int, config: dict, stop_after: int | None = None) -> dict:
    import optuna

    study = open_study("s", storage, seed=42)
    frozen = attach_slot(study, slot)
    trial = optuna.trial.Trial(study, frozen._trial_id)
    if stop_after is not None:
        trial = StopAfter(trial, stop_after)
    return sample_params(trial, config)


@pytest.mark.parametrize("stop_after", [1, 3, 6])
def test_resumed_trial_gets_the_uninterrupted_params(tmp_path: Path, stop_after: int) -> None:
    with (REPO / "config.yaml").open() as handle:
        config = validate_config(yaml.safe_load(handle))
    straight, killed = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    for url in (straight, killed):
        create_or_load_study("s", url)
    expected = _params(straight, 0, config)
    with pytest.raises(Killed):
        _params(killed, 0, config, stop_after=stop_after)
    resumed = _params(killed, 0, config)  # a fresh sampler, as in a new process
    assert resumed == expected
