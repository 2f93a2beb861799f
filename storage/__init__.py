"""Object storage: one interface, a local-directory backend and an S3 backend."""

from pathlib import Path
from urllib.parse import unquote, urlparse

from minio import Minio

from lethe.settings import Settings
from storage.base import ObjectExistsError, ObjectNotFoundError, ObjectStore
from storage.local import LocalObjectStore
from storage.s3 import S3ObjectStore

__all__ = ["ObjectExistsError", "ObjectNotFoundError", "ObjectStore", "open_store"]


def open_store(settings: Settings) -> ObjectStore:
    """The store that LETHE_STORAGE_URL names."""
    url = urlparse(settings.storage_url)
    if url.scheme == "file":
        return LocalObjectStore(Path(unquote(url.path)))
    client = Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region,
    )
    return S3ObjectStore(client, bucket=url.netloc)
