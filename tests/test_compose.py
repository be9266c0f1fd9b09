"""The team stack of compose.yaml, brought up with podman-compose (docker compose where a Docker
engine answers): PostgreSQL, MLflow with basic auth, and the trainer running the tiny study
against both. Checked from the host over the services' own APIs, then taken down with its
volumes.

podman-compose comes from the package index: the one beside this Python or on PATH, else it is
installed once into a cache folder (pip --target), so the image's lock file stays as it is.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from services.container import PODMAN_LOCAL, REPO, build_image, find_engine
from services.mlflow_server import free_port

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

PODMAN_COMPOSE_VERSION = "1.6.0"
PODMAN_COMPOSE_CACHE = (
    Path(os.environ.get("LEANHPO_TEST_CACHE", Path.home() / ".cache" / "leanhpo-tests"))
    / f"podman-compose-{PODMAN_COMPOSE_VERSION}"
)
UP_TIMEOUT_S = 900  # builds the postgres image on the first run (apt, about 30 s)
STUDY_TIMEOUT_S = 900
DOWN_TIMEOUT_S = 180
STUDY = "tiny"
EXPERIMENT = "leanhpo"  # config.yaml's tracking.experiment
N_TRIALS = 3
PROJECT_LABEL = "com.docker.compose.project"


def _podman_compose() -> list[str]:
    beside = Path(sys.executable).with_name("podman-compose")
    if beside.exists():
        return [str(beside)]
    if shutil.which("podman-compose"):
        return ["podman-compose"]
    script = PODMAN_COMPOSE_CACHE / "podman_compose.py"
    if not script.exists():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(PODMAN_COMPOSE_CACHE), f"podman-compose=={PODMAN_COMPOSE_VERSION}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"cannot install podman-compose from the package index: {result.stderr}")
    # Its dependencies (python-dotenv, PyYAML) are in requirements.lock.
    return [sys.executable, str(script)]


@dataclass
class Stack:
    compose: list[str]  # e.g. [podman-compose, -p, NAME, -f, compose.yaml, -f, override]
    engine: list[str]
    env: dict[str, str]
    project: str
    pg_password: str
    pg_port: int
    mlflow_user: str
    mlflow_password: str
    mlflow_port: int
    logs: Path

    def run(self, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        with self.logs.open("a") as log:
            log.write(f"\n$ compose {' '.join(args)}\n")
            log.flush()
            result = subprocess.run(
                [*self.compose, *args], stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=REPO, timeout=timeout,
            )  # fmt: skip
        if check and result.returncode != 0:
            pytest.fail(f"compose {' '.join(args)} failed:\n{self.log_tail()}")
        return result

    def engine_output(self, *args: str) -> str:
        result = subprocess.run(
            [*self.engine, *args], capture_output=True, text=True, env=self.env, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def containers(self, service: str | None = None) -> list[str]:
        filters = ["--filter", f"label={PROJECT_LABEL}={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        return self.engine_output("ps", "-a", *filters, "--format", "{{.Names}}").split()

    def log_tail(self, chars: int = 6000) -> str:
        return self.logs.read_text(errors="replace")[-chars:]


def _engine_env(engine: str) -> dict[str, str]:
    env = dict(os.environ)
    if engine.startswith(str(PODMAN_LOCAL)):
        # What podman-local.sh exports: podman-compose calls plain podman.
        home = Path(os.environ.get("PODMAN_LOCAL_DIR", "/var/tmp/podman-local"))
        env["CONTAINERS_CONF"] = str(home / "containers.conf")
        env["CONTAINERS_STORAGE_CONF"] = str(home / "storage.conf")
    return env


def _test_overlay() -> dict:
    overlay = yaml.safe_load((REPO / "tests" / "config" / "tiny.yaml").read_text())
    overlay["evaluation"] = {"bootstrap_samples": 100}
    return overlay


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    engine = find_engine()
    image = build_image(engine)
    if engine == "docker":
        compose, engine_cmd = ["docker", "compose"], ["docker"]
    else:
        compose, engine_cmd = _podman_compose(), ["podman"]
    folder = tmp_path_factory.mktemp("compose")
    project = f"leanhpo-test-{secrets.token_hex(4)}"
    pg_password, mlflow_password = secrets.token_hex(12), secrets.token_hex(12)
    (folder / "env").write_text(
        f"LEANHPO_PG_PASSWORD={pg_password}\n"
        "MLFLOW_TRACKING_USERNAME=admin\n"
        f"MLFLOW_TRACKING_PASSWORD={mlflow_password}\n"
        f"MLFLOW_FLASK_SERVER_SECRET_KEY={secrets.token_hex(16)}\n"
    )
    config = folder / "config"
    config.mkdir()
    (config / "tiny.yaml").write_text(yaml.safe_dump(_test_overlay()))
    config.chmod(0o755)
    (config / "tiny.yaml").chmod(0o644)
    pg_port, mlflow_port = free_port(), free_port()
    override = {
        "services": {
            "postgres": {"ports": [f"127.0.0.1:{pg_port}:5432"]},
            "trainer": {
                "volumes": [f"{config}:/test-config:ro"],
                "environment": {"LEANHPO_EXTRA_OVERLAYS": "/test-config/tiny.yaml"},
            },
        }
    }
    (folder / "override.yaml").write_text(yaml.safe_dump(override))
    env = _engine_env(engine)
    env.update(
        LEANHPO_ENV_FILE=str(folder / "env"),
        LEANHPO_IMAGE=image.image,
        MLFLOW_PORT=str(mlflow_port),
    )
    files = ["-f", str(REPO / "compose.yaml"), "-f", str(folder / "override.yaml")]
    stack = Stack(
        compose=[*compose, "-p", project, *files],
        engine=engine_cmd,
        env=env,
        project=project,
        pg_password=pg_password,
        pg_port=pg_port,
        mlflow_user="admin",
        mlflow_password=mlflow_password,
        mlflow_port=mlflow_port,
        logs=folder / "compose.log",
    )
    try:
        stack.run("up", "-d", "--build", timeout=UP_TIMEOUT_S)
        yield stack
    finally:
        stack.run("down", "-v", timeout=DOWN_TIMEOUT_S, check=False)


def _wait_for_trainer(stack: Stack) -> int:
    names = stack.containers("trainer")
    assert len(names) == 1, f"trainer containers: {names}\n{stack.log_tail()}"
    deadline = time.monotonic() + STUDY_TIMEOUT_S
    while time.monotonic() < deadline:
        state = stack.engine_output(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", names[0]
        ).split()
        if state[0] == "exited":
            return int(state[1])
        time.sleep(3)
    pytest.fail(f"the trainer did not finish in {STUDY_TIMEOUT_S} s")


def _service_logs(stack: Stack) -> str:
    text = ""
    for service in ("postgres", "mlflow"):
        for name in stack.containers(service):
            result = subprocess.run(
                [*stack.engine, "logs", "--tail", "30", name],
                capture_output=True, text=True, env=stack.env, timeout=60,
            )  # fmt: skip
            text += f"--- {name}\n{result.stdout}{result.stderr}\n"
    return text + "--- trainer\n"


def test_tiny_study_runs_through_the_stack(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    started = time.monotonic()
    exit_code = _wait_for_trainer(stack)
    trainer_log = subprocess.run(
        [*stack.engine, "logs", stack.containers("trainer")[0]],
        capture_output=True, text=True, env=stack.env, timeout=60,
    )  # fmt: skip
    assert exit_code == 0, _service_logs(stack) + (trainer_log.stdout + trainer_log.stderr)[-6000:]
    print(f"trainer finished in {time.monotonic() - started:.0f} s after `up`")

    import optuna

    storage = f"postgresql+psycopg://hpo:{stack.pg_password}@127.0.0.1:{stack.pg_port}/optuna"
    study = optuna.load_study(study_name=STUDY, storage=storage)
    states = [trial.state for trial in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * N_TRIALS

    uri = f"http://127.0.0.1:{stack.mlflow_port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(
            f"{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}",
            timeout=30,
        )
    assert refused.value.code == 401

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.mlflow_user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.mlflow_password)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1 and len(children) == N_TRIALS
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert all(run.data.metrics for run in runs)


# Every process's command line in a container, as `ps` shows it to any local user.
COMMAND_LINES = (
    "import pathlib\n"
    "for f in pathlib.Path('/proc').glob('[0-9]*/cmdline'):\n"
    "    try: print(f.read_bytes().replace(b'\\0', b' ').decode(errors='replace'))\n"
    "    except OSError: pass\n"
)


def test_no_password_is_on_a_command_line(stack: Stack):
    """The MLflow backend URI holds the PostgreSQL password: it reaches the server through the
    environment (MLFLOW_BACKEND_STORE_URI), so no process of the running MLflow container shows
    it to `ps`, and no service's configured command holds a secret."""
    secrets_ = (stack.pg_password, stack.mlflow_password)
    (mlflow,) = stack.containers("mlflow")
    running = stack.engine_output("exec", mlflow, "python3", "-c", COMMAND_LINES)
    assert "mlflow server" in running, running
    configured = [
        stack.engine_output("inspect", "--format", "{{.Config.Cmd}}", name)
        for name in stack.containers()
    ]
    for text in (running, *configured):
        assert not any(secret in text for secret in secrets_), text


def test_the_stack_goes_down_cleanly(stack: Stack):
    stack.run("down", "-v", timeout=DOWN_TIMEOUT_S)
    assert stack.containers() == []
    volumes = stack.engine_output(
        "volume", "ls", "--filter", f"label={PROJECT_LABEL}={stack.project}", "--format",
        "{{.Name}}",
    )  # fmt: skip
    assert volumes.split() == []
