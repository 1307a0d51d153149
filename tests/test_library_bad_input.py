"""Bad input through the library API, property-based, on SQLite and PostgreSQL alike: every hostile value handed to
start_batch, record_success, record_failure, set_total, fail, finish, get, items, list or cancel is either refused
at once with InvalidInput (nothing written, nothing buffered) or accepted and stored; a refused value never
reaches SQL, so it never turns into DatabaseUnavailable, a raw driver error, or a buffered group that every later
flush fails on. Both backends answer each value the same way."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker import InvalidInput, OperationNotFound, Tracker

HOSTILE_TEXT = ["a\x00b", "\x00", "", " ", "\x01\x1b[2J", "' OR 1=1 --", "🙂" * 300, "x" * 5000, "é" * 1100]
HOSTILE_NUMBERS = [-1, 0, 1, 2**31 - 1, 2**31, 2**53, 2**63, 10**30, 1.5, True]
HOSTILE_JSON = [{"a": "\x00"}, {"\x00": 1}, {"a": float("nan")}, {"a": float("inf")}, {1, 2}, object(), b"bytes",
                {"a": "\\u0000"}, ["ok", {"nested": ["deep"]}], "plain"]

values = st.one_of(
    st.sampled_from(HOSTILE_TEXT + HOSTILE_NUMBERS + [None, [], {}]),
    st.text(max_size=30),
    st.integers(),
    st.floats(),
)
json_values = st.one_of(st.sampled_from(HOSTILE_JSON), st.dictionaries(st.text(max_size=5), values, max_size=3))


@pytest.fixture
def tracker(backend_tracker: Tracker) -> Tracker:
    return backend_tracker


def outcome(call: Any) -> str:
    """'ok' or the TrackerError class name; anything else (a driver error, TypeError...) fails the test."""
    try:
        call()
    except InvalidInput:
        return "InvalidInput"
    except OperationNotFound:
        return "OperationNotFound"
    return "ok"


def test_recording_hostile_values_never_poison_the_batch(tracker: Tracker) -> None:
    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        calls=st.lists(
            st.tuples(st.sampled_from(["success", "failure", "total"]), values, values), min_size=1, max_size=12
        ),
        ending=st.tuples(st.sampled_from(["finish", "fail"]), st.one_of(values, json_values)),
    )
    def hostile_batch(calls: list[tuple[str, Any, Any]], ending: tuple[str, Any]) -> None:
        batch = tracker.start_batch("import")
        accepted = 0
        for kind, first, second in calls:
            if kind == "success":
                result = outcome(lambda: batch.record_success(first))
            elif kind == "failure":
                result = outcome(lambda: batch.record_failure(first, item_id="x", row_number=second))
            else:
                result = outcome(lambda: batch.set_total(first))
            if result == "ok" and kind != "total":
                accepted += 1
            batch.flush()  # never raises: a refused value was never buffered
            record = tracker.get(batch.id)
            assert tracker.store.count_items(batch.id) == (record.succeeded_count, record.failed_count)
            assert record.completed == accepted
        how, value = ending
        if how == "finish":
            ended = outcome(lambda: batch.finish(outputs=value))
        else:
            ended = outcome(lambda: batch.fail(value))
        if ended != "ok":
            batch.finish()  # a refused ending left the batch running and usable
        record = tracker.get(batch.id)
        assert record.is_terminal and record.completed == accepted

    hostile_batch()


@pytest.mark.parametrize("value", HOSTILE_TEXT + HOSTILE_NUMBERS + HOSTILE_JSON + [None], ids=lambda value: "object()" if type(value) is object else repr(value)[:24])  # stable across xdist workers
def test_each_hostile_value_gets_the_same_answer_on_both_backends(tracker: Tracker, value: Any) -> None:
    """Run on each backend with the same table: the expected answers below are backend-free, so a value that
    SQLite stores and PostgreSQL refuses (or the reverse) fails one of the two runs."""
    answers = {
        "start_batch type": outcome(lambda: tracker.start_batch(value)),
        "start_batch total": outcome(lambda: tracker.start_batch("import", total=value)),
        "start_batch inputs": outcome(lambda: tracker.start_batch("import", inputs=value)),
        "get": outcome(lambda: tracker.get(value)),
        "items": outcome(lambda: tracker.items(value, ok=True)),
        "list": outcome(lambda: tracker.list(operation_type=value)),
        "cancel": outcome(lambda: tracker.cancel(value)),
    }
    batch = tracker.start_batch("import")
    answers["record_success"] = outcome(lambda: batch.record_success(value))
    answers["record_failure error"] = outcome(lambda: batch.record_failure(value, item_id="x"))
    answers["record_failure row_number"] = outcome(lambda: batch.record_failure("bad", row_number=value))
    answers["set_total"] = outcome(lambda: batch.set_total(value))
    answers["finish outputs"] = outcome(lambda: batch.finish(outputs=value))
    assert answers == expected_answers(value)
    if answers["finish outputs"] != "ok":
        batch.finish()
    assert tracker.store.count_items(batch.id) == (
        tracker.get(batch.id).succeeded_count, tracker.get(batch.id).failed_count
    )


def expected_answers(value: Any) -> dict[str, str]:
    """What the library promises for `value`, worked out from its documented rules, not from a backend."""
    text = isinstance(value, str)
    whole = isinstance(value, int) and not isinstance(value, bool)
    nul = text and "\x00" in value
    blank = text and not value.strip()
    plain_json = _is_plain_json(value)
    item_id_ok = (text or whole) and bool(str(value).strip()) and len(str(value)) <= 1024 and not nul
    return {
        "start_batch type": "ok" if text and not blank and len(value) <= 64 and not nul else "InvalidInput",
        "start_batch total": "ok" if whole and 0 <= value <= 2**31 - 1 else "InvalidInput",
        "start_batch inputs": "ok" if plain_json else "InvalidInput",
        "get": "ok" if text else "InvalidInput",
        "items": "ok" if text else "InvalidInput",
        "list": "ok" if value is None or (text and not blank and len(value) <= 64 and not nul) else "InvalidInput",
        "cancel": "OperationNotFound" if text else "InvalidInput",
        "record_success": "ok" if item_id_ok else "InvalidInput",
        "record_failure error": "ok" if text and not blank else "InvalidInput",
        "record_failure row_number": "ok" if whole and 1 <= value <= 2**31 - 1 else "InvalidInput",
        "set_total": "ok" if whole and 0 <= value <= 2**31 - 1 else "InvalidInput",
        "finish outputs": "ok" if plain_json else "InvalidInput",
    }


def _is_plain_json(value: Any) -> bool:
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, list):
        return all(_is_plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and "\x00" not in k and _is_plain_json(v) for k, v in value.items())
    return False
