"""Defects a new user met in the first hour (issue 24, part 7), each where it can fail: the YAML
1.1 number trap, `--configfile a b`, a trial before its study, the data folder in git and in the
image, the docs, an empty CSV, and the progress bar of predict_texts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_config_dict

from leanhpo.cli import main
from leanhpo.config import Config, ConfigError, load_config_file
from leanhpo.data import DataError, load_redsm5
from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.export import ExportError, load_exported, predict_texts, read_posts, write_export
from leanhpo.metric_names import SYMPTOMS
from leanhpo.workflow import N_TRIALS_ENV


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder like a fresh clone, as far as the CLI reads it: config.yaml, no experiments."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(N_TRIALS_ENV, "0")  # run-trial announces n_trials; undone afterwards
    return tmp_path


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# 1. `learning_rate: 5e-5` is text to PyYAML: say how YAML wants it, and where.
def test_an_exponent_without_a_dot_is_refused_with_the_yaml_spelling(tmp_path: Path) -> None:
    overlay = _write_yaml(
        tmp_path / "overlay.yaml",
        "train:\n  learning_rate: 5e-5\n  epochs: 1e1\n"
        "search_space:\n  learning_rate: {type: float, low: 1e-5, high: 1.0e-4, log: true}\n",
    )
    assert yaml.safe_load(overlay.read_text())["train"]["learning_rate"] == "5e-5"  # the trap
    with pytest.raises(ConfigError) as caught:
        load_config_file(REPO / "config.yaml", overlay)
    lines = str(caught.value).splitlines()
    assert any("'train.learning_rate'" in line and "write 5.0e-5" in line for line in lines)
    assert any(
        "'search_space.learning_rate.low'" in line and "write 1.0e-5" in line for line in lines
    )
    assert any("'train.epochs'" in line and "write 10" in line for line in lines)
    assert "a dot in the number and a sign on the exponent" in str(caught.value)


def test_text_that_is_no_yaml_number_gets_no_spelling_hint(tmp_path: Path) -> None:
    overlay = _write_yaml(tmp_path / "overlay.yaml", "train:\n  learning_rate: fast\n")
    with pytest.raises(ConfigError) as caught:
        load_config_file(REPO / "config.yaml", overlay)
    assert "'train.learning_rate'" in str(caught.value) and "write" not in str(caught.value)


# 2. Overlays as Snakemake takes them: several after one --configfile, over config.yaml.
def test_configfile_takes_several_overlays_in_order_over_config_yaml(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = yaml.safe_load((project / "config.yaml").read_text())
    base["study"]["name"] = "from-config-yaml"
    _write_yaml(project / "config.yaml", yaml.safe_dump(base, sort_keys=False))
    first = _write_yaml(project / "a.yaml", "study: {name: first}\n")
    second = _write_yaml(project / "b.yaml", "study: {name: second}\n")
    trials = _write_yaml(project / "c.yaml", "study: {n_trials: 7}\n")
    runs = {
        ("--configfile", "a.yaml", "b.yaml"): "second",
        ("--configfile", "b.yaml", "a.yaml"): "first",
        ("--configfile", "c.yaml"): "from-config-yaml",  # config.yaml is the base
        ("--config", str(first), "--config", str(second)): "second",  # the old form
        ("--config", str(first), "--configfile", str(trials)): "first",  # --config: the base
    }
    for args, name in runs.items():
        assert main(["validate-config", *args]) == 0, args
        assert f'"study": "{name}"' in capsys.readouterr().out, args
    assert main(["validate-config", "--configfile", "a.yaml", "missing.yaml"]) == EXIT_BAD_INPUT
    assert "missing.yaml" in capsys.readouterr().err


# 3. A trial before its data or its study: the step to run first, exit 2, nothing written.
def test_run_trial_before_prepare_data_or_create_study_names_the_step(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run-trial", "--slot", "0"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "data_report.json" in err and "python -m leanhpo prepare-data" in err
    assert "Traceback" not in err

    assert main(["prepare-data"]) == 0
    capsys.readouterr()
    assert main(["run-trial", "--slot", "0"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "experiments/demo/study.json does not exist" in err and "'demo'" in err
    assert "python -m leanhpo create-study" in err and "Traceback" not in err
    assert not (project / "experiments" / "demo" / "trial_0000").exists()
    assert main(["prune-study"]) == EXIT_BAD_INPUT  # the other by-hand steps say the same
    assert "python -m leanhpo create-study" in capsys.readouterr().err


# 4. The real CSVs (README: data/redsm5/) stay out of git and out of the image; the package's
# own data/ does not.
@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_the_data_folder_is_ignored_by_git_but_not_the_package_data() -> None:
    def ignored(path: str) -> bool:
        # --no-index: the patterns alone, whether or not the path is tracked
        done = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, check=False
        )
        assert done.returncode in (0, 1), done
        return done.returncode == 0

    assert ignored("data/") and ignored("data/redsm5/redsm5_posts.csv")
    package_data = sorted((REPO / "src" / "leanhpo" / "data").glob("*.py"))
    assert package_data
    for path in package_data:
        assert not ignored(str(path.relative_to(REPO))), path


def test_the_data_folder_stays_out_of_the_image_but_not_the_package_data(tmp_path: Path) -> None:
    from docker.utils.build import exclude_paths  # Docker's own .dockerignore rules

    context = tmp_path / "context"
    for name in ("data/redsm5/redsm5_posts.csv", "src/leanhpo/data/prepare.py", "Dockerfile"):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text("x")
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sent = exclude_paths(str(context), patterns)
    assert "src/leanhpo/data/prepare.py" in sent
    assert not [path for path in sent if path.startswith("data")]


# 8. Every page of docs/ is linked from the README; the docs use the default study's paths.
def test_the_readme_links_every_page_of_docs() -> None:
    readme = (REPO / "README.md").read_text()
    links = set(re.findall(r"\]\((docs/[^)#\s]+)", readme))
    for link in links:
        assert (REPO / link).exists(), link
    pages = {f"docs/{page.name}" for page in (REPO / "docs").glob("*.md")}
    assert pages <= links, sorted(pages - links)


def test_using_the_model_runs_on_the_default_study() -> None:
    page = (REPO / "docs" / "using-the-model.md").read_text()
    name = yaml.safe_load((REPO / "config.yaml").read_text())["study"]["name"]
    assert "experiments/tiny" not in page and f"experiments/{name}/best_model" in page


# 10. An empty CSV is called empty, named, and what it should hold is said.
def test_an_empty_redsm5_csv_is_called_empty(tmp_path: Path) -> None:
    posts, annotations = tmp_path / "redsm5_posts.csv", tmp_path / "redsm5_annotations.csv"
    posts.write_bytes(b"")
    annotations.write_text("post_id,sentence_id,sentence_text,DSM5_symptom,status,explanation\n")
    with pytest.raises(DataError) as caught:
        load_redsm5(posts, annotations)
    message = str(caught.value)
    assert f"{posts}, but it is empty (0 bytes)" in message
    assert "header row post_id,text and one row per post" in message
    assert "header" not in message.split("empty")[0]


@pytest.mark.parametrize(("suffix", "content"), [(".csv", "`text` column"), (".jsonl", "JSON")])
def test_an_empty_predict_input_is_called_empty(tmp_path: Path, suffix: str, content: str) -> None:
    empty = tmp_path / f"posts{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(ExportError) as caught:
        read_posts(str(empty))
    message = str(caught.value)
    assert message.startswith(f"{empty} is empty (0 bytes)") and content in message
    assert "header is" not in message


# 9. predict_texts shows no progress bar unless asked (progress=False is its default).
def test_predict_texts_is_quiet_by_default(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from leanhpo.training.setup import build_network

    config = Config.from_dict(tiny_config_dict(tmp_path, model={"max_answer_tokens": 32}))
    info = {"config": config.to_dict(), "decision_threshold": 0.5, "null_threshold": 0.0}
    write_export(build_network(config, seed=3), info, "card", tmp_path / "model")
    model = load_exported(tmp_path / "model", "cpu")
    texts = ["I can't sleep.", "Nothing is fun any more."]
    capfd.readouterr()
    rows = predict_texts(model, texts)
    assert len(rows) == 2 and set(rows[0]["symptoms"]) == set(SYMPTOMS)
    assert capfd.readouterr().err == ""
    predict_texts(model, texts, progress=True)
    assert "predict" in capfd.readouterr().err
