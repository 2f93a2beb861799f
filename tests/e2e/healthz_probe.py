"""Probe a server's /healthz until stdin closes, then print every latency and status as one line of JSON.

Run as a process of its own (`python -m tests.e2e.healthz_probe BASE_URL`) so that what it times is the server's
answer, not the test process's pauses: after a thousand tests pytest's process tracks about a million objects, and
one full garbage collection there took 0.64 s during the concurrency mix (measured with `gc.callbacks`), long
enough to read as a slow /healthz when it fell inside a timed request. This process imports httpx only.
"""

import json
import sys
import threading
import time

import httpx

INTERVAL_S = 0.05


def probe(base_url: str, done: threading.Event) -> dict[str, list]:
    latencies: list[float] = []
    statuses: list[int] = []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        print("probing", flush=True)  # the test starts its mix once it reads this line
        while not done.is_set():
            started = time.monotonic()
            try:
                statuses.append(client.get("/healthz").status_code)
            except httpx.HTTPError:
                statuses.append(0)
            latencies.append(time.monotonic() - started)
            time.sleep(INTERVAL_S)
    return {"latencies_s": latencies, "statuses": statuses}


def main() -> None:
    done = threading.Event()
    # The test closes our stdin to stop the probe.
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print(json.dumps(probe(sys.argv[1], done)), flush=True)


if __name__ == "__main__":
    main()
