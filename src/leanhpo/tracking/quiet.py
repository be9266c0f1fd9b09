"""MLflow's own output silenced while a drain replays the spool, so that what leanhpo prints
(one line per run and a total) is what the user reads.

A replay of an outage's writes makes MLflow say a lot that is no news: urllib3's retry warnings
for each request that met the outage's end, Python warnings from the model logging, and one
tqdm progress bar per uploaded artifact. MLflow 3 reads MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
at each upload (mlflow.utils.file_utils), so setting it for the drain is enough.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
# Loggers that speak during a replay; errors still get through.
NOISY_LOGGERS = ("mlflow", "urllib3", "alembic", "sqlalchemy")


def _drop_warning(*args: object, **kwargs: object) -> None:
    return None


@contextmanager
def quiet_mlflow(*also: str) -> Iterator[None]:
    """MLflow's progress bars off, its (and urllib3's, and the loggers named in `also`) log
    records below ERROR dropped and Python warnings not shown, for the block; everything
    restored after."""
    loggers = [logging.getLogger(name) for name in (*NOISY_LOGGERS, *also)]
    levels = [logger.level for logger in loggers]
    before = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Modules imported in the block (torch, transformers) may put their own filters in
            # front of ours; nothing is shown whatever the filters say.
            warnings.showwarning = _drop_warning
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if before is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = before
