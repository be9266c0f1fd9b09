"""Wait until each service answers: host:port (a TCP connect) or an http(s) URL (any reply
below 500). For the trainer of compose.yaml, where depends_on conditions are not enforced
(podman < 4.6). Exits 1 after WAIT_FOR_TIMEOUT_S seconds (default 300)."""

import os
import socket
import sys
import time
import urllib.error
import urllib.request


def answers(target: str) -> bool:
    try:
        if target.startswith(("http://", "https://")):
            with urllib.request.urlopen(target, timeout=3):
                return True
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=3):
            return True
    except urllib.error.HTTPError as error:
        return error.code < 500
    except OSError:
        return False


deadline = time.monotonic() + float(os.environ.get("WAIT_FOR_TIMEOUT_S", "300"))
for target in sys.argv[1:]:
    while not answers(target):
        if time.monotonic() > deadline:
            sys.exit(f"wait_for: {target} did not answer in time")
        time.sleep(1)
    print(f"wait_for: {target} answers", flush=True)
