"""`python -m leanhpo ...`: every step of the workflow without Snakemake.

The Snakemake rules call the same functions; this entry point exists so a user can run or
debug one step (one trial, a prune, an evaluation) by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leanhpo import paths
from leanhpo.config import load_config_file
from leanhpo.exit_codes import EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_UNAVAILABLE, exit_code_for
from leanhpo.workflow import describe


def _study_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in ("study", "tracking")}


def _cmd_validate(config: dict[str, Any], args: argparse.Namespace) -> Any:
    """The checks the Snakefile runs before any job: the config's form (done by loading it),
    then the data files and the model it names."""
    from leanhpo.config import ConfigError
    from leanhpo.config.inputs import input_problems

    problems = input_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))
    return {"valid": True, "study": config["study"]["name"]}


def _cmd_prepare(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.data import prepare_dataset

    return prepare_dataset(config["data"], paths.data_dir(config["study"]["name"]))


def _cmd_lengths(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.config import Config
    from leanhpo.training.lengths import write_length_report

    data_dir = paths.data_dir(config["study"]["name"])
    return write_length_report(Config.from_dict({"model": config["model"]}), data_dir)


def _cmd_create(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.study.create import create_study

    return create_study(
        _study_config(config), paths.study_dir(config["study"]["name"]) / "study.json"
    )


def _cmd_trial(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.trial.job import run_trial_job
    from leanhpo.workflow import announce_n_trials

    announce_n_trials(config["study"]["n_trials"])
    name = config["study"]["name"]
    return run_trial_job(
        args.slot,
        config,
        paths.study_dir(name) / "study.json",
        paths.data_dir(name),
        paths.trial_report(name, args.slot),
    )


def _cmd_prune(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.study.prune import prune_study

    folder = paths.study_dir(config["study"]["name"])
    return prune_study(folder / "study.json", folder / "retention.json", config["retention"])


def _cmd_evaluate(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.study.evaluate import evaluate_study

    name = config["study"]["name"]
    folder = paths.study_dir(name)
    reports = sorted(folder.glob("trial_[0-9][0-9][0-9][0-9]/report.json"))
    plan, runs = _confirm_inputs(config, folder)
    return evaluate_study(
        folder / "study.json",
        paths.data_dir(name),
        reports,
        folder / "study_report.json",
        {**_study_config(config), "evaluation": config["evaluation"]},
        plan_path=plan,
        confirm_paths=runs,
    )


def _confirm_inputs(config: dict[str, Any], folder: Path) -> tuple[Path | None, list[Path]]:
    """study.confirm's plan and runs, as the workflow's evaluation reads them; an error naming
    what is missing when the study has not run them yet."""
    from leanhpo.fsutil import read_json
    from leanhpo.study.confirm import ConfirmSourceError, confirm_targets

    confirm = config["study"]["confirm"]
    if not confirm["top_k"]:
        return None, []
    plan = folder / paths.confirm_plan(confirm["top_k"])
    targets = (
        [Path(p) for p in confirm_targets(str(folder), read_json(plan), confirm["seeds"])]
        if plan.is_file()
        else []
    )
    missing = [str(p) for p in targets if not p.is_file()] or (
        [] if plan.is_file() else [str(plan)]
    )
    if missing:
        raise ConfirmSourceError(
            f"study.confirm {confirm} has not finished: {', '.join(missing)} "
            "missing; run the workflow (it trains the confirm runs), or set study.confirm.top_k: 0"
        )
    return plan, targets


def _cmd_export(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.study.export import export_best_model

    folder = paths.study_dir(config["study"]["name"])
    return export_best_model(
        folder,
        folder / "study_report.json",
        args.out or folder / "best_model",
        config=_study_config(config),
    )


def _cmd_predict(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.export.formats import read_posts, write_predictions

    # All of the input is checked before torch even loads: bad input fails at once.
    posts = read_posts(args.input, args.format)
    from leanhpo.export import iter_predictions, load_exported
    from leanhpo.export.precision import PrecisionWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PrecisionWarning)
        model = load_exported(args.model, args.device, args.precision)
    for warning in caught:  # one plain line each, not Python's file:line form
        if issubclass(warning.category, PrecisionWarning):
            print(f"leanhpo: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    chunks = iter_predictions(model, posts.texts, posts.post_ids, batch_size=args.batch_size)
    return {"posts": write_predictions(chunks, args.output), "output": args.output}


def _cmd_cleanup(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.study.cleanup import cleanup

    study = config["study"]
    return cleanup(
        paths.study_dir(study["name"]),
        config["retention"],
        study["metric"],
        study["n_trials"],
        args.apply,
        args.strip,
    )


def _cmd_sync_tracking(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.logs import mask_secrets
    from leanhpo.study.publish import has_export, publish_model
    from leanhpo.study.sync import drain_spool
    from leanhpo.tracking import open_tracker
    from leanhpo.tracking.quiet import quiet_mlflow

    folder = paths.study_dir(config["study"]["name"])
    if args.show_dead or args.drop_dead:
        tracker = open_tracker(config["tracking"], folder)
        if args.show_dead:
            return {"dead_letters": tracker.dead_letters()}
        return {"dropped": tracker.drop_dead()}
    # Every host's spool file: run by hand, best once the other hosts' jobs have ended.
    result = drain_spool(folder, config["tracking"], every_host=True, retry_dead=args.retry_dead)
    result["uri"] = mask_secrets(config["tracking"]["uri"])
    if has_export(folder):  # the MLflow model an outage kept from the export step
        with quiet_mlflow():
            result["model"] = publish_model(folder, folder / "best_model", config["tracking"])
    return result


def _cmd_summary(config: dict[str, Any], args: argparse.Namespace) -> Any:
    from leanhpo.commands import Invocation
    from leanhpo.summary import closing_summary
    from leanhpo.urls import shareable

    folder = paths.study_dir(config["study"]["name"])
    files = [Path(f) for f in [*(args.config or []), *(getattr(args, "configfile", None) or [])]]
    invocation = Invocation.here(files)
    services = {
        "storage": shareable(config["study"]["storage"]),
        "tracking_uri": shareable(config["tracking"]["uri"]),
    }
    summary = closing_summary(folder, invocation, services)
    return summary or f"leanhpo: {folder} has no study report yet"


COMMANDS = {
    "validate-config": (_cmd_validate, "check config.yaml (and overlays) and exit"),
    "prepare-data": (_cmd_prepare, "write the prepared splits and data_report.json"),
    "length-report": (
        _cmd_lengths,
        "count long posts and the evidence each input mode reaches (data/length_report.json)",
    ),
    "create-study": (_cmd_create, "create or load the Optuna study and write study.json"),
    "run-trial": (_cmd_trial, "run (or resume) one trial slot"),
    "prune-study": (_cmd_prune, "enforce study-wide retention and write retention.json"),
    "evaluate": (_cmd_evaluate, "evaluate the best trial on the test split"),
    "export": (_cmd_export, "export the evaluated best model to experiments/<study>/best_model"),
    "predict": (
        _cmd_predict,
        "predict symptoms and evidence for posts with an exported model (JSON Lines out)",
    ),
    "sync-tracking": (
        _cmd_sync_tracking,
        "replay the MLflow writes buffered during an outage (exit 69 while MLflow is down, 75 "
        "while another process replays them); settle dead letters (--show-dead, ...)",
    ),
    "summary": (
        _cmd_summary,
        "the closing summary: best trial, scores against baselines, disk, where to look next",
    ),
    "cleanup": (
        _cmd_cleanup,
        "list (or --apply: remove) checkpoints, temp folders and logs no trial references",
    ),
}


# Commands that read no config.yaml: they work on a copied export anywhere.
CONFIG_FREE = ("predict",)


def _predict_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--model", required=True, help="an exported model folder (best_model/)")
    cmd.add_argument("--input", required=True, help="CSV, JSON Lines or text file; - for stdin")
    cmd.add_argument("--output", default="-", help="JSON Lines file to write (default -: stdout)")
    cmd.add_argument(
        "--format",
        choices=("csv", "jsonl", "text"),
        help="input format (default: from the extension; stdin and others are text)",
    )
    cmd.add_argument(
        "--batch-size",
        type=int,
        help="posts per batch (default: the study's eval_batch_size, which reproduces its scores)",
    )
    cmd.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cmd.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto (default): the precision the model's test scores were computed in "
        "(leanhpo_model.json compute.precision), which reproduces them; another one warns",
    )


def _dead_letter_arguments(cmd: argparse.ArgumentParser) -> None:
    dead = cmd.add_mutually_exclusive_group()
    dead.add_argument(
        "--show-dead",
        action="store_true",
        help="list the entries MLflow refused for good (dead letters) and exit",
    )
    dead.add_argument(
        "--retry-dead",
        action="store_true",
        help="put the dead letters back in the spool, in their original order, then replay",
    )
    dead.add_argument("--drop-dead", action="store_true", help="delete the dead letters")


def _print_dead_letters(result: dict[str, Any]) -> None:
    total = 0
    for path, dead in result["dead_letters"]:
        print(f"{path}:")
        for entry in dead:
            print(f"  {entry.seq:>6}  {entry.run_ref}  {entry.kind:<7}  {entry.summary()}")
            print(f"          error: {entry.error}")
        total += len(dead)
    print(f"{total} dead MLflow entries")


def _sync_tracking_exit(result: dict[str, Any]) -> int:
    from leanhpo.study.sync import run_lines

    if result["retried"] is not None:
        print(f"put {result['retried']} dead MLflow entries back in the spool")
    if result["runs"]:
        print("\n".join(run_lines(result["runs"])))
    if not result["online"]:
        print(f"MLflow at {result['uri']} did not answer")
    print(f"replayed {result['replayed']} MLflow entries; {result['pending']} remain")
    if result["dead"]:
        print(
            f"{result['dead']} MLflow entries were refused for good (dead letters): list them "
            "with --show-dead, then --retry-dead or --drop-dead"
        )
    model = result.get("model")
    if model is not None:
        print(f"MLflow model: {model['status']} ({model['model_uri'] or model['reason']})")
    if result["busy"] is not None:
        print(f"leanhpo: busy: another process is draining {result['busy']}", file=sys.stderr)
        return EXIT_LOCKED  # not an outage: rerun once that drain is done
    if result["pending"] or (model is not None and model["status"] == "pending"):
        return EXIT_UNAVAILABLE  # MLflow is still down: rerun later
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leanhpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text)
        if name in CONFIG_FREE:
            _predict_arguments(cmd)
            continue
        cmd.add_argument(
            "--config",
            action="append",
            type=Path,
            default=None,
            help="config file; repeat to overlay (later files win), default config.yaml",
        )
        cmd.add_argument(
            "--configfile",
            nargs="+",
            action="extend",
            type=Path,
            default=None,
            metavar="FILE",
            help="overlays as `snakemake --configfile a.yaml b.yaml` takes them: merged in order "
            "over config.yaml (or over the --config files)",
        )
        if name == "run-trial":
            cmd.add_argument("--slot", type=int, required=True, help="trial slot number (0-based)")
        if name == "cleanup":
            cmd.add_argument("--apply", action="store_true", help="delete (default: only list)")
            cmd.add_argument(
                "--strip",
                action="store_true",
                help="also strip the optimizer state of finished trials' checkpoints (weights only)",
            )
        if name == "sync-tracking":
            _dead_letter_arguments(cmd)
        if name == "export":
            cmd.add_argument(
                "--out", type=Path, help="folder to write (default experiments/<study>/best_model)"
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler, _ = COMMANDS[args.command]
    # As in Snakemake, --configfile overlays the base config (the Snakefile's config.yaml).
    base = [] if args.command in CONFIG_FREE else args.config or [Path("config.yaml")]
    paths_given = base + (getattr(args, "configfile", None) or [])
    missing = [str(p) for p in paths_given if not Path(p).is_file()]
    if missing:
        print(f"leanhpo: config file not found: {', '.join(missing)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = handler(load_config_file(*paths_given) if paths_given else {}, args)
    except Exception as error:
        code = exit_code_for(error)
        if code is None:
            raise
        print(describe(error), file=sys.stderr)
        return code
    if args.command == "validate-config":
        print(json.dumps(result))
    elif args.command in ("cleanup", "summary"):
        print(result["summary"] if args.command == "cleanup" else result)
    elif args.command == "export":
        print(f"exported the best model to {result['path']} ({result['bytes']:,} bytes)")
        model = result["mlflow"]
        print(f"MLflow model: {model['status']} ({model['model_uri'] or model['reason']})")
    elif args.command == "predict":
        where = "stdout" if result["output"] == "-" else result["output"]
        print(f"leanhpo: wrote {result['posts']} predictions to {where}", file=sys.stderr)
    elif args.command == "sync-tracking":
        if "dead_letters" in result:
            _print_dead_letters(result)
        elif "dropped" in result:
            print(f"dropped {result['dropped']} dead MLflow entries")
        else:
            return _sync_tracking_exit(result)
    return 0
