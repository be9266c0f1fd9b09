"""MLflow with authentication (issue 9 part 5) and on PostgreSQL (part 1b), against a real
`mlflow server --app-name basic-auth` whose runs live in PostgreSQL: right credentials work, from
the environment or as a `${VAR}` reference in tracking.uri; wrong or missing ones stop the study
before any trial trains, with exit code 2 and a message naming the server, and are never spooled
as an outage; the password reaches no file, no Snakemake output and no MLflow param or tag."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from workflowhelper import job_env, snakemake_command

from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.tracking import SPOOL_FILE, Tracker, TrackingAuthError, open_tracker

USER = "leanhpo"
PASSWORD = "trk-" + secrets.token_hex(10)  # the writer's password on this module's server
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture(scope="module")
def mlflow_backend_store(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """This module's auth server keeps its runs in PostgreSQL (part 1b); SQLite on a machine
    without the PostgreSQL server binaries, so the authentication tests still run there."""
    try:
        cluster = request.getfixturevalue("postgres_cluster")
    except pytest.skip.Exception:
        yield None
        return
    database = cluster.create_database()
    yield database.url
    cluster.drop_database(database.name)


@pytest.fixture(scope="module")
def auth_server(mlflow_auth_server):
    mlflow_auth_server.create_user(USER, PASSWORD)
    return mlflow_auth_server


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Tracker given user:password moves them into os.environ (tracking.client_uri); undo
    that after each test, so the next one starts with no credentials."""
    for name in (*CREDENTIAL_ENV, "LEANHPO_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def _with_login(uri: str, password: str) -> str:
    return uri.replace("http://", f"http://{USER}:{password}@")


# --- the Tracker alone ---------------------------------------------------------------------


@pytest.mark.slow
def test_credentials_from_the_environment_log_and_read_metrics(auth_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    tracker = Tracker(auth_server.uri, "env-login", spool_path=tmp_path / SPOOL_FILE)
    run = tracker.find_or_create_run({"k": "v"}, "run")
    assert tracker.log_metrics_once(run, {"f1": 0.5}, step=1) == 1
    assert tracker.metric_history(run) == {"f1": [(1, 0.5)]}
    assert not (tmp_path / SPOOL_FILE).exists()


@pytest.mark.slow
def test_a_password_with_url_delimiters_works_as_an_env_reference(
    auth_server, monkeypatch, tmp_path
):
    """The variable holds the password as it is, as PGPASSWORD would; '@', '/', ':', '#', '?'
    in it must neither redirect the client to another host nor be taken for an outage."""
    password = "p@ss/w:rd#" + secrets.token_hex(4) + "?%41"
    auth_server.create_user("delimiters", password)
    monkeypatch.setenv("DELIMITED_PW", password)
    uri = auth_server.uri.replace("http://", "http://delimiters:${DELIMITED_PW}@")
    tracker = Tracker(uri, "delimiters", spool_path=tmp_path / SPOOL_FILE)
    run = tracker.find_or_create_run({"k": "v"}, "run")
    assert tracker.log_metrics_once(run, {"f1": 0.5}, step=1) == 1
    assert tracker.spool_stats()["online"] and not (tmp_path / SPOOL_FILE).exists()


@pytest.mark.slow
@pytest.mark.parametrize("login", ["wrong password", "no credentials"])
def test_refused_login_is_not_an_outage(auth_server, tmp_path, login):
    wrong = "bad-" + secrets.token_hex(8)
    uri = _with_login(auth_server.uri, wrong) if login == "wrong password" else auth_server.uri
    with pytest.raises(TrackingAuthError) as raised:
        Tracker(uri, "refused", spool_path=tmp_path / SPOOL_FILE)
    message = str(raised.value)
    assert auth_server.uri in message and "HTTP 401" in message
    assert wrong not in message and "MLFLOW_TRACKING_PASSWORD" in message
    expected = f"user {USER!r}" if login == "wrong password" else "without credentials"
    assert expected in message
    assert raised.value.exit_code == EXIT_BAD_INPUT
    assert not (tmp_path / SPOOL_FILE).exists()


@pytest.mark.slow
def test_a_user_without_write_permission_is_refused_not_spooled(auth_server, tmp_path):
    """Logged in, but the experiment belongs to someone else (READ for others): HTTP 403."""
    auth_server.request("/api/2.0/mlflow/experiments/create", {"name": "admins-only"})
    tracker = Tracker(
        _with_login(auth_server.uri, PASSWORD), "admins-only", spool_path=tmp_path / SPOOL_FILE
    )
    with pytest.raises(TrackingAuthError, match="HTTP 403") as raised:
        tracker.find_or_create_run({"k": "v"}, "run")
    assert "permission" in str(raised.value)
    assert not (tmp_path / SPOOL_FILE).exists()


@pytest.mark.slow
def test_tracking_straight_into_postgresql(postgres, tmp_path):
    """tracking.uri: postgresql+psycopg://... (MLflow's database store, no server)."""
    study_dir = tmp_path / "experiments" / "pg"
    tracker = open_tracker({"uri": postgres.url, "experiment": "pg"}, study_dir)
    run = tracker.find_or_create_run({"k": "v"}, "run")
    tracker.log_metrics_once(run, {"f1": 0.25, "loss": 1.0}, step=1)
    tracker.log_metrics_once(run, {"f1": 0.5, "loss": 1.0}, step=1)  # already there: skipped
    tracker.log_dict(run, {"k": 1}, "resolved_config.json")
    again = Tracker(postgres.url, "pg")
    assert again.find_run({"k": "v"}) == run
    assert again.metric_history(run) == {"f1": [(1, 0.25)], "loss": [(1, 1.0)]}
    assert list((tmp_path / "experiments" / "mlartifacts").rglob("resolved_config.json"))
    assert not (study_dir / SPOOL_FILE).exists()


# --- the real Snakefile ----------------------------------------------------------------------


def _snakemake(workdir: Path, uri: str, env: dict[str, str], n_trials: int) -> tuple[int, str]:
    """A tiny study; the overlay lies outside `workdir`, which must then hold no secret."""
    overlay = workdir.parent / f"{workdir.name}-{n_trials}.yaml"
    values = {
        "train": {"epochs": 1},
        "study": {"n_trials": n_trials},
        "tracking": {"uri": uri, "experiment": workdir.name},
    }
    overlay.write_text(yaml.safe_dump(values))
    command = [*snakemake_command(workdir, overlay), "--cores", "1"]
    env = job_env({k: v for k, v in env.items() if k not in CREDENTIAL_ENV})
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, check=False
    )
    return result.returncode, result.stdout + result.stderr


def _files(folder: Path) -> dict[str, str]:
    return {
        str(path): path.read_bytes().decode("utf-8", errors="replace")
        for path in folder.rglob("*")
        if path.is_file()
    }


def _leaks(workdir: Path, output: str, secret: str) -> list[str]:
    sinks = {"snakemake output": output, **_files(workdir)}
    return [sink for sink, text in sinks.items() if secret in text]


def _assert_stopped_before_training(
    workdir: Path, output: str, job: str, trial: Path, server: str
) -> None:
    """The job failed with exit code 2 and said why in its log, naming the server; the trial
    never trained and nothing was spooled."""
    assert "exit status 2" in output, output[-3000:]
    message = (workdir / "experiments" / "tiny" / job).read_text()
    assert f"MLflow at {server} refused" in message, message
    assert "MLFLOW_TRACKING_PASSWORD" in message, message
    assert [name for name, text in _files(trial).items() if "epoch_start" in text] == []
    assert not (trial / "state.json").exists() and not (trial / "checkpoints").exists()
    assert not list(workdir.rglob(SPOOL_FILE))  # never taken for an outage


@pytest.mark.slow
@pytest.mark.workflow
def test_study_logs_in_with_an_env_reference_then_a_wrong_password_stops_the_next_trial(
    auth_server, tmp_path
):
    """The password reaches the jobs as ${LEANHPO_TRACKING_PASSWORD}; the finished study is then
    grown with a wrong value of it: the new trial stops before it trains."""
    workdir = tmp_path / "work"
    uri = _with_login(auth_server.uri, "${LEANHPO_TRACKING_PASSWORD}")
    env = {**os.environ, "LEANHPO_TRACKING_PASSWORD": PASSWORD}
    code, output = _snakemake(workdir, uri, env, n_trials=1)
    assert code == 0, output[-5000:]

    tracker = Tracker(_with_login(auth_server.uri, PASSWORD), workdir.name)
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs)
    trial = next(run for run in runs if "mlflow.parentRunId" in run.data.tags)
    assert tracker.metric_history(trial.info.run_id)["val_criteria_f1_macro"][0][0] == 1
    assert len(_files(workdir)) > 20
    assert _leaks(workdir, output, PASSWORD) == []
    for run in runs:
        assert PASSWORD not in json.dumps([run.data.params, run.data.tags])
        # Every artifact file, the exported MLflow model's folder included.
        local = tracker.client.download_artifacts(
            run.info.run_id, "", str(tmp_path / run.info.run_id)
        )
        for path in Path(local).rglob("*"):
            if path.is_file():
                assert PASSWORD not in path.read_bytes().decode("utf-8", "replace"), path

    wrong = "bad-" + secrets.token_hex(8)
    env["LEANHPO_TRACKING_PASSWORD"] = wrong
    code, output = _snakemake(workdir, uri, env, n_trials=2)
    assert code == 2  # leanhpo's code for refused credentials, not Snakemake's 1
    trial_dir = workdir / "experiments" / "tiny" / "trial_0001"
    job_log = "trial_0001/logs/stdout.log"
    _assert_stopped_before_training(workdir, output, job_log, trial_dir, auth_server.uri)
    assert _leaks(workdir, output, wrong) == []


@pytest.mark.slow
@pytest.mark.workflow
@pytest.mark.parametrize("login", ["wrong password", "no credentials"])
def test_a_refused_login_stops_the_study_before_any_trial(auth_server, tmp_path, login):
    """A wrong password written straight into tracking.uri (the Snakefile moves it into the
    environment), or no credentials at all: create_study stops, no trial starts."""
    workdir = tmp_path / "work"
    wrong = "bad-" + secrets.token_hex(8)
    uri = _with_login(auth_server.uri, wrong) if login == "wrong password" else auth_server.uri
    code, output = _snakemake(workdir, uri, dict(os.environ), n_trials=1)
    assert code == 2  # leanhpo's code for refused credentials, not Snakemake's 1
    job_log = "logs/create_study.log"
    _assert_stopped_before_training(workdir, output, job_log, workdir, auth_server.uri)
    assert not list((workdir / "experiments" / "tiny").glob("trial_*"))
    assert _leaks(workdir, output, wrong) == []
