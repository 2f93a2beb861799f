from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from storage import ObjectExistsError, ObjectNotFoundError, ObjectStore
from storage.local import LocalObjectStore
from storage.s3 import S3ObjectStore
from tests.conftest import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "objects")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        yield S3ObjectStore(Minio(endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, secure=False), BUCKET)


def test_put_get_is_write_once(store: ObjectStore, tmp_path: Path) -> None:
    key = f"tests/{tmp_path.name}/a.bin"
    assert not store.exists(key)
    store.put(key, b"first")
    assert store.exists(key)
    with pytest.raises(ObjectExistsError):
        store.put(key, b"second")
    assert store.get(key) == b"first"
    assert b"".join(store.iter_chunks(key, chunk_size=2)) == b"first"
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(ObjectNotFoundError):
        store.get(key)
    store.check()


def test_replace_writes_whether_or_not_the_key_exists(store: ObjectStore, tmp_path: Path) -> None:
    key = f"tests/{tmp_path.name}/manifest.json"
    store.replace(key, b"first")
    assert store.get(key) == b"first"
    store.replace(key, b"second")
    assert store.get(key) == b"second"
    with pytest.raises(ObjectExistsError):
        store.put(key, b"third")
    store.delete(key)
    assert not store.exists(key)


def test_local_store_refuses_keys_that_escape_its_root(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    for key in ["../outside", "/etc/passwd", "a/../../b"]:
        with pytest.raises(ValueError):
            store.put(key, b"x")


def test_s3_check_fails_for_a_missing_bucket(s3_endpoint: str) -> None:
    store = S3ObjectStore(Minio(s3_endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, secure=False), "no-such-bucket")
    with pytest.raises(OSError):
        store.check()
