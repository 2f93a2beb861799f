"""Signed documents anyone can check: Ed25519 over RFC 8785 canonical JSON, with published public keys.

A signed audit report is `{"report": {...}, "signature": {"algorithm": "Ed25519", "key_id": ..., "value": ...}}`
(a deletion receipt the same with `"receipt"`). The signature covers exactly the bytes of `canonical_json(report)`:
the JSON Canonicalization Scheme of RFC 8785 (keys sorted by UTF-16 code units, no whitespace, ECMAScript number
formatting, UTF-8), so any language's JCS library recomputes them from the downloaded file. `value` is the 64-byte
Ed25519 signature (RFC 8032) in base64url without padding (RFC 4648 §5): 86 characters. `key_id` is the RFC 7638
JWK thumbprint of the public key (base64url SHA-256 of `{"crv":"Ed25519","kty":"OKP","x":...}`, RFC 8037), so a
verifier can recompute it from the key it was given and nothing but the key's owner chose it.

Where keys live. Public keys, their ids and validity are rows of the catalogue (`signing_keys`), published at
`GET /v1/signing-keys`; a key is never deleted, only retired when `rotate` makes a new current key, so every report
ever signed keeps verifying. Private keys are never in the catalogue (its backups, replicas and readers would all
hold them) and never served: each is a PKCS#8 PEM file `<key_id>.pem`, mode 0600, in one key directory
(LETHE_SIGNING_KEY_DIR, default `<data_dir>/signing_keys`). The API process and every worker read the catalogue for
which key is current and load that key's file from the directory, so in the compose stack the directory is one
volume mounted on the API (read-write: it creates keys) and on every worker (read-only): all sign with the same
current key. The installation's first start (the API's lifespan) creates the first key, and `rotate` (admin API,
CLI) the next ones; nothing else does, a verifier least of all.

Verification parses strictly (`parse_strict`): a duplicate key anywhere (a reader may take either `"verdict"`),
NaN, Infinity or a number out of range, or anything RFC 8785 cannot canonicalize, fails the check with its reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "Ed25519"
# The fields a signed document may carry beside its signature: an audit report or a deletion receipt.
PAYLOAD_FIELDS = ("report", "receipt")
_SIGNATURE_VALUE = re.compile(r"^[A-Za-z0-9_-]{86}$")  # 64 bytes in base64url, unpadded
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # a SHA-256 in base64url, unpadded


class NotCanonical(ValueError):
    """The value has no RFC 8785 form: NaN or infinity, an integer beyond ±2^53, a non-string key, a non-JSON type."""


class UnusableInput(ValueError):
    """A file that is not a document at all (not UTF-8, not JSON, not a key): nothing to verify."""


class DuplicateKey(ValueError):
    pass


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _from_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_json(value: Any) -> bytes:
    """The bytes a signature covers: RFC 8785 (JCS) of `value`; NotCanonical if it has none."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise NotCanonical(str(exc)) from exc


def parse_strict(data: bytes) -> Any:
    """JSON as a verifier must read it: UTF-8, no duplicate key in any object, no NaN or infinity (not even a
    literal that overflows to it). UnusableInput if it is not JSON at all; DuplicateKey or NotCanonical otherwise."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise DuplicateKey(
                    f"duplicate key {key!r} in one object: readers may take either value, so it proves nothing"
                )
            seen[key] = value
        return seen

    def no_constant(name: str) -> Any:
        raise NotCanonical(f"{name} is not JSON (RFC 8259) and has no canonical form")

    def finite_float(text: str) -> float:
        number = float(text)
        if number in (float("inf"), float("-inf")):
            raise NotCanonical(f"the number {text} is out of range for a double")
        return number

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnusableInput(f"not UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant, parse_float=finite_float)
    except json.JSONDecodeError as exc:
        raise UnusableInput(f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc


def key_id_of(public: Ed25519PublicKey) -> str:
    """The RFC 7638 thumbprint of the key's JWK (RFC 8037): base64url(SHA-256 of its required members in JCS)."""
    jwk = public_jwk(public)
    required = {name: jwk[name] for name in ("crv", "kty", "x")}
    return b64url(hashlib.sha256(canonical_json(required)).digest())


def public_jwk(public: Ed25519PublicKey) -> dict[str, str]:
    """The public key as an RFC 8037 JWK."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def public_pem(public: Ed25519PublicKey) -> str:
    """The public key as a PEM SubjectPublicKeyInfo (what `openssl pkey -pubin` reads)."""
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii")


def public_key_from_x(x: str) -> Ed25519PublicKey:
    """The public key of a JWK's `x` (32 bytes, base64url); ValueError if it is not one."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", x):
        raise ValueError("x: expected 32 bytes in base64url without padding (43 characters)")
    return Ed25519PublicKey.from_public_bytes(_from_b64url(x))


@dataclass(frozen=True)
class SigningKey:
    """A private key with its id: what signs."""

    key_id: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


@dataclass(frozen=True)
class PublicKey:
    """A published key: what verifies, and when it was in use (None where the key file did not say)."""

    key_id: str
    public: Ed25519PublicKey
    valid_from: datetime | None = None
    retired_at: datetime | None = None

    def describe(self) -> str:
        if self.retired_at is not None:
            return f"key {self.key_id} (retired {self.retired_at.isoformat()}; reports it signed before stay valid)"
        if self.valid_from is not None:
            return f"key {self.key_id} (current since {self.valid_from.isoformat()})"
        return f"key {self.key_id}"


def generate_key(key_dir: Path) -> SigningKey:
    """A new key, its private half written to `<key_dir>/<key_id>.pem` readable by the owner only."""
    private = Ed25519PrivateKey.generate()
    key = SigningKey(key_id_of(private.public_key()), private)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: a key file is written once; 0600 from its creation, never a moment world-readable.
    descriptor = os.open(key_dir / f"{key.key_id}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    return key


class KeyFileMissing(LookupError):
    pass


def load_signing_key(key_dir: Path, key_id: str) -> SigningKey:
    """The private key `key_id` from the key directory; KeyFileMissing if this process cannot read it, ValueError if
    the file holds another key or no Ed25519 key."""
    path = key_dir / f"{key_id}.pem"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileMissing(
            f"signing key {key_id}: cannot read {path} ({exc.strerror}); every API and worker process must see "
            "LETHE_SIGNING_KEY_DIR"
        ) from exc
    private = serialization.load_pem_private_key(data, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    if key_id_of(private.public_key()) != key_id:
        raise ValueError(f"{path}: holds key {key_id_of(private.public_key())}, not {key_id}")
    return SigningKey(key_id, private)


def sign_document(document: Mapping[str, Any], key: SigningKey) -> dict[str, str]:
    """The `signature` object of `document`: Ed25519 over its canonical JSON. NotCanonical if it has none."""
    value = key.private.sign(canonical_json(document))
    return {"algorithm": ALGORITHM, "key_id": key.key_id, "value": b64url(value)}


def sign(report: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """The signed audit report."""
    return {"report": report, "signature": sign_document(report, key)}


@dataclass(frozen=True)
class Verification:
    valid: bool
    reason: str


def verify(signed: Any, keys: Mapping[str, PublicKey]) -> Verification:
    """Whether `signed` (a parsed signed document) carries a valid signature by one of `keys`, and why not."""
    if not isinstance(signed, dict):
        return Verification(False, "not a signed document: expected a JSON object with a payload and 'signature'")
    payloads = [name for name in PAYLOAD_FIELDS if name in signed]
    extra = sorted(set(signed) - {*PAYLOAD_FIELDS, "signature"})
    if extra:
        return Verification(False, f"unsigned field(s) {', '.join(map(repr, extra))} beside the signed payload")
    if len(payloads) != 1 or not isinstance(signed[payloads[0]], dict):
        return Verification(False, "not a signed document: expected one object 'report' (or 'receipt')")
    signature = signed.get("signature")
    if not isinstance(signature, dict):
        return Verification(False, "the document carries no signature")
    if set(signature) != {"algorithm", "key_id", "value"}:
        return Verification(False, "the signature object must have exactly 'algorithm', 'key_id' and 'value'")
    if signature["algorithm"] != ALGORITHM:
        return Verification(False, f"unsupported signature algorithm {signature['algorithm']!r} (expected Ed25519)")
    key_id = signature["key_id"]
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        return Verification(False, f"malformed key_id {key_id!r}")
    key = keys.get(key_id)
    if key is None:
        known = ", ".join(sorted(keys)) or "none"
        return Verification(False, f"signed with key {key_id}, which is not among the keys given ({known})")
    value = signature["value"]
    if not isinstance(value, str) or not _SIGNATURE_VALUE.match(value):
        return Verification(False, "malformed signature value: expected 64 bytes in base64url without padding")
    try:
        message = canonical_json(signed[payloads[0]])
    except NotCanonical as exc:
        return Verification(False, f"the {payloads[0]} has no canonical JSON form: {exc}")
    try:
        key.public.verify(_from_b64url(value), message)
    except InvalidSignature:
        return Verification(False, "the signature does not match: the document was changed after it was signed")
    return Verification(True, f"signed by {key.describe()}")


def verify_bytes(data: bytes, keys: Mapping[str, PublicKey]) -> tuple[Verification, Any]:
    """`verify` of a file's bytes parsed strictly, and what it parsed to; UnusableInput if it is not JSON."""
    try:
        signed = parse_strict(data)
    except (DuplicateKey, NotCanonical) as exc:
        return Verification(False, str(exc)), None
    return verify(signed, keys), signed


def verify_html(report: Mapping[str, Any], page: bytes) -> Verification:
    """Whether `page` is byte for byte the HTML page whose SHA-256 the signed report carries."""
    expected = report.get("html_sha256")
    if not isinstance(expected, str):
        return Verification(False, "the report carries no html_sha256: it vouches for no HTML page")
    actual = hashlib.sha256(page).hexdigest()
    if actual != expected:
        return Verification(False, f"the HTML page was changed: its SHA-256 is {actual}, the report signed {expected}")
    return Verification(True, "the HTML page is the one the report signed")


def _key_from_entry(entry: Any) -> PublicKey:
    """One key of a key file: a `GET /v1/signing-keys` entry, or a bare JWK (its kid, if any, must be its
    thumbprint)."""
    if not isinstance(entry, dict):
        raise UnusableInput("a key entry is not a JSON object")
    jwk = entry.get("jwk", entry)
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise UnusableInput("a key is not an Ed25519 JWK (kty OKP, crv Ed25519)")
    try:
        public = public_key_from_x(str(jwk.get("x", "")))
    except ValueError as exc:
        raise UnusableInput(f"a key's x: {exc}") from exc
    key_id = key_id_of(public)
    claimed = entry.get("key_id", jwk.get("kid", key_id))
    if claimed != key_id:
        raise UnusableInput(f"a key claims id {claimed!r}, but its thumbprint is {key_id}")

    def when(name: str) -> datetime | None:
        value = entry.get(name)
        try:
            return datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError as exc:
            raise UnusableInput(f"key {key_id}: {name} is not an ISO 8601 time") from exc

    return PublicKey(key_id, public, when("valid_from"), when("retired_at"))


def load_public_keys(data: bytes) -> dict[str, PublicKey]:
    """The keys of a key file: the JSON of `GET /v1/signing-keys` (`{"keys": [...]}`), a JWK set, one JWK, or a PEM
    public key. UnusableInput naming what is wrong otherwise."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise UnusableInput(f"not a PEM public key ({exc})") from exc
        if not isinstance(public, Ed25519PublicKey):
            raise UnusableInput("the PEM key is not an Ed25519 public key")
        return {key_id_of(public): PublicKey(key_id_of(public), public)}
    try:
        document = parse_strict(data)
    except (DuplicateKey, NotCanonical) as exc:
        raise UnusableInput(str(exc)) from exc
    entries = document.get("keys") if isinstance(document, dict) and "keys" in document else [document]
    if not isinstance(entries, list) or not entries:
        raise UnusableInput("no keys: expected {'keys': [...]} as GET /v1/signing-keys answers, a JWK or a PEM key")
    keys = [_key_from_entry(entry) for entry in entries]
    return {key.key_id: key for key in keys}
