"""Parsing every documented wire variant (piapi-api.md §2.3, §5) into models."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from qubico_async import MalformedResponseError, Task, TaskStatus
from qubico_async._convert import structure_account, structure_task

DOC_CREATE: dict[str, Any] = {
    "task_id": "90efd2db-bcfc-413f-a0be-c893850c9d68",
    "model": "Qubico/image-toolkit",
    "task_type": "face-swap",
    "status": "pending",
    "config": {"webhook_config": {"endpoint": "", "secret": ""}},
    "input": {},
    "output": None,
    "meta": {},
    "detail": None,
    "logs": [],
    "error": {"code": 0, "raw_message": "", "message": "", "detail": None},
}

DOC_COMPLETED: dict[str, Any] = {
    **DOC_CREATE,
    "status": "completed",
    "config": {
        "service_mode": "public",
        "webhook_config": {"endpoint": "https://example.com/hook", "secret": "s3cr3t-marker"},
    },
    "output": {"image_url": "https://img.example/out.png"},
    "meta": {
        "created_at": "2019-08-24T14:15:22Z",
        "started_at": "2019-08-24T14:15:23.5Z",
        "ended_at": "2019-08-24T14:15:30.123456+00:00",
        "usage": {"type": "point", "frozen": 0, "consume": 0.01},
        "is_using_private_pool": False,
    },
}


def test_documented_create_response() -> None:
    task = structure_task(DOC_CREATE)
    assert task.task_id == DOC_CREATE["task_id"]
    assert task.status is TaskStatus.PENDING
    assert not task.status.is_terminal
    assert task.output is None and task.image_url is None
    assert task.error is None  # an all-empty error object means "no error"
    assert task.config.webhook is None  # empty endpoint means no webhook
    assert task.logs == ()


def test_documented_completed_response() -> None:
    task = structure_task(DOC_COMPLETED)
    assert task.status is TaskStatus.COMPLETED and task.status.is_success
    assert task.image_url == "https://img.example/out.png"
    assert task.video_url is None
    assert task.meta.created_at == dt.datetime(2019, 8, 24, 14, 15, 22, tzinfo=dt.timezone.utc)
    assert task.meta.started_at is not None and task.meta.started_at.microsecond == 500000
    assert task.meta.ended_at is not None and task.meta.ended_at.microsecond == 123456
    assert task.meta.usage is not None and task.meta.usage.consume == pytest.approx(0.01)
    assert task.meta.is_using_private_pool is False
    assert task.config.service_mode == "public"
    assert task.config.webhook is not None and task.config.webhook.secret == "s3cr3t-marker"


def test_webhook_secret_never_in_repr() -> None:
    task = structure_task(DOC_COMPLETED)
    assert "s3cr3t-marker" not in repr(task)
    assert "s3cr3t-marker" not in repr(task.config)
    assert "s3cr3t-marker" not in repr(task.config.webhook)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("completed", TaskStatus.COMPLETED),
        ("Completed", TaskStatus.COMPLETED),
        ("COMPLETED", TaskStatus.COMPLETED),
        (" failed ", TaskStatus.FAILED),
        ("Processing", TaskStatus.PROCESSING),
        ("Staged", TaskStatus.STAGED),
        ("PENDING", TaskStatus.PENDING),
        ("cancelled", TaskStatus.CANCELLED),
        ("canceled", TaskStatus.CANCELLED),
        ("success", TaskStatus.COMPLETED),
    ],
)
def test_status_any_case(wire: str, expected: TaskStatus) -> None:
    assert structure_task({**DOC_CREATE, "status": wire}).status is expected


def test_unknown_status_is_kept_and_not_terminal() -> None:
    task = structure_task({**DOC_CREATE, "status": "Queued-For-GPU"})
    assert task.status.value == "Queued-For-GPU"
    assert task.status == "Queued-For-GPU"
    assert not task.status.is_known
    assert not task.status.is_terminal
    assert not task.status.is_success


@pytest.mark.parametrize("terminal", ["completed", "failed", "cancelled"])
def test_terminal_statuses(terminal: str) -> None:
    assert TaskStatus(terminal).is_terminal


@pytest.mark.parametrize("logs", [None, [], ["step 1", {"at": 1}]])
def test_logs_null_or_list(logs: Any) -> None:
    task = structure_task({**DOC_CREATE, "logs": logs})
    assert task.logs == tuple(logs or ())


@pytest.mark.parametrize("meta", [{}, None, {"usage": None}, {"usage": "weird"}, {"created_at": "not a date"}])
def test_meta_empty_or_odd(meta: Any) -> None:
    task = structure_task({**DOC_CREATE, "meta": meta})
    assert task.meta.created_at is None
    assert task.meta.usage is None


def test_meta_with_bad_numbers_does_not_lose_the_result() -> None:
    data = {**DOC_COMPLETED, "meta": {"created_at": "2020-01-01T00:00:00Z", "usage": {"consume": "lots"}}}
    task = structure_task(data)
    assert task.image_url == "https://img.example/out.png"
    assert task.meta.created_at == dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def test_missing_optional_fields_and_unknown_fields() -> None:
    task = structure_task({"task_id": "t1", "status": "processing", "brand_new_field": {"x": 1}})
    assert task.task_id == "t1"
    assert task.status is TaskStatus.PROCESSING
    assert task.model == "" and task.output is None and task.error is None


def test_output_keeps_unknown_keys() -> None:
    task = structure_task({**DOC_CREATE, "output": {"image_url": "https://x/y.png", "image_urls": ["a"]}})
    assert task.output is not None
    assert task.output.extra == {"image_urls": ["a"]}


def test_video_output() -> None:
    task = structure_task({**DOC_CREATE, "model": "Qubico/video-toolkit", "output": {"video_url": "https://x/v.mp4"}})
    assert task.video_url == "https://x/v.mp4"
    assert task.result_url == "https://x/v.mp4"


@pytest.mark.parametrize(
    "error",
    [
        {"code": 10000, "message": "no face detected"},  # older schema: no raw_message/detail
        {"code": 10000, "raw_message": "", "message": "no face detected", "detail": None},
        {"code": 10000, "message": "no face detected", "raw_message": None},
    ],
)
def test_failed_task_error_variants(error: dict[str, Any]) -> None:
    task = structure_task({**DOC_CREATE, "status": "failed", "error": error})
    assert task.status is TaskStatus.FAILED
    assert task.error is not None
    assert task.error.code == 10000
    assert task.error.message == "no face detected"


def test_error_with_wrong_types_is_kept_as_text() -> None:
    task = structure_task({**DOC_CREATE, "status": "failed", "error": {"code": "E_BAD", "message": "boom"}})
    assert task.error is not None and "boom" in task.error.message


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "task",
        {"status": "pending"},  # no task_id
        {"task_id": "", "status": "pending"},
        {"task_id": ["x"], "status": "pending"},
        {"task_id": "t", "status": 3},
        {"task_id": "t", "status": "pending", "output": "https://x"},
        {"task_id": "t", "status": "pending", "config": []},
    ],
)
def test_malformed_tasks_raise_typed_error(bad: Any) -> None:
    with pytest.raises(MalformedResponseError):
        structure_task(bad)


def test_task_is_frozen() -> None:
    import attrs

    task = structure_task(DOC_CREATE)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        task.status = TaskStatus.COMPLETED  # type: ignore[misc]
    assert isinstance(task, Task)


def test_timestamps_as_unix_seconds_and_garbage() -> None:
    task = structure_task({**DOC_CREATE, "meta": {"created_at": 1724511853, "ended_at": "yesterday"}})
    assert task.meta.created_at == dt.datetime.fromtimestamp(1724511853, tz=dt.timezone.utc)
    assert task.meta.ended_at is None


def test_account_info_fields() -> None:
    info = structure_account(
        {
            "equivalent_in_usd": 12.5,
            "id": 42,
            "name": "me",
            "plan": "creator",
            "is_enable": True,
            "max_concurrent_task_count": 5,
            "wallet": {"point_remain": 10},
        }
    )
    assert info.equivalent_in_usd == 12.5
    assert info.max_concurrent_task_count == 5
    assert info.extra == {"wallet": {"point_remain": 10}}


def test_account_info_tolerates_missing_and_alias_keys() -> None:
    info = structure_account({"account_name": "me", "account_id": "a1", "max_concurrent_task_count": "5"})
    assert info.name == "me" and info.id == "a1"
    assert info.max_concurrent_task_count is None
    with pytest.raises(MalformedResponseError):
        structure_account(["not", "an", "object"])


def test_the_journal_record_round_trips_through_the_converter() -> None:
    from qubico_async._convert import structure_task, unstructure_task_record

    doc = {
        "task_id": "t-1",
        "model": "Qubico/image-toolkit",
        "task_type": "face-swap",
        "status": "failed",
        "config": {"webhook_config": {"endpoint": "http://127.0.0.1:9/h", "secret": "s3cret-value"}},
        "input": {"target_image": "x" * 1000},
        "output": {"image_url": "http://127.0.0.1:9/r.png", "image_base64": "y" * 1000},
        "meta": {"usage": {"type": "point", "frozen": 0, "consume": 2000000}},
        "error": {"code": 10000, "message": "failed", "raw_message": "no face", "detail": {"big": "z" * 100}},
        "logs": ["l" * 1000],
    }
    task = structure_task(doc)
    record = unstructure_task_record(task)
    text = json.dumps(record)
    assert "s3cret-value" not in text and "x" * 100 not in text and "y" * 100 not in text and "l" * 100 not in text
    again = structure_task(record)
    assert again.error == task.error.__class__(code=10000, message="failed", raw_message="no face")  # type: ignore[union-attr]
    assert again.meta.usage == task.meta.usage and again.image_url == task.image_url
    assert again.status is task.status
