"""The published signing keys on the real app and catalogue: public, a report verified offline with only the saved
key list, rotation by the admin that keeps old reports verifying, and the key files behind it."""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.services.signing_keys import current_signing_key, rotate_signing_key
from cli.verify_report import verify_report
from lethe.settings import Settings
from lethe.signing import key_id_of, public_key_from_x, public_pem, sign
from models.db import session_scope

ADMIN_KEY = "admin-key-for-the-signing-key-tests"


@pytest.fixture
def admin(stack_settings: Settings, app_client: TestClient) -> Iterator[TestClient]:
    settings = stack_settings.model_copy(update={"admin_api_key": SecretStr(ADMIN_KEY)})
    with TestClient(create_app(settings), headers={"X-API-Key": ADMIN_KEY}) as client:
        yield client


def _signed_now(settings: Settings, report: dict) -> dict:
    """A report signed as the API and workers sign: with the catalogue's current key from the key directory."""
    with session_scope(settings.database_url) as session:
        return sign(report, current_signing_key(settings, session))


def test_the_key_list_is_public_and_consistent(app_client: TestClient, stack_settings: Settings) -> None:
    response = app_client.get("/v1/signing-keys", headers={"X-API-Key": ""})
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert keys and sum(key["current"] for key in keys) == 1  # the app's first start made one
    for key in keys:
        public = public_key_from_x(key["jwk"]["x"])
        assert key["key_id"] == key["jwk"]["kid"] == key_id_of(public)
        assert key["jwk"] | {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig"} == key["jwk"]
        assert key["public_key_pem"] == public_pem(public) and "PRIVATE" not in response.text
        assert (key["retired_at"] is None) == key["current"]
    # Only the private key's file, readable by its owner alone, and nothing of it served.
    [current] = [key for key in keys if key["current"]]
    path = stack_settings.signing_keys_dir / f"{current['key_id']}.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert app_client.get(f"/v1/signing-keys/{current['key_id']}.pem", headers={"X-API-Key": ""}).status_code == 401


def test_a_report_verifies_offline_with_only_the_published_key_list(
    app_client: TestClient, stack_settings: Settings, tmp_path: Path
) -> None:
    report_path, keys_path = tmp_path / "report.json", tmp_path / "keys.json"
    report_path.write_bytes(_dump(_signed_now(stack_settings, {"audit_id": "a", "verdict": "robust"})))
    keys_path.write_bytes(app_client.get("/v1/signing-keys", headers={"X-API-Key": ""}).content)
    assert verify_report(report_path, keys_path, None, None) == 0


def _dump(signed: dict) -> bytes:
    return json.dumps(signed, indent=2).encode()


def test_rotation_keeps_old_reports_verifying(admin: TestClient, stack_settings: Settings, tmp_path: Path) -> None:
    before = admin.get("/v1/signing-keys").json()["keys"]
    old_report = tmp_path / "old.json"
    old_report.write_bytes(_dump(_signed_now(stack_settings, {"audit_id": "old", "verdict": "shallow"})))
    old_keys = tmp_path / "old-keys.json"
    old_keys.write_text(admin.get("/v1/signing-keys").text)

    rotated = admin.post("/v1/signing-keys/rotate")
    assert rotated.status_code == 200, rotated.text
    [previous] = [key["key_id"] for key in before if key["current"]]
    assert rotated.json()["retired"] == [previous] and rotated.json()["current"]["key_id"] != previous

    after = {key["key_id"]: key for key in admin.get("/v1/signing-keys").json()["keys"]}
    assert set(after) == {key["key_id"] for key in before} | {rotated.json()["current"]["key_id"]}
    assert after[previous]["retired_at"] is not None and not after[previous]["current"]
    new_keys = tmp_path / "keys.json"
    new_keys.write_text(admin.get("/v1/signing-keys").text)
    new_report = tmp_path / "new.json"
    new_report.write_bytes(_dump(_signed_now(stack_settings, {"audit_id": "new", "verdict": "robust"})))
    # The old report verifies with the new list (its key is retired, not gone); the new one is signed by the new key,
    # which the list saved before the rotation does not know.
    assert verify_report(old_report, new_keys, None, None) == 0
    assert verify_report(new_report, new_keys, None, None) == 0
    assert verify_report(new_report, old_keys, None, None) == 1


def test_rotation_needs_the_admin_key(admin: TestClient, app_client: TestClient, api_key: str) -> None:
    assert admin.post("/v1/signing-keys/rotate", headers={"X-API-Key": ""}).status_code == 401
    tenant = admin.post("/v1/signing-keys/rotate", headers={"X-API-Key": api_key})
    assert (tenant.status_code, tenant.json()["error"]) == (403, "forbidden")
    # The session's app has no admin key configured: refused.
    assert app_client.post("/v1/signing-keys/rotate", headers={"X-API-Key": api_key}).status_code == 403


def test_concurrent_rotations_leave_one_current_key(stack_settings: Settings, app_client: TestClient) -> None:
    # Without the key-creation lock each would retire only the keys it saw and both new keys would stay current.
    barrier = threading.Barrier(2)

    def rotate() -> None:
        with session_scope(stack_settings.database_url) as session:
            barrier.wait()
            rotate_signing_key(stack_settings, session)
            time.sleep(0.2)  # hold the transaction open while the other one runs

    threads = [threading.Thread(target=rotate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = app_client.get("/v1/signing-keys", headers={"X-API-Key": ""}).json()["keys"]
    assert sum(key["current"] for key in keys) == 1
