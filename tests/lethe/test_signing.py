"""Signed documents: RFC 8785 canonical JSON (the RFC's own examples), Ed25519 signatures (RFC 8032/8037 vectors),
strict parsing (duplicate keys, NaN), tampering, wrong and retired keys, key files, and the HTML page's hash."""

import base64
import hashlib
import json
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lethe.signing import (
    DuplicateKey,
    KeyFileMissing,
    NotCanonical,
    PublicKey,
    SigningKey,
    UnusableInput,
    b64url,
    canonical_json,
    generate_key,
    key_id_of,
    load_public_keys,
    load_signing_key,
    parse_strict,
    public_jwk,
    public_pem,
    sign,
    sign_document,
    verify,
    verify_bytes,
    verify_html,
)

# RFC 8785 §3.2.2: the example input (as JSON text) and its canonical form.
RFC8785_INPUT = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC8785_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)

# RFC 8785 Appendix B: IEEE 754 doubles (as hex) and their serialization.
RFC8785_NUMBERS = {
    "0000000000000000": "0",
    "8000000000000000": "0",
    "0000000000000001": "5e-324",
    "8000000000000001": "-5e-324",
    "7fefffffffffffff": "1.7976931348623157e+308",
    "ffefffffffffffff": "-1.7976931348623157e+308",
    "4340000000000000": "9007199254740992",
    "c340000000000000": "-9007199254740992",
    "4430000000000000": "295147905179352830000",
    "44b52d02c7e14af5": "9.999999999999997e+22",
    "44b52d02c7e14af6": "1e+23",
    "44b52d02c7e14af7": "1.0000000000000001e+23",
    "444b1ae4d6e2ef4e": "999999999999999700000",
    "444b1ae4d6e2ef4f": "999999999999999900000",
    "444b1ae4d6e2ef50": "1e+21",
    "3eb0c6f7a0b5ed8c": "9.999999999999997e-7",
    "3eb0c6f7a0b5ed8d": "0.000001",
    "41b3de4355555553": "333333333.3333332",
    "41b3de4355555554": "333333333.33333325",
    "41b3de4355555555": "333333333.3333333",
    "41b3de4355555556": "333333333.3333334",
    "41b3de4355555557": "333333333.33333343",
    "becbf647612f3696": "-0.0000033333333333333333",
    "43143ff3c1cb0959": "1424953923781206.2",
}

# RFC 8037 Appendix A.1/A.3/A.4: the Ed25519 key of RFC 8032's test 1, its JWK thumbprint, and a JWS signature.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_SIGNING_INPUT = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
RFC8037_SIGNATURE = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"

REPORT = {"audit_id": "a1", "verdict": "shallow", "attacks": [{"name": "relearn", "recovery": 0.8}], "é": "ü"}


def _key(seed: int) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return SigningKey(key_id_of(private.public_key()), private)


KEY, OTHER = _key(1), _key(2)


def _ring(*keys: SigningKey, retired_at: datetime | None = None) -> dict[str, PublicKey]:
    return {key.key_id: PublicKey(key.key_id, key.public, retired_at=retired_at) for key in keys}


def test_canonical_json_reproduces_the_rfc_8785_example() -> None:
    assert canonical_json(json.loads(RFC8785_INPUT)) == RFC8785_OUTPUT.encode("utf-8")


@pytest.mark.parametrize(("bits", "expected"), RFC8785_NUMBERS.items())
def test_canonical_numbers_follow_rfc_8785_appendix_b(bits: str, expected: str) -> None:
    assert canonical_json(struct.unpack(">d", bytes.fromhex(bits))[0]) == expected.encode()


def test_canonical_keys_sort_by_utf16_code_units_as_in_rfc_8785() -> None:
    # §3.2.3: the emoji (surrogates D83D DE00) sorts before U+FB33, unlike by code point.
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    canonical = json.loads(canonical_json(dict.fromkeys(keys, 0)))
    assert list(canonical) == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53 + 1, {1: "x"}, b"bytes"])
def test_values_without_a_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(NotCanonical):
        canonical_json({"x": value})


def test_key_ids_and_signatures_match_the_rfc_8037_vectors() -> None:
    private = Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(RFC8037_D + "="))
    assert public_jwk(private.public_key()) == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert key_id_of(private.public_key()) == RFC8037_THUMBPRINT
    assert b64url(private.sign(RFC8037_SIGNING_INPUT)) == RFC8037_SIGNATURE


def test_the_signature_is_ed25519_over_the_canonical_json_in_unpadded_base64url() -> None:
    signed = sign(REPORT, KEY)
    signature = signed["signature"]
    assert signature == sign_document(REPORT, KEY)
    assert (signature["algorithm"], signature["key_id"], len(signature["value"])) == ("Ed25519", KEY.key_id, 86)
    canonical = '{"attacks":[{"name":"relearn","recovery":0.8}],"audit_id":"a1","verdict":"shallow","é":"ü"}'
    # Raises InvalidSignature otherwise: the value is the signature of exactly these bytes.
    KEY.public.verify(base64.urlsafe_b64decode(signature["value"] + "=="), canonical.encode())


def test_a_signed_report_verifies_whatever_its_layout() -> None:
    signed = sign(REPORT, KEY)
    reloaded = json.dumps(signed, indent=4, sort_keys=False).encode()
    result, parsed = verify_bytes(reloaded, _ring(KEY))
    assert result.valid and result.reason == f"signed by key {KEY.key_id}" and parsed == signed


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda s: s["report"].update(verdict="robust"), "the document was changed after it was signed"),
        (lambda s: s["report"]["attacks"][0].update(recovery=0.1), "the document was changed after it was signed"),
        (lambda s: s["signature"].update(value=b64url(bytes(64))), "the document was changed after it was signed"),
        (lambda s: s["signature"].update(value="abc"), "malformed signature value"),
        (lambda s: s["signature"].update(algorithm="HMAC-SHA256"), "unsupported signature algorithm 'HMAC-SHA256'"),
        (lambda s: s["signature"].update(note="x"), "exactly 'algorithm', 'key_id' and 'value'"),
        (lambda s: s.pop("signature"), "the document carries no signature"),
        (lambda s: s.update(verdict="robust"), "unsigned field(s) 'verdict' beside the signed payload"),
        (lambda s: s.update(receipt={}), "expected one object 'report'"),
    ],
)
def test_tampering_is_detected_and_explained(tamper, reason: str) -> None:
    signed = json.loads(json.dumps(sign(REPORT, KEY)))
    tamper(signed)
    result = verify(signed, _ring(KEY))
    assert not result.valid and reason in result.reason


def test_a_duplicate_verdict_key_fails_though_either_copy_might_verify() -> None:
    # The signed verdict first and a forged one after it: json.loads keeps the last, another reader the first.
    text = json.dumps(sign(REPORT, KEY)).replace('"verdict": "shallow"', '"verdict": "shallow", "verdict": "robust"')
    result, parsed = verify_bytes(text.encode(), _ring(KEY))
    assert not result.valid and "duplicate key 'verdict'" in result.reason and parsed is None
    with pytest.raises(DuplicateKey):
        parse_strict(b'{"a": {"b": 1, "b": 1}}')  # anywhere, even with equal values


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"report": {"x": NaN}, "signature": {}}', "NaN is not JSON"),
        ('{"report": {"x": -Infinity}, "signature": {}}', "-Infinity is not JSON"),
        ('{"report": {"x": 1e400}, "signature": {}}', "out of range"),
    ],
)
def test_nan_and_infinity_fail(text: str, reason: str) -> None:
    result, _ = verify_bytes(text.encode(), _ring(KEY))
    assert not result.valid and reason in result.reason


def test_a_number_beyond_the_canonical_range_fails_with_its_reason() -> None:
    signed = json.loads(json.dumps(sign(REPORT, KEY)))
    signed["report"]["seed"] = 2**60
    result = verify(signed, _ring(KEY))
    assert not result.valid and "no canonical JSON form" in result.reason


def test_not_json_is_unusable_not_invalid() -> None:
    for data in (b"{not json", b"\xff\xfe"):
        with pytest.raises(UnusableInput):
            verify_bytes(data, _ring(KEY))


def test_a_key_not_given_or_another_key_fails() -> None:
    signed = sign(REPORT, KEY)
    unknown = verify(signed, _ring(OTHER))
    assert not unknown.valid and f"signed with key {KEY.key_id}, which is not among the keys given" in unknown.reason
    # A forger signs with their own key but names ours: the signature does not match our public key.
    forged = {"report": {**REPORT, "verdict": "robust"}, "signature": {**sign_document(REPORT, OTHER)}}
    forged["signature"]["key_id"] = KEY.key_id
    forged["signature"]["value"] = sign_document(forged["report"], OTHER)["value"]
    result = verify(forged, _ring(KEY, OTHER))
    assert not result.valid and "changed after it was signed" in result.reason


def test_a_retired_key_still_verifies_what_it_signed() -> None:
    retired_at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    result = verify(sign(REPORT, KEY), _ring(KEY, retired_at=retired_at))
    assert result.valid and "retired 2026-11-30T12:00:00+00:00" in result.reason


def test_a_receipt_is_signed_and_verified_the_same_way() -> None:
    receipt = {"kind": "dataset", "id": "d1", "deleted_at": "2026-11-30T12:00:00+00:00"}
    signed = {"receipt": receipt, "signature": sign_document(receipt, KEY)}
    assert verify(signed, _ring(KEY)).valid
    signed["receipt"]["id"] = "d2"
    assert not verify(signed, _ring(KEY)).valid


def test_key_files_in_every_published_form(tmp_path: Path) -> None:
    entry = {
        "key_id": KEY.key_id,
        "algorithm": "Ed25519",
        "jwk": {**public_jwk(KEY.public), "kid": KEY.key_id},
        "valid_from": "2026-11-30T10:00:00+00:00",
        "retired_at": "2026-11-30T11:00:00+00:00",
    }
    listed = load_public_keys(json.dumps({"keys": [entry]}).encode())
    assert listed[KEY.key_id].retired_at == datetime(2026, 11, 30, 11, tzinfo=UTC)
    assert list(load_public_keys(public_pem(KEY.public).encode())) == [KEY.key_id]
    assert list(load_public_keys(json.dumps(public_jwk(KEY.public)).encode())) == [KEY.key_id]
    jwks = {"keys": [public_jwk(KEY.public), public_jwk(OTHER.public)]}
    assert set(load_public_keys(json.dumps(jwks).encode())) == {KEY.key_id, OTHER.key_id}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (json.dumps({"keys": [{"key_id": "x" * 43, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}}]}),
         "claims id"),
        (json.dumps({"keys": [{"kty": "RSA", "n": "x"}]}), "not an Ed25519 JWK"),
        (json.dumps({"keys": []}), "no keys"),
        ('{"keys": [], "keys": []}', "duplicate key"),
        ("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
        ("{oops", "not JSON"),
    ],
)  # fmt: skip
def test_unusable_key_files_say_why(data: str, reason: str) -> None:
    with pytest.raises(UnusableInput, match=reason):
        load_public_keys(data.encode())


def test_a_generated_key_is_a_private_file_named_by_its_id(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key = generate_key(key_dir)
    path = key_dir / f"{key.key_id}.pem"
    assert path.stat().st_mode & 0o777 == 0o600 and key_dir.stat().st_mode & 0o077 == 0
    loaded = load_signing_key(key_dir, key.key_id)
    assert verify(sign(REPORT, loaded), _ring(key)).valid
    with pytest.raises(KeyFileMissing, match="LETHE_SIGNING_KEY_DIR"):
        load_signing_key(key_dir, OTHER.key_id)
    (key_dir / f"{OTHER.key_id}.pem").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=f"holds key {key.key_id}"):
        load_signing_key(key_dir, OTHER.key_id)


def test_the_html_page_is_covered_by_its_hash() -> None:
    page = b"<html>the page</html>"
    report = {**REPORT, "html_sha256": hashlib.sha256(page).hexdigest()}
    assert verify_html(report, page).valid
    edited = verify_html(report, page.replace(b"the", b"a"))
    assert not edited.valid and "the HTML page was changed" in edited.reason
    assert "carries no html_sha256" in verify_html(REPORT, page).reason
