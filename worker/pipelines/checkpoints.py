"""A forget job's checkpoint in the object store: the engine's latest snapshot of the job, which a redelivered job
(its worker died) resumes from.

Two tensor slots and a manifest. A new checkpoint's tensors go to the slot the manifest does not point at, then the
manifest is replaced (atomically, `ObjectStore.replace`) to point at them: a crash at any moment leaves the
manifest pointing at a whole checkpoint, or no manifest at all. The manifest names the job, its spec's hash and the
tensors' hash; a checkpoint that does not match is ignored (and logged), and the job starts over.
"""

import hashlib
import json
import logging
import time
import uuid
from typing import Any, Literal

from safetensors import SafetensorError

from lethe.specs import ForgetJobSpec
from storage import ObjectNotFoundError, ObjectStore
from storage.keys import checkpoint_keys, checkpoint_manifest_key, checkpoint_tensors_key
from worker.engine.forget.snapshot import ForgetSnapshot, decode_snapshot, encode_snapshot

log = logging.getLogger("lethe.worker")

# The manifest's layout; a checkpoint of another format is ignored. 2: no `base_mia` (PrivLeak and forget quality
# read the base stage's per-example values, which format 1 lacks the truth ratios of).
FORMAT = 2


def spec_sha256(spec: ForgetJobSpec) -> str:
    """The hash of the job's spec as stored (canonical JSON): a checkpoint resumes only the spec it was taken of."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode("utf-8")).hexdigest()


class JobCheckpoint:
    """The checkpoint of one forget job: load it, replace it with a newer snapshot, delete it."""

    def __init__(self, store: ObjectStore, tenant_id: uuid.UUID, job_id: uuid.UUID, spec_hash: str) -> None:
        self.store, self.tenant_id, self.job_id, self.spec_hash = store, tenant_id, job_id, spec_hash
        self.manifest_key = checkpoint_manifest_key(tenant_id, job_id)
        # The slot the stored manifest points at (None: no manifest of this job's spec).
        self.slot: Literal[0, 1] | None = None

    def load(self) -> ForgetSnapshot | None:
        """The stored snapshot; None when there is none, or it is not this job's or cannot be read (logged)."""
        found = self._read()
        if isinstance(found, str):
            log.warning("job %s: ignoring its checkpoint (%s); starting over", self.job_id, found)
            return None
        if found is not None:
            log.info("job %s resumes from its checkpoint (%s, step %d)", self.job_id, found.stage, found.training.steps)
        return found

    def _read(self) -> ForgetSnapshot | str | None:
        """The stored snapshot, what is wrong with it, or None when there is none."""
        try:
            manifest = json.loads(self.store.get(self.manifest_key))
        except ObjectNotFoundError:
            return None
        except ValueError:
            return "its manifest is not JSON"
        problem = self._mismatch(manifest)
        if problem is not None:
            return problem
        try:
            data = self.store.get(checkpoint_tensors_key(self.tenant_id, self.job_id, manifest["slot"]))
        except ObjectNotFoundError:
            return "its tensors are missing"
        if hashlib.sha256(data).hexdigest() != manifest.get("tensors_sha256"):
            return "its tensors do not match their hash"
        try:
            snapshot = decode_snapshot(data, manifest["snapshot"])
        except (KeyError, TypeError, ValueError, SafetensorError) as exc:
            return f"it does not decode: {exc!r}"
        self.slot = manifest["slot"]
        return snapshot

    def _mismatch(self, manifest: Any) -> str | None:
        if not isinstance(manifest, dict):
            return "its manifest is not a JSON object"
        if manifest.get("format") != FORMAT:
            return f"format {manifest.get('format')!r}, not {FORMAT}"
        if manifest.get("job_id") != str(self.job_id):
            return f"it belongs to job {manifest.get('job_id')}"
        if manifest.get("spec_sha256") != self.spec_hash:
            return "it was taken of another spec"
        if manifest.get("slot") not in (0, 1):
            return f"no tensors slot {manifest.get('slot')!r}"
        return None

    def save(self, snapshot: ForgetSnapshot) -> None:
        """Replace the stored checkpoint with `snapshot`; one that cannot be stored is logged, and the job goes on
        (the stored one stays whole, and the next snapshot tries again)."""
        try:
            self._replace(snapshot)
        except Exception:
            log.exception("job %s: could not store its checkpoint at step %d", self.job_id, snapshot.training.steps)

    def _replace(self, snapshot: ForgetSnapshot) -> None:
        """Its tensors into the slot the manifest does not point at, then the manifest."""
        started = time.perf_counter()
        data, fields = encode_snapshot(snapshot)
        slot: Literal[0, 1] = 1 if self.slot == 0 else 0
        tensors_key = checkpoint_tensors_key(self.tenant_id, self.job_id, slot)
        self.store.delete(tensors_key)  # what a crashed save left there (objects are written once)
        self.store.put(tensors_key, data, "application/octet-stream")
        manifest = {
            "format": FORMAT,
            "job_id": str(self.job_id),
            "spec_sha256": self.spec_hash,
            "steps": snapshot.training.steps,
            "slot": slot,
            "tensors_sha256": hashlib.sha256(data).hexdigest(),
            "snapshot": fields,
        }
        encoded = json.dumps(manifest).encode("utf-8")
        self.store.replace(self.manifest_key, encoded, "application/json")
        self.slot = slot
        log.info(
            "job %s checkpoint (%s, step %d): %d bytes in %.0f ms",
            self.job_id,
            snapshot.stage,
            snapshot.training.steps,
            len(data) + len(encoded),
            (time.perf_counter() - started) * 1000,
        )

    def delete(self) -> None:
        """Delete the checkpoint: the manifest first, so that none ever points at missing tensors."""
        for key in checkpoint_keys(self.tenant_id, self.job_id):
            self.store.delete(key)
        self.slot = None
