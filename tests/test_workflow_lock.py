"""Stale Snakemake locks are removed only when no other instance of the workflow is alive."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from leanhpo import workflow


@pytest.fixture(autouse=True)
def _release():
    workflow.release()
    yield
    workflow.release()


def _stale_locks(tmp_path):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    for name in ("0.input.lock", "0.output.lock"):
        (locks / name).write_text("experiments/x/study.json\n")
    return locks


def test_stale_locks_are_removed_when_no_instance_is_alive(tmp_path):
    locks = _stale_locks(tmp_path)
    removed = workflow.recover_stale_locks(tmp_path)
    assert sorted(p.name for p in removed) == ["0.input.lock", "0.output.lock"]
    assert not list(locks.glob("*.lock"))


def test_locks_of_a_live_instance_are_kept(tmp_path):
    locks = _stale_locks(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from leanhpo import workflow
                workflow.recover_stale_locks(Path({str(tmp_path)!r}))
                (Path({str(locks)!r}) / "0.input.lock").write_text("live\\n")
                print("ready", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert workflow.recover_stale_locks(tmp_path) == []
        assert (locks / "0.input.lock").read_text() == "live\n"
    finally:
        holder.kill()
        holder.wait()
    # the holder died (as with kill -9): now its locks are stale and get removed
    assert workflow.recover_stale_locks(tmp_path)
    assert not list(locks.glob("*.lock"))


def test_output_to_captures_file_descriptors(tmp_path):
    import os

    log = tmp_path / "logs" / "job.log"
    with workflow.output_to(log):
        print("from python")
        os.system("echo from a subprocess")
    text = log.read_text()
    assert "from python" in text and "from a subprocess" in text


def test_canonical_sorts_keys_but_keeps_the_search_space_order():
    value = {
        "b": 1,
        "a": {"d": 2, "c": 3},
        "search_space": {"z": {"type": "float", "low": 0}, "y": {}},
    }
    result = workflow.canonical(value)
    assert list(result) == ["a", "b", "search_space"]
    assert list(result["a"]) == ["c", "d"]
    assert list(result["search_space"]) == ["z", "y"]
    assert list(result["search_space"]["z"]) == ["low", "type"]


def test_job_turns_known_stops_into_exit_codes_and_readable_logs(tmp_path):
    from leanhpo.config import ConfigError
    from leanhpo.exit_codes import EXIT_BAD_INPUT, EXIT_NO_SPACE
    from leanhpo.storage.preflight import NoSpaceError

    payload = {
        "reason": "the disk lacks 5 bytes",
        "disk": {"path": "/x", "total": 10, "used": 9, "free": 1, "free_percent": 10.0},
        "needed_bytes": 6,
        "study_checkpoint_bytes": 0,
        "max_total_size": "10GB",
        "steps_taken": [],
        "largest_artifacts": [{"path": "/x/big", "bytes": 9}],
        "fixes": ["python -m leanhpo cleanup"],
    }
    log = tmp_path / "job.log"
    for error, code in (
        (NoSpaceError(payload), EXIT_NO_SPACE),
        (ConfigError("config key 'a': bad"), EXIT_BAD_INPUT),
    ):
        with pytest.raises(SystemExit) as info, workflow.job(log):
            raise error
        assert info.value.code == code
    text = log.read_text()
    assert "not enough space for the next checkpoint" in text and "/x/big" in text
    assert "config key 'a': bad" in text and "Traceback" not in text
    with pytest.raises(RuntimeError), workflow.job(log):
        raise RuntimeError("a real crash")
    assert "Traceback" in log.read_text()  # crashes keep their traceback


def test_a_job_freezes_the_heap_at_exit_so_the_shutdown_skips_a_full_collection(tmp_path):
    """Issue 11's overhead cut: 1.8 s of every trial job's exit was the final garbage
    collection. A handler registered before the job runs after its gc.freeze (atexit is LIFO)."""
    code = (
        "import atexit, gc, os\n"
        "atexit.register(lambda: os.write(1, b'frozen=%d' % gc.get_freeze_count()))\n"
        "from leanhpo.workflow import job\n"
        f"with job({str(tmp_path / 'job.log')!r}):\n"
        "    pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("frozen=") and int(result.stdout.split("=")[1]) > 0
