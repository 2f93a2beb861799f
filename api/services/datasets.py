"""Dataset uploads: validate every row, then store the object and the catalogue row together."""

import hashlib
import json
import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from api.errors import InvalidInput
from api.pagination import page_of
from api.schemas import DatasetOut, DatasetPage
from api.services.deletions import missing
from api.services.quotas import check_stored_bytes
from lethe import safe_json
from lethe.rows import ROW_TYPES, RowError, parse_row
from lethe.settings import Settings
from models.db import UnitOfWork
from models.repositories import DatasetRepository, PageQuery
from models.tables import Dataset
from storage import ObjectStore
from storage.keys import dataset_key


def count_valid_rows(kind: str, content: bytes) -> int:
    """The number of rows in a JSONL file of `kind`; InvalidInput naming the first bad line and field."""
    if kind not in ROW_TYPES:
        raise InvalidInput(f"kind: must be one of {', '.join(sorted(ROW_TYPES))}, got {kind!r}")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"file: not UTF-8 (byte {exc.start})") from exc
    rows = 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = safe_json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"line {line_number}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        except safe_json.JSONLimitError as exc:
            where = f"field '{exc.path}' " if exc.path else ""
            raise InvalidInput(f"line {line_number}: {where}{exc.message}") from exc
        if not isinstance(row, dict):
            raise InvalidInput(f"line {line_number}: must be a JSON object")
        try:
            parse_row(kind, row)
        except RowError as exc:
            raise InvalidInput(f"line {line_number}: field '{exc.field}' {exc.message}") from exc
        rows += 1
    if rows == 0:
        raise InvalidInput("file: contains no rows")
    return rows


def create_dataset(
    work: UnitOfWork,
    store: ObjectStore,
    settings: Settings,
    tenant_id: uuid.UUID,
    name: str,
    kind: str,
    content: bytes,
) -> Dataset:
    """Validate and store a dataset within the tenant's stored bytes; if its row is not committed, the stored file
    is deleted again."""
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("name: must be 1 to 200 characters")
    if problem := safe_json.string_problem(name):
        raise InvalidInput(f"name: {problem}")
    rows = count_valid_rows(kind, content)
    check_stored_bytes(work.session, settings, tenant_id, len(content))
    dataset_id = uuid.uuid4()
    key = dataset_key(tenant_id, dataset_id)
    store.put(key, content, content_type="application/x-ndjson")
    work.undo_on_rollback(lambda: store.delete(key))
    return DatasetRepository(work.session).add(
        Dataset(
            id=dataset_id,
            tenant_id=tenant_id,
            name=name,
            kind=kind,
            rows=rows,
            sha256=hashlib.sha256(content).hexdigest(),
            size_bytes=len(content),
            object_key=key,
        )
    )


def get_dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset:
    dataset = DatasetRepository(session).get(tenant_id, dataset_id)
    if dataset is None:
        raise missing(session, tenant_id, "dataset", dataset_id)
    return dataset


def list_datasets(session: Session, tenant_id: uuid.UUID, page: PageQuery, kind: str | None) -> DatasetPage:
    """A page of the tenant's datasets, newest first."""
    rows, next_cursor = page_of(DatasetRepository(session).page(tenant_id, page, kind), page, _sort_key)
    return DatasetPage(
        items=[DatasetOut.model_validate(d, from_attributes=True) for d in rows], next_cursor=next_cursor
    )


def _sort_key(dataset: Dataset) -> tuple[datetime, uuid.UUID]:
    return dataset.created_at, dataset.id
