"""`make demo`: start Lethe in its embedded default, run a real forget request on SmolLM2, print the evidence.

The request: fine-tune SmolLM2-135M-Instruct on PIQA rows (the seed paper's protocol: the model first learns
the task), forget them with random labels, and measure forget-train, forget-heldout (same task, unseen) and a
retain task (ARC-Easy) at every stage, plus per-layer linear probes before and after forgetting.

`python examples/demo.py --audit` also audits the adapter with every recovery attack (a few more minutes) and
prints each attack's recovery rate with its interval, the excess over the never-learned control, the verdict
(with its reason when inconclusive), and where the signed report is.
"""

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
FORGET_FILE, RETAIN_FILE = DATA / "piqa_demo.jsonl", DATA / "arc_easy_demo.jsonl"

REQUEST = json.loads((ROOT / "examples" / "demo_request.json").read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(base_url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit("lethe serve exited early; see its log")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    sys.exit(f"lethe serve did not become healthy in {timeout_s}s")


def upload(client: httpx.Client, path: Path, name: str) -> dict:
    with path.open("rb") as handle:
        response = client.post(
            "/v1/datasets", files={"file": (path.name, handle)}, data={"name": name, "kind": "choice"}
        )
    response.raise_for_status()
    return response.json()


def follow(client: httpx.Client, job_id: str) -> dict:
    last = None
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        line = f"  {job['status']:<9} {job['stage']:<11} {job['progress'] * 100:5.1f}%"
        if line != last:
            print(line, flush=True)
            last = line
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(2)


def print_tables(job: dict) -> None:
    stages = [s for s in ("base", "finetuned", "forgotten") if any(m["stage"] == s for m in job["metrics"])]
    table: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    probes: dict[int, dict[str, float]] = defaultdict(dict)
    for m in job["metrics"]:
        if m["name"] == "probe_accuracy":
            probes[m["layer"]][m["stage"]] = m["value"]
        else:
            table[(m["split"], m["name"])][m["stage"]] = m

    def cell(m: dict | None) -> str:
        if m is None:
            return f"{'':>22}"
        interval = f" [{m['ci_low']:.2f},{m['ci_high']:.2f}]" if m["ci_low"] is not None else ""
        return f"{m['value']:>8.3f}{interval:<14}"

    print("\neach value with its 95% interval (GET /v1/metrics says which kind)")
    print(f"\n{'split':<28}{'metric':<20}" + "".join(f"{s:>8}{'':<14}" for s in stages))
    for (split, name), values in sorted(table.items()):
        print(f"{split:<28}{name:<20}" + "".join(cell(values.get(s)) for s in stages))
    curves: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for point in job["curves"]:
        curves[(point["split"], point["name"])].append((point["step"], point["value"]))
    if curves:
        print("\nduring forgetting (by optimiser step)")
        for (split, name), points in sorted(curves.items()):
            print(f"  {split} {name}: " + ", ".join(f"step {s}: {v:.3f}" for s, v in points))
    if job["forgetting"] is not None:
        print("\n" + job["forgetting"]["summary"])
    if probes:
        probe_stages = sorted({s for v in probes.values() for s in v}, key=stages.index)
        print("\nlinear probe accuracy on forget_heldout (layer 0 = embeddings)")
        print(f"{'layer':<8}" + "".join(f"{s:>12}" for s in probe_stages))
        for layer in sorted(probes):
            print(f"{layer:<8}" + "".join(f"{probes[layer].get(s, float('nan')):>12.3f}" for s in probe_stages))


def print_audit(audit: dict) -> None:
    reasons = ", ".join(audit["verdict_reasons"])
    print(
        f"\naudit {audit['id']}: verdict {audit['verdict']}"
        + (f" (inconclusive attacks: {reasons})" if reasons else "")
    )
    header = f"{'attack':<12}{'split':<16}{'n':>4}{'before':>8}{'after':>8}{'attacked':>10}{'recovery [95% CI]':>22}"
    print(header + f"{'excess over control':>24}  verdict (worst variant)")

    def shown(value: float | None, low: float | None, high: float | None) -> str:
        if value is None:
            return "—"
        return f"{value:.2f}" + ("" if low is None or high is None else f" [{low:.2f}, {high:.2f}]")

    for r in audit["results"]:
        rate = r["recovery"] if r["effect"] == "recovery" else r["excess_drop"]
        verdict = r["verdict"] + (f": {r['inconclusive_reason']}" if r["inconclusive_reason"] else "")
        excess = shown(r["excess_recovery"], r["excess_ci_low"], r["excess_ci_high"])
        print(
            f"{r['attack']:<12}{r['split']:<16}{r['n'] or 0:>4}{r['before']:>8.3f}{r['after_forgetting']:>8.3f}"
            f"{r['after_attack']:>10.3f}{shown(rate, r['ci_low'], r['ci_high']):>22}"
            f"{excess:>24}  {verdict} ({r['worst_variant']})"
        )
    for skipped in audit["skipped"]:
        print(f"{skipped['name']:<12}skipped: {skipped['reason']}")
    for diagnostic in audit.get("diagnostics", []):
        # Never judged: where forgetting changed the LM (the adapter itself can be removed outright).
        print(f"\ndiagnostic {diagnostic['name']} on {diagnostic['split']}: KRS by component, window of layers")
        for v in diagnostic["variants"]:
            krs = "—" if v["krs"] is None else f"{v['krs']:.2f}"
            interval = "" if v["ci_low"] is None else f"  [{v['ci_low']:.2f}, {v['ci_high']:.2f}]"
            print(f"  {v['component']:<18}{v['first_layer']:>3}-{v['last_layer']:<4}{krs:>7}{interval}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audit", action="store_true", help="also audit the adapter with every recovery attack")
    args = parser.parse_args()
    started = time.monotonic()
    key = "lethe_demo_" + secrets.token_urlsafe(24)
    port = int(os.environ.get("LETHE_DEMO_PORT", free_port()))
    env = {**os.environ, "LETHE_BOOTSTRAP_API_KEY": key}
    env.setdefault("LETHE_DATA_DIR", str(ROOT / ".lethe"))
    data_dir = Path(env["LETHE_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "demo-server.log"
    print(f"starting `lethe serve --port {port}` (embedded default, data in {data_dir}, log in {log_path})")
    log = log_path.open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, server)
        with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=60) as client:
            forget = upload(client, FORGET_FILE, "piqa")
            retain = upload(client, RETAIN_FILE, "arc_easy")
            print(f"uploaded forget set piqa ({forget['rows']} rows) and retain set arc_easy ({retain['rows']} rows)")
            body = {**REQUEST, "forget_dataset": forget["id"], "retain_datasets": [retain["id"]]}
            if args.audit:
                body["audit"] = {}  # every attack that applies, default params and thresholds
            job_id = client.post("/v1/forget-requests", json=body).raise_for_status().json()["job_id"]
            print(f"forget request accepted: job {job_id}")
            job = follow(client, job_id)
            if job["status"] != "succeeded":
                print(f"job {job['status']}: {job['error']}")
                return 1
            adapter = client.get(f"/v1/adapters/{job['adapter_id']}").json()
            audit = None
            if args.audit:
                audit_id = job["audit_ids"][0]
                print(f"audit {audit_id} of adapter {adapter['id']}")
                audit_job = follow(client, client.get(f"/v1/audits/{audit_id}").json()["job_id"])
                if audit_job["status"] != "succeeded":
                    print(f"audit {audit_job['status']}: {audit_job['error']}")
                    return 1
                audit = client.get(f"/v1/audits/{audit_id}").json()
                report_path = data_dir / f"audit-{audit_id}.json"
                report_path.write_bytes(client.get(f"/v1/audits/{audit_id}/report").content)
                html_path = report_path.with_suffix(".html")
                html_path.write_bytes(client.get(f"/v1/audits/{audit_id}/report?format=html").content)
                # The published public keys, to check the report offline once the server is gone.
                keys_path = data_dir / "signing-keys.json"
                keys_path.write_bytes(client.get("/v1/signing-keys").content)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    print_tables(job)
    print(f"\nadapter {adapter['id']} ({adapter['size_bytes']} bytes, sha256 {adapter['sha256'][:16]}...)")
    print(
        f"it stays in {data_dir}: with `lethe serve` running there and a key from `lethe api-keys create`,\n"
        f"  curl -H 'X-API-Key: $KEY' http://127.0.0.1:8000/v1/adapters/{adapter['id']}/download -o adapter.tar.gz"
    )
    if audit is not None:
        print_audit(audit)
        print(f"signed report: {report_path}; page: {html_path}; check both offline with the published keys:")
        print(f"  lethe verify-report {report_path} --key-file {keys_path} --html {html_path}")
    print(f"demo wall time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
