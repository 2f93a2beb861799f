"""`lethe verify-report FILE --key-url URL | --key-file FILE [--html PAGE]`: check a signed report (or deletion
receipt) with the server's published public keys, as a third party can: no API key, no catalogue, no server key.

The keys come from exactly one place the user names. `--key-file`: the JSON of `GET /v1/signing-keys` saved earlier
(or a JWK, or a PEM public key), so verification works offline. `--key-url`: that list fetched now, only from an
https URL or a loopback http one (127.0.0.0/8, ::1, localhost): whoever can alter a plain-http answer on the way
could hand over a key of their own and make any forgery "verify"; loopback traffic never leaves the machine (a local
server, an SSH tunnel). Redirects are not followed, for the same reason. Nothing here creates or writes a key.

Exit status: 0 valid, 1 invalid (the reason is printed), 2 unusable input (unreadable file, not JSON, no usable key,
the key URL refused or unreachable).
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from lethe.signing import PublicKey, UnusableInput, load_public_keys, verify_bytes, verify_html

# A key list is a few KiB; more than this is not one.
MAX_KEYS_BYTES = 1024 * 1024
FETCH_TIMEOUT_S = 10.0


class Unusable(Exception):
    """Input that leaves nothing to verify; the message says what."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_keys(url: str) -> bytes:
    """The key list at `url` (https, or http on loopback only); Unusable naming why not."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "http" and not _loopback(host):
        raise Unusable(
            f"--key-url {url}: plain http is accepted only on loopback (anyone on the path could swap the keys); "
            "use https, or save the key list to a file and pass --key-file"
        )
    if parts.scheme not in ("https", "http") or not host:
        raise Unusable(f"--key-url {url}: expected an https:// URL (or http:// on loopback)")
    try:
        headers = {"Accept": "application/json"}
        with httpx.stream("GET", url, headers=headers, timeout=FETCH_TIMEOUT_S, follow_redirects=False) as response:
            if response.status_code != 200:
                raise Unusable(f"--key-url {url}: the server answered {response.status_code}, not the key list")
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_KEYS_BYTES:
                    raise Unusable(f"--key-url {url}: more than {MAX_KEYS_BYTES} bytes, not a key list")
            return data
    except httpx.HTTPError as exc:
        raise Unusable(f"--key-url {url}: cannot fetch it ({exc})") from exc


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Unusable(f"{what} {path}: cannot read it ({exc.strerror})") from exc


def _keys(key_file: Path | None, key_url: str | None) -> dict[str, PublicKey]:
    if (key_file is None) == (key_url is None):
        raise Unusable("give exactly one of --key-file (offline) and --key-url (the server's /v1/signing-keys)")
    source = str(key_file) if key_file is not None else str(key_url)
    data = _read(key_file, "--key-file") if key_file is not None else fetch_keys(str(key_url))
    try:
        return load_public_keys(data)
    except UnusableInput as exc:
        raise Unusable(f"keys from {source}: {exc}") from exc


def _describe(signed: dict[str, object]) -> str:
    report = signed.get("report")
    if isinstance(report, dict):
        return f"the report of audit {report.get('audit_id')} (verdict {report.get('verdict')})"
    receipt = signed.get("receipt")
    return f"a deletion receipt ({receipt.get('kind', 'resource') if isinstance(receipt, dict) else 'resource'})"


def verify_report(file: Path, key_file: Path | None, key_url: str | None, html: Path | None) -> int:
    """Check `file`'s signature (and, with `html`, that the page is the one it signed); 0 valid, 1 invalid, 2
    unusable input. Prints the verdict and why."""
    try:
        data = _read(file, "report")
        page = _read(html, "--html") if html is not None else None
        keys = _keys(key_file, key_url)
        result, signed = verify_bytes(data, keys)
    except (Unusable, UnusableInput) as exc:
        print(f"lethe verify-report: {exc if isinstance(exc, Unusable) else f'{file}: {exc}'}", file=sys.stderr)
        return 2
    if not result.valid:
        print(f"INVALID: {file}: {result.reason}", file=sys.stderr)
        return 1
    message = f"valid: {file} is {_describe(signed)}, {result.reason}"
    if page is not None and html is not None:
        payload = signed.get("report")
        page_result = verify_html(payload if isinstance(payload, dict) else {}, page)
        if not page_result.valid:
            print(f"INVALID: {html}: {page_result.reason}", file=sys.stderr)
            return 1
        message += f"; {html}: {page_result.reason}"
    print(message)
    return 0
