"""S3-protocol object store (MinIO in deployment) through the minio SDK."""

import io
from collections.abc import Iterator

from minio import Minio
from minio.error import S3Error

from storage.base import ObjectExistsError, ObjectNotFoundError

_MISSING = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}


class S3ObjectStore:
    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        # Write-once: refuse an existing key. (A conditional If-None-Match put would close the race between
        # two writers of one key; keys here embed fresh UUIDs, so only a retried job can collide.)
        if self.exists(key):
            raise ObjectExistsError(key)
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def replace(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        # An S3 PUT replaces an object atomically: readers see the old version or the new one.
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise ObjectNotFoundError(key) from exc
            raise
        try:
            yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, key)

    def check(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            raise OSError(f"bucket {self.bucket!r} does not exist")
