"""CPU use of the disk monitor (SPEC: under 0.1% of a core).

    .venv/bin/python bench/monitor_cpu.py [--seconds 600] [--interval 30]

Runs DiskMonitor alone in this process for the given time (the main thread sleeps) and reports
the process CPU time it used as a share of the wall time, measured with psutil. It also times
one check (a single statvfs), which is what runs before every checkpoint save.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import benchenv
import psutil

from leanhpo.storage.disk import MONITOR_INTERVAL_S, DiskMonitor, disk_usage


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=MONITOR_INTERVAL_S)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    env = benchenv.environment()
    process = psutil.Process()
    with tempfile.TemporaryDirectory() as folder:
        checks = 2000
        start = time.perf_counter()
        for _ in range(checks):
            disk_usage(Path(folder))
        per_check = (time.perf_counter() - start) / checks
        cpu_before = sum(process.cpu_times()[:2])
        wall_before = time.monotonic()
        with DiskMonitor(Path(folder), min_free_percent=10, interval=args.interval) as monitor:
            time.sleep(args.seconds)
        wall = time.monotonic() - wall_before
        cpu = sum(process.cpu_times()[:2]) - cpu_before
    result = {
        "environment": env,
        "seconds": wall,
        "interval": args.interval,
        "samples": monitor.samples,
        "cpu_seconds": cpu,
        "cpu_percent_of_one_core": 100 * cpu / wall,
        "one_check_ms": 1000 * per_check,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "monitor_cpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
