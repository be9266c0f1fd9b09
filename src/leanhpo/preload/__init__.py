"""A preloaded worker for trial jobs, so a trial does not pay ~9 s of imports each time.

The Snakemake driver starts one server per run (rules/hpo.smk's onstart, local executor only).
It imports torch, transformers, Optuna, MLflow and leanhpo once, then waits on a Unix socket.
A trial job's script (`client.run_job`) connects and hands over its stdin, stdout and stderr,
its working folder, environment, argv and the call to make. The server forks a child that
takes the job's place: it joins the job's process group, takes the job's threads and CPU
affinity, makes the call and exits with the call's status. The job waits for that status and
exits with it, so Snakemake sees the same job it would have run without the server.

Nothing is lost when a process dies:
- kill -9 of the job: the child sees its socket close and kills itself at once (SIGKILL,
  as if the kill had reached it). A group kill reaches it directly, since it joined the group.
- SIGTERM, SIGINT or SIGHUP to the job: forwarded to the child, which unwinds as a job would.
- the server dies: children keep running and report their status to the job themselves; a
  job whose child was killed too exits non-zero, and the rerun resumes the trial.
- the server cannot serve (not started, another interpreter, an environment that differs in
  a variable read at import time, a GPU job): the job runs in its own process, as before.

Split in two so the job's side stays light: `client` imports only the standard library.
"""

# The socket of the driver's server; set in the driver, inherited by its jobs.
PRELOAD_ENV = "LEANHPO_PRELOAD"
# Set in a forked child: the trial records that it ran in a preloaded worker.
PRELOADED_ENV = "LEANHPO_PRELOADED"
