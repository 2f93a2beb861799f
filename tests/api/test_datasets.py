import hashlib

import pytest
from fastapi.testclient import TestClient
from minio import Minio
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from lethe.settings import Settings
from tests.api.conftest import CHOICE_ROWS, jsonl, upload
from tests.conftest import BUCKET


def _objects(settings: Settings) -> list[str]:
    client = Minio(
        settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key.get_secret_value(), secure=False
    )
    return [o.object_name for o in client.list_objects(BUCKET, prefix="datasets/", recursive=True)]


def test_upload_stores_object_and_row(client: TestClient, stack_settings: Settings) -> None:
    response = upload(client, CHOICE_ROWS)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["rows"] == len(CHOICE_ROWS)
    assert body["kind"] == "choice"
    assert body["sha256"] == hashlib.sha256(jsonl(CHOICE_ROWS)).hexdigest()
    assert any(body["id"] in key for key in _objects(stack_settings))
    assert client.get(f"/v1/datasets/{body['id']}").json() == body
    assert [d["id"] for d in client.get("/v1/datasets").json()["items"]] == [body["id"]]


def test_bad_row_names_line_and_field_and_stores_nothing(client: TestClient, stack_settings: Settings) -> None:
    before = _objects(stack_settings)
    rows = [*CHOICE_ROWS[:2], {"prompt": "x", "choices": [" a", " b"], "answer": 2}]
    response = upload(client, rows)
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_input",
        "detail": "line 3: field 'answer' must be an integer index into choices (0..1), got 2",
    }
    assert _objects(stack_settings) == before
    assert client.get("/v1/datasets").json()["items"] == []


def test_each_kind_of_bad_row_is_named(client: TestClient) -> None:
    cases = {
        b'{"prompt": "p", "choices": [" a", " b"], "answer": 0}\nnot json\n': "line 2: not valid JSON",
        b"[1, 2]\n": "line 1: must be a JSON object",
        b'{"prompt": "p", "choices": [" a"], "answer": 0}\n': "line 1: field 'choices' must be a list of at least 2",
        b'{"prompt": "", "choices": [" a", " b"], "answer": 0}\n': "line 1: field 'prompt' must be a non-empty",
        b'{"prompt": "p", "choices": [" a", " b"]}\n': "line 1: field 'answer' is required",
        b'{"prompt": "p", "choices": [" a", " b"], "answer": true}\n': "line 1: field 'answer' must be an integer",
        b'{"prompt": "p", "choices": [" a", " b"], "answer": 0, "anwser": 1}\n': "line 1: field 'anwser' is not a",
        b"\n\n": "file: contains no rows",
        b"\xff\xfe": "file: not UTF-8",
    }
    for content, expected in cases.items():
        response = upload(client, content)
        assert response.status_code == 422, content
        assert response.json()["detail"].startswith(expected), (content, response.json())


def test_unknown_kind_lists_allowed(client: TestClient) -> None:
    response = upload(client, CHOICE_ROWS, kind="essay")
    assert response.status_code == 422
    assert response.json()["detail"] == "kind: must be one of choice, qa, text, got 'essay'"


QA_ROWS = [
    {"question": "Who wrote Hamlet?", "answer": "Shakespeare."},
    {
        "question": "Where was Basil born?",
        "answer": "Kuwait City.",
        "paraphrased_question": "Basil's birthplace?",
        "paraphrased_answer": "In Kuwait City.",
        "perturbed_answers": ["In Paris.", "In Cairo."],
    },
]


def test_qa_and_text_datasets_are_accepted(client: TestClient) -> None:
    qa = upload(client, QA_ROWS, name="facts", kind="qa")
    assert qa.status_code == 201, qa.text
    assert (qa.json()["kind"], qa.json()["rows"]) == ("qa", 2)
    text = upload(client, [{"text": "A passage to forget."}, {"text": "Another."}], name="passages", kind="text")
    assert text.status_code == 201, text.text
    assert (text.json()["kind"], text.json()["rows"]) == ("text", 2)


def test_bad_qa_and_text_rows_are_named(client: TestClient) -> None:
    cases = [
        ("qa", {"question": "q"}, "line 1: field 'answer' is required"),
        ("qa", {"question": "q", "answer": " "}, "line 1: field 'answer' must be a non-empty string"),
        ("qa", {"question": "q", "answer": "a", "perturbed_answers": "b"}, "line 1: field 'perturbed_answers' must"),
        ("qa", {"question": "q", "answer": "a", "perturbed_answers": ["b", 3]}, "line 1: field 'perturbed_answers[1]'"),
        ("qa", {"question": "q", "answer": "a", "paraphrased_question": ""}, "line 1: field 'paraphrased_question'"),
        ("qa", {"question": "q", "answer": "a", "prompt": "p"}, "line 1: field 'prompt' is not a field of this kind"),
        ("text", {"text": ""}, "line 1: field 'text' must be a non-empty string"),
        ("text", {"passage": "x"}, "line 1: field 'text' is required"),
    ]
    for kind, row, expected in cases:
        response = upload(client, [row], kind=kind)
        assert response.status_code == 422, row
        assert response.json()["detail"].startswith(expected), (row, response.json())
    assert client.get("/v1/datasets").json()["items"] == []


def test_upload_over_the_limit_is_413(client: TestClient, stack_settings: Settings) -> None:
    big = b'{"prompt": "' + b"x" * stack_settings.max_upload_bytes + b'", "choices": [" a", " b"], "answer": 0}\n'
    response = upload(client, big)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_other_tenants_dataset_is_404(client: TestClient, app_client: TestClient, stack_settings: Settings) -> None:
    dataset_id = upload(client, CHOICE_ROWS).json()["id"]
    from api.services.auth import create_key
    from models.db import session_scope

    with session_scope(stack_settings.database_url) as session:
        other_key = create_key(session, "another-tenant-datasets")
    response = app_client.get(f"/v1/datasets/{dataset_id}", headers={"X-API-Key": other_key})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_a_row_that_is_not_committed_leaves_no_object(
    client: TestClient, stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _objects(stack_settings)

    def failing_commit(self: Session) -> None:
        raise OperationalError("COMMIT", {}, Exception("catalogue down"))

    monkeypatch.setattr(Session, "commit", failing_commit)
    # A catalogue that fails at the commit is unavailable: the client may retry.
    assert upload(client, CHOICE_ROWS).status_code == 503
    monkeypatch.undo()
    assert _objects(stack_settings) == before
    assert client.get("/v1/datasets").json()["items"] == []


def test_rows_no_parse_or_store_could_take_are_named_and_store_nothing(
    client: TestClient, stack_settings: Settings
) -> None:
    before = _objects(stack_settings)
    good = b'{"prompt": "p", "choices": [" a", " b"], "answer": 0}\n'
    cases = {
        b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}": "line 2: nested deeper than 32 levels (column 43)",
        b'{"prompt": "p", "choices": [" a", " b"], "answer": ' + b"7" * 5000 + b"}": (
            "line 2: field 'answer' integer has 5000 digits (at most 20)"
        ),
        b'{"prompt": "p\\u0000", "choices": [" a", " b"], "answer": 0}': (
            "line 2: field 'prompt' contains a NUL character (\\u0000)"
        ),
        b'{"prompt": "p", "choices": [" a", " \\ud83d"], "answer": 0}': (
            "line 2: field 'choices[1]' contains a lone surrogate (\\ud83d) at character 1"
        ),
        b'{"prompt": "p", "choices": [" a", " b"], "answer": 0, "x": {"y": ' + b"[" * 40 + b"]" * 40 + b"}}": (
            "line 2: field 'x.y" + "[0]" * 30 + "' nested deeper than 32 levels"
        ),
    }
    for bad_line, expected in cases.items():
        response = upload(client, good + bad_line + b"\n")
        assert response.status_code == 422, bad_line[:80]
        assert response.json() == {"error": "invalid_input", "detail": expected}
    nul_name = upload(client, CHOICE_ROWS, name="parity\x00")
    assert nul_name.json() == {"error": "invalid_input", "detail": "name: contains a NUL character (\\u0000)"}
    assert _objects(stack_settings) == before
    assert client.get("/v1/datasets").json()["items"] == []
