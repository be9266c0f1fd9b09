"""The study's sampler (`study.sampler`), built so that every trial draws reproducibly.

Each sampler is Optuna's own, wrapped in ParamSeededSampler: what a trial draws depends only on
(study seed, trial number) and the study's finished trials, never on what this process drew
before. A killed and resumed trial therefore draws exactly the parameters an uninterrupted one
would, and a sequential study is the same on every run. `study.parallel` gives that up: which
trials have finished when a slot starts then depends on timing.
"""

from __future__ import annotations

import random
import warnings
import zlib
from collections.abc import Callable, Container, Sequence
from typing import Any, cast

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

SAMPLERS = ("tpe", "random", "qmc", "cmaes", "gp", "grid")
SLOT_ATTR = "leanhpo.slot"  # the trial user attr naming its slot (set by setup.attach_slot)
RELATIVE = "*relative*"  # the seed key of a trial's joint draw; no parameter has this name

MakeIndependent = Callable[[int], BaseSampler]  # seed -> sampler of one parameter
MakeRelative = Callable[[int, int], BaseSampler]  # (seed, trial number) -> joint sampler


class ParamSeededSampler(BaseSampler):
    """Draws every parameter from its own sampler, seeded by (study seed, Optuna trial number,
    parameter name), and the joint (relative) draw of a multivariate sampler from one seeded by
    (study seed, trial number).

    Why: with one random stream per trial, a kill between two `suggest` calls made the resumed
    trial draw the remaining parameters at other positions of that stream, so it differed from
    an uninterrupted run. Seeded per parameter, each draw depends only on the study's finished
    trials (the same in a sequential study) and never on what this process drew before it. The
    trial number (stable across resumes: the slot re-attaches to its own trial) keeps trials
    apart. The joint sampler is built afresh for each trial, and sees the study without that
    trial: a resumed trial's own partial params, or the pending point GPSampler stores on it,
    must not change what the rest of it draws.
    """

    def __init__(
        self, seed: int, make: MakeIndependent, make_relative: MakeRelative | None = None
    ) -> None:
        self.seed, self.make, self.make_relative = seed, make, make_relative
        self._relative: tuple[int, BaseSampler] | None = None  # (trial id, its joint sampler)

    def seed_for(self, trial_number: int, param_name: str) -> int:
        return zlib.crc32(f"{self.seed}:{trial_number}:{param_name}".encode())

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self.make_relative is None:
            return {}
        # A fresh joint sampler for each trial; it keeps what it inferred (TPE: the groups).
        sampler = self.make_relative(self.seed_for(trial.number, RELATIVE), trial.number)
        self._relative = (trial._trial_id, sampler)
        return sampler.infer_relative_search_space(_without(study, trial), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self.make_relative is None or not search_space:
            return {}
        if self._relative is None or self._relative[0] != trial._trial_id:
            self.infer_relative_search_space(study, trial)
        assert self._relative is not None
        return self._relative[1].sample_relative(_without(study, trial), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        sampler = self.make(self.seed_for(trial.number, param_name))
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.make(self.seed).after_trial(study, trial, state, values)


class _StudyWithout:
    """A read view of `study` that leaves out one trial: what a joint sampler sees while it
    samples that trial. Everything but the trial lists is the study's own."""

    def __init__(self, study: optuna.Study, number: int) -> None:
        self._study, self._number = study, number

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if t.number != self._number]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def _without(study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
    return cast(optuna.Study, _StudyWithout(study, trial.number))


class TrialIndexedQMCSampler(optuna.samplers.QMCSampler):
    """QMCSampler that gives trial n point n of the study's sequence. Optuna's own counts its
    calls in a study attr, so a resumed trial, which samples again, would take the next point."""

    def __init__(self, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._index = index

    def _find_sample_id(self, study: optuna.Study, search_space: dict[str, Any]) -> int:
        return self._index


class GridPointSampler(BaseSampler):
    """Slot `offset + i` takes grid point i; a parameter the point lacks (a slot before the
    offset: an enqueued set that leaves it out) is drawn at random with `seed`.

    Our own, not Optuna's GridSampler: that one takes the product over fixed parameter names, so
    a conditional parameter would repeat every point where it is inactive once per value. Here a
    point is one distinct configuration of the active parameters (config.strategy.grid_points)."""

    def __init__(self, points: Sequence[dict[str, Any]], offset: int, seed: int) -> None:
        self.points, self.offset, self.seed = points, offset, seed

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        index = int(trial.user_attrs.get(SLOT_ATTR, trial.number)) - self.offset
        if 0 <= index < len(self.points) and param_name in self.points[index]:
            return self.points[index][param_name]
        fallback = optuna.samplers.RandomSampler(seed=self.seed)
        return fallback.sample_independent(study, trial, param_name, param_distribution)


def _quietly(make: Callable[[], BaseSampler]) -> BaseSampler:
    with warnings.catch_warnings():  # TPE's `group` and QMCSampler are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return make()


def _tpe(seed: int, parallel: bool, startup: dict[str, Any], joint: bool) -> BaseSampler:
    return _quietly(
        lambda: optuna.samplers.TPESampler(
            seed=seed, multivariate=joint, group=joint, constant_liar=parallel, **startup
        )
    )


def sampler_for(
    seed: int,
    name: str = "tpe",
    *,
    n_startup_trials: int | None = None,
    parallel: bool = False,
    grid: Sequence[dict[str, Any]] = (),
    grid_offset: int = 0,
) -> ParamSeededSampler:
    """The sampler `name` (one of SAMPLERS), reproducible per trial (see ParamSeededSampler).

    Parameters outside the joint draw (the start-up trials, a conditional parameter not yet in
    the common space, and for cmaes every categorical) are drawn per parameter: by TPE for tpe
    and cmaes, at random for random, qmc and gp. `grid` holds the grid's points
    (config.strategy.grid_points), shuffled here with the seed and taken from slot
    `grid_offset` on."""
    startup: dict[str, Any] = (
        {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
    )

    def tpe(s: int) -> BaseSampler:
        return _tpe(s, parallel, startup, joint=False)

    def uniform(s: int) -> BaseSampler:
        return optuna.samplers.RandomSampler(seed=s)

    if name == "tpe":
        return ParamSeededSampler(seed, tpe, lambda s, _n: _tpe(s, parallel, startup, joint=True))
    if name == "random":
        return ParamSeededSampler(seed, uniform)
    if name == "qmc":
        # One scrambled Sobol sequence per study (its seed), trial n taking point n.
        return ParamSeededSampler(
            seed,
            uniform,
            lambda _s, n: _quietly(
                lambda: TrialIndexedQMCSampler(
                    n, seed=seed, scramble=True, warn_independent_sampling=False
                )
            ),
        )
    if name == "cmaes":
        return ParamSeededSampler(
            seed,
            tpe,
            lambda s, _n: optuna.samplers.CmaEsSampler(
                seed=s, warn_independent_sampling=False, **startup
            ),
        )
    if name == "gp":
        return ParamSeededSampler(
            seed,
            uniform,
            lambda s, _n: optuna.samplers.GPSampler(
                seed=s, warn_independent_sampling=False, **startup
            ),
        )
    if name == "grid":
        points = list(grid)
        random.Random(seed).shuffle(points)  # a partial grid still spreads over the space
        return ParamSeededSampler(seed, lambda s: GridPointSampler(points, grid_offset, s))
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
