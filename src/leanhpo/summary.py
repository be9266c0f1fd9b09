"""The closing summary of a study: what a person wants to know when `make all` ends.

Best trial and its params, validation and test scores against the trivial baselines (with the
bootstrap intervals of study_report.json), disk kept against written, MLflow writes an outage
kept from MLflow (with the command that replays them), and where to look next.
Shown by the Snakefile's `onsuccess:` handler and by `python -m leanhpo summary`. It only
reads the reports the workflow wrote; a study without a study report yet gives no summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanhpo.commands import Invocation, executable, join
from leanhpo.fsutil import read_json
from leanhpo.paths import exported_folder, trial_label
from leanhpo.study.confirm import confirm_summary
from leanhpo.trial.progress import PREFIX, finished_reports

STUDY_REPORT = "study_report.json"
# A post for the printed predict command: it shows the model at work on text of one's own.
EXAMPLE_POST = "I can't sleep, I'm exhausted all day and nothing feels worth doing anymore."
RETENTION = "retention.json"
BEST_MODEL = "best_model"
# The study's MLflow spool (leanhpo.tracking.SPOOL_FILE), matched without importing mlflow.
SPOOL_FILES = "tracking_spool*.sqlite"
# Test scores shown, as (section of test_metrics, metric, label).
SHOWN_TEST_METRICS = (
    ("criteria_matching", "f1_macro", "criteria f1_macro"),
    ("criteria_matching", "pr_auc_macro", "criteria pr_auc_macro"),
    ("evidence_binding", "f1", "evidence f1"),
    # the decision and its evidence together (right decision, right sentence where present)
    ("joint", "accuracy", "joint accuracy"),
    ("joint", "f1", "joint f1"),
)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _score(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(ci: dict[str, Any] | None) -> str:
    if not ci or ci.get("low") is None:
        return ""
    return f" [{ci['low']:.3f}, {ci['high']:.3f}]"


def _params(params: dict[str, Any]) -> str:
    shown = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]
    return ", ".join(shown) or "(no searched params)"


def share_not_better(comparison: dict[str, Any]) -> float | None:
    """The share of bootstrap resamples in which the model was not better than the baseline;
    study reports of schema version 1 call it `p_not_better`."""
    value = comparison.get("share_not_better", comparison.get("p_not_better"))
    return None if value is None else float(value)


def _share(value: float | None) -> str:
    return "?" if value is None else f"{value:.1%}"


def left_out_note(criteria: dict[str, Any]) -> str:
    """What the macro averages leave out, in words; "" when every symptom is defined."""
    left_out = criteria.get("undefined_symptoms") or []
    if not left_out:
        return ""
    return (
        f"macro averages over {9 - len(left_out)} of 9 symptoms: no test post shows "
        f"{', '.join(left_out)} (undefined, not 0)"
    )


def ten_label_line(criteria: dict[str, Any], ci: dict[str, Any]) -> str:
    """The figures comparable with the ReDSM5 authors' baselines; "" for older reports."""
    block, bounds = criteria.get("ten_label"), ci.get("ten_label") or {}
    if not block:
        return ""
    shown = ", ".join(
        f"{name} {_score(block.get(name))}{_interval(bounds.get(name))}"
        for name in ("f1_macro", "f1_micro", "subset_accuracy")
    )
    return f"10-label (9 symptoms + NO_SYMPTOMS, as the ReDSM5 baselines): {shown}"


def _test_lines(report: dict[str, Any]) -> list[str]:
    metrics, ci = report.get("test_metrics") or {}, report.get("test_metrics_ci") or {}
    level = ci.get("level", 0.95)
    posts = (report.get("test_split") or {}).get("posts", "?")
    lines = [f"  test ({posts} posts, {level:.0%} intervals):"]
    for section, name, label in SHOWN_TEST_METRICS:
        value = (metrics.get(section) or {}).get(name)
        if value is not None:
            lines.append(
                f"    {label} {_score(value)}{_interval((ci.get(section) or {}).get(name))}"
            )
    criteria = metrics.get("criteria_matching") or {}
    for extra in (
        left_out_note(criteria),
        ten_label_line(criteria, ci.get("criteria_matching") or {}),
    ):
        if extra:
            lines.append(f"    {extra}")
    comparison = report.get("baseline_comparison") or {}
    if comparison.get("baseline"):
        metric = next((k[len("model_") :] for k in comparison if k.startswith("model_")), "")
        lines.append(
            f"    vs baseline {comparison['baseline']}: {metric} "
            f"{_score(comparison.get(f'baseline_{metric}'))}"
            f"{_interval(comparison.get('baseline_ci'))}; model "
            f"{_score(comparison.get(f'model_{metric}'))}, "
            f"not better in {_share(share_not_better(comparison))} of the resamples"
        )
    return lines


def _disk_line(study_dir: Path, trials: list[dict[str, Any]]) -> str:
    retention = study_dir / RETENTION
    if retention.is_file():
        info = read_json(retention)
        written, kept = info.get("bytes_written_total"), info.get("bytes_retained")
    else:
        written = sum(t["storage"]["bytes_written"] for t in trials if t.get("storage"))
        kept = sum(t["storage"]["bytes_retained"] for t in trials if t.get("storage"))
    share = f" ({kept / written:.0%})" if written and kept is not None else ""
    return f"  disk: checkpoints kept {human_bytes(kept)}{share} of {human_bytes(written)} written"


def _tracking_lines(study_dir: Path, invocation: Invocation) -> list[str]:
    """After an MLflow outage, what its spool still holds and the command that replays it;
    nothing when MLflow never failed (no spool file, and mlflow is not even imported)."""
    if not any(study_dir.glob(SPOOL_FILES)):
        return []
    from leanhpo.tracking import study_backlog

    left = study_backlog(study_dir)
    if not (left["entries"] or left["runs"] or left["dead"]):
        return ["  tracking: all writes in MLflow"]
    lines = []
    if left["entries"] or left["runs"]:
        lines += [
            f"  tracking: {left['entries']} MLflow writes of {left['runs']} runs not in MLflow "
            "yet (it was down at the end); once it is up, run:",
            f"    {invocation.leanhpo('sync-tracking')}",
        ]
    if left["dead"]:
        lines += [
            f"  tracking: {left['dead']} MLflow writes refused by MLflow for good (dead letters,"
            " e.g. their run was deleted); see them, then retry (after restoring the run) or drop:",
            f"    {invocation.leanhpo('sync-tracking', '--show-dead')}",
            f"    {invocation.leanhpo('sync-tracking', '--retry-dead')}",
            f"    {invocation.leanhpo('sync-tracking', '--drop-dead')}",
        ]
    return lines


def closing_summary(
    study_dir: Path | str,
    invocation: Invocation | None = None,
    services: dict[str, str] | None = None,
) -> str:
    """The summary text, or "" when the study has no study report yet.

    `invocation` says how the user started the study, so that the "next:" commands reach the
    same study when pasted where they typed theirs (leanhpo.commands); `services` holds the
    config's `storage` and `tracking_uri` (with `${VAR}` password references), for the viewers."""
    study_dir = Path(study_dir)
    if not (study_dir / STUDY_REPORT).is_file():
        return ""
    invocation = invocation or Invocation()
    report = read_json(study_dir / STUDY_REPORT)
    trials = finished_reports(study_dir)
    metric = report["optimization_metric"]
    counts = report.get("trial_counts") or {}
    n_trials = report.get("n_trials", len(trials))
    best = report.get("best_trial") or {}
    best_trial = next((t for t in trials if t["slot"] == best.get("slot")), {})
    baseline = (best_trial.get("baseline") or {}).get("best")
    lines = [
        f"{PREFIX}  study {report['study_name']} done: {n_trials} trials "
        f"({', '.join(f'{n} {k}' for k, n in counts.items() if n)})",
        f"  best: {trial_label(best.get('slot', -1), n_trials)} (folder "
        f"{exported_folder(best)}): {metric} "
        f"{_score(report.get('best_validation_score'))} "
        f"on validation; best trivial baseline {baseline or 'n/a'} "
        f"{_score(report.get('baseline_validation_score'))}",
        f"    params: {_params(best_trial.get('params') or {})}",
        *(f"  {line}" for line in confirm_summary(report.get("confirm"))),
        *_test_lines(report),
        _disk_line(study_dir, trials),
        *_tracking_lines(study_dir, invocation),
        "  next:",
        *_next_lines(study_dir, invocation, services or {}),
    ]
    return "\n".join(lines)


def _next_lines(study_dir: Path, invocation: Invocation, services: dict[str, str]) -> list[str]:
    """Commands that run as printed, from where the user started the study."""
    lines = [
        f"    report        {invocation.snakemake('--report', 'report.html')}"
        "  (then open report.html)",
    ]
    tracking = services.get("tracking_uri", "")
    # MLflow 3.17 opens an experiment in its GenAI view unless the link asks for training runs.
    experiment = _experiment_id(study_dir)
    view = f"/#/experiments/{experiment}?workflowType=machine_learning" if experiment else ""
    if tracking.startswith(("http://", "https://")):
        lines.append(f"    MLflow UI     open {tracking.rstrip('/')}{view}")
    elif tracking:
        store = _from_start(tracking, invocation)
        lines.append(
            "    MLflow UI     "
            + join([executable("mlflow", invocation.cwd), "ui", "--backend-store-uri", store])
            + f" --host 127.0.0.1 --port 5000  (then open http://127.0.0.1:5000{view})"
        )
    storage = services.get("storage", "")
    if storage:
        dashboard = executable("optuna-dashboard", invocation.cwd)
        lines.append(
            f"    Optuna        {join([dashboard, _from_start(storage, invocation)])}"
            " --host 127.0.0.1 --port 8080"
        )
    lines += [
        f"    details       {invocation.path(study_dir / STUDY_REPORT)}",
        f"    summary       {invocation.leanhpo('summary')}",
    ]
    model = study_dir / BEST_MODEL
    if model.is_dir():
        predict = join(
            [
                executable("python", invocation.cwd),
                "-m",
                "leanhpo",
                "predict",
                "--model",
                invocation.path(model),
                "--input",
                "-",
            ]
        )
        lines += [
            f"    best model    {invocation.path(model)}",
            f"    predict       echo {EXAMPLE_POST!r} | {predict}",
        ]
    return lines


def _experiment_id(study_dir: Path) -> str | None:
    try:
        return str(read_json(study_dir / "study.json")["mlflow"]["experiment_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _from_start(url: str, invocation: Invocation) -> str:
    """A relative sqlite URL (relative to the study's working folder) as seen from where the
    user typed the command."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
        return prefix + invocation.path(Path(url[len(prefix) :]).absolute())
    return url
