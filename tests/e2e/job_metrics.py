"""Reading a job's metrics as the API returns them, for the e2e tests."""

from typing import Any


def final_metrics(job: dict[str, Any]) -> dict[tuple[str, str, str, Any], float]:
    """The job's value of every (stage, split, name, layer): `metrics` holds one each (curve points are apart)."""
    return {(m["stage"], m["split"], m["name"], m["layer"]): m["value"] for m in job["metrics"]}
