"""Bad input through the real MCP protocol, property-based: every tool the server lists (read at session start, so
tools added later are covered too) is called with arguments generated from its own input schema and then spoiled
with hostile values: wrong types, 1 MB strings, unicode and control characters, null bytes, negative and huge
numbers, forged cursors (including ones with a valid checksum, since the cursor key is public), SQL-looking text.

Every call must get an answer (a tool error with a one-line message that is not the generic "unexpected
failure" one, or a structured answer; an unknown or a missing argument is refused by its name), the server must
stay up (a good call right after answers), and a checksum of operations and operation_items, read through a
separate connection, must not change for read-only tools and for rejected writes. One in-process `tracker serve`
session per test (the raw-frames test speaks stdio to a real subprocess); the upstream is a refused 127.0.0.1 port
and no API key is set, so nothing leaves the machine and failing runs fail at once."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tracker import Settings, Tracker
from tracker.status import _checksum, encode_cursor
from tracker.store.runs import RunStore
from tracker.timeutil import iso, utcnow

from tracker.testing.client import SyncToolClient, sync_served
from tracker.testing.client import ToolAnswer as Answer

from .db_checks import assert_counters_match_items, checksum, integrity_check, refused_port
from .raw_stdio import LineServer

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- what the database holds before the fuzzing starts ------------------------------------------------------------


def seed(settings_: Settings) -> dict[str, Any]:
    """A finished batch with more items than a page, a running one, a cancelled and a failed one, a finished run.
    The Tracker is closed before the server starts, so nothing but the server can write afterwards."""
    with Tracker(settings_) as tracker:
        done = tracker.start_batch("import", total=160, inputs={"file": "contacts.csv"})
        for n in range(130):
            done.record_success(f"contact-{n:04d}")
        for n in range(30):
            done.record_failure(f"bad row {n}: ' OR 1=1 --", item_id=f"x{n}", row_number=n + 1)
        done.finish()
        running = tracker.start_batch("update", total=10)
        running.record_success("u-1")
        running.flush()
        cancelled = tracker.start_batch("delete", total=3)
        cancelled.record_success("d-1")
        cancelled.cancel()
        failed = tracker.start_batch("dartql", total=2)
        failed.fail("query rejected")
        runs = RunStore(tracker.engine)
        now = utcnow()
        run = runs.create(
            {"id": "run_grid_run_seeded0123456789abcdef", "kind": "run", "operation_type": "grid_run",
             "started_at": now, "grid_id": "g1", "mode": "async", "inputs": {"inputs": {"email": "a@x.io"}}}
        )
        runs.mark_submitted(run.id, "11111111-2222-3333-4444-555555555555")
        runs.finish(run.id, "completed", utcnow(), {"enriched": {"value": "v", "name": "Enriched"}}, None)
        last = tracker.list(limit=2)[-1]
        ids = {"done": done.id, "running": running.id, "cancelled": cancelled.id, "failed": failed.id, "run": run.id}
    positions = [
        {"v": 1, "p": "items", "op": ids["done"], "o": "succeeded", "s": 50},
        {"v": 1, "p": "items", "op": ids["done"], "o": "failed", "s": 140},
        {"v": 1, "p": "list", "t": iso(last.started_at), "i": last.id, "f": [None, None, None]},
    ]
    cursors = [_sign(position) for position in positions]
    assert cursors[0] == encode_cursor("items", op=ids["done"], o="succeeded", s=50)
    return {**ids, "request_id": "11111111-2222-3333-4444-555555555555", "cursors": cursors, "positions": positions}


# -- strategies -----------------------------------------------------------------------------------------------------

# Any unicode but lone surrogates: the SDK client cannot encode those (test_raw_frames sends them by hand).
TEXT_CHARS = st.characters(blacklist_categories=("Cs",))
CONTROL_CHARS = st.characters(min_codepoint=0, max_codepoint=0x1F)
SQLISH = [
    "' OR '1'='1",
    "'; DROP TABLE operations; --",
    "1; DELETE FROM operation_items",
    "\" OR \"\"=\"",
    "') UNION SELECT id, error FROM operations --",
    "%",
    "_",
    "*",
    "batch_%",
    "NULL",
    "null",
    "None",
    "true",
    "0",
    "[]",
    "{}",
    "\\",
    "$1",
    "%s%s%s",
    "{0}{1}",
    "../../../../etc/passwd",
]
ODD_TEXT = ["", " ", "\t\n\r", "\x00", "a\x00b", "\u202egnirts", "\ufeff", "🙂" * 40, "e\u0301" * 30, "\u2028\u2029"]
BIG = ["x" * 1_000_000, "é" * 500_000, "\x00" * 1_000_000, "🙂" * 250_000]


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


ODD_STRUCTURES = [_deep(60), {"$ne": None}, {"$gt": ""}, ["'; --"] * 1000, {str(n): n for n in range(500)}]
NUMBERS = [-1, 0, 1, -(2**63), 2**63 - 1, 2**63, 2**64, 10**30, -(10**30), 1.5, -0.5, 1e308, -1e308, 1.0, 100.0, 1e-300]

numbers = st.one_of(st.sampled_from(NUMBERS), st.integers(), st.floats(allow_nan=False, allow_infinity=False))
short_text = st.one_of(st.text(TEXT_CHARS, max_size=40), st.text(CONTROL_CHARS, min_size=1, max_size=8),
                       st.sampled_from(SQLISH + ODD_TEXT))
leaf = st.one_of(short_text, numbers, st.booleans(), st.none())


def forged_cursors(real: dict[str, Any]) -> st.SearchStrategy[str]:
    """Cursors a client could make: real ones edited or cut, random base64, and well-formed ones (valid checksum)
    holding positions tracker never handed out."""
    ids = [real[k] for k in ("done", "running", "cancelled", "failed", "run")]
    position = st.fixed_dictionaries(
        {},
        optional={
            "op": st.one_of(st.sampled_from(ids), leaf),
            "o": st.one_of(st.sampled_from(["succeeded", "failed"]), leaf),
            "s": st.one_of(numbers, leaf),
            "t": st.one_of(
                st.sampled_from(
                    ["2026-11-23T18:57:33.123Z", "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00.000Z", "garbage"]
                ),
                leaf,
            ),
            "i": st.one_of(st.sampled_from(ids), leaf),
            "f": st.one_of(st.just([None, None, None]), st.lists(leaf, max_size=3), leaf),
        },
    )

    @st.composite
    def well_formed(draw: Callable) -> str:
        payload = {"v": draw(st.sampled_from([1, 1, 1, 2, 0, None, "1"])),
                   "p": draw(st.sampled_from(["items", "list", "other", ""])), **draw(position)}
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(_checksum(raw) + raw).decode().rstrip("=")

    @st.composite
    def edited(draw: Callable) -> str:
        token = draw(st.sampled_from(real["cursors"]))
        cut = draw(st.integers(0, len(token)))
        how = draw(st.sampled_from(["cut", "flip", "append"]))
        if how == "cut":
            return token[:cut]
        if how == "flip" and cut < len(token):
            return token[:cut] + ("A" if token[cut] != "A" else "B") + token[cut + 1:]
        return token + draw(st.text(TEXT_CHARS, max_size=5))

    random_b64 = st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
    return st.one_of(well_formed(), mutated_cursors(real), edited(), random_b64, st.sampled_from(real["cursors"]))


def _sign(position: dict[str, Any]) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(_checksum(raw) + raw).decode().rstrip("=")


def mutated_cursors(real: dict[str, Any]) -> st.SearchStrategy[str]:
    """A real cursor's position with one field replaced, removed or added, signed again (the key is public)."""

    @st.composite
    def build(draw: Callable) -> str:
        position = dict(draw(st.sampled_from(real["positions"])))
        key = draw(st.sampled_from([*position, "extra"]))
        if draw(st.integers(0, 4)) == 0:
            position.pop(key, None)
        else:
            position[key] = draw(st.one_of(numbers, leaf, st.sampled_from(BIG[:1]), st.sampled_from(ODD_STRUCTURES)))
        return _sign(position)

    return build()


def hostile_values(real: dict[str, Any]) -> st.SearchStrategy[Any]:
    ids = [real[k] for k in ("done", "running", "cancelled", "failed", "run")] + [real["request_id"]]
    near_ids = st.sampled_from(ids).flatmap(
        lambda i: st.sampled_from([i + "\x00", i.upper(), " " + i, i + "'--", i[:-1], i + "%", i * 9])
    )
    return st.one_of(
        leaf,
        near_ids,
        forged_cursors(real),
        st.sampled_from(BIG),
        st.sampled_from(ODD_STRUCTURES),
        st.lists(leaf, max_size=5),
        st.dictionaries(short_text, leaf, max_size=5),
    )


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def from_schema(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that satisfy a (small) JSON schema: the shapes pydantic emits for tool parameters."""
    schema = _resolve(schema, root)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(option, root) for option in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, root) for k in kind])
    if kind == "string":
        low = schema.get("minLength", 0)
        return st.text(TEXT_CHARS, min_size=low, max_size=max(low, min(schema.get("maxLength", 64), 300)))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(from_schema(schema.get("items", {}), root), min_size=low, max_size=max(low, 3))
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        if properties:
            required = schema.get("required", [])
            return st.fixed_dictionaries(
                {k: from_schema(properties[k], root) for k in required},
                optional={k: from_schema(v, root) for k, v in properties.items() if k not in required},
            )
        extra = schema.get("additionalProperties", {})
        low = schema.get("minProperties", 0)
        values = from_schema(extra if isinstance(extra, dict) else {}, root)
        return st.dictionaries(st.text(TEXT_CHARS, min_size=1, max_size=20), values, min_size=low, max_size=max(low, 3))
    return leaf


def arguments(schema: dict[str, Any], real: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Schema-valid arguments, then each parameter kept, replaced by a hostile value or a real id/cursor, or
    dropped; sometimes an unknown parameter is added."""
    names = list(schema.get("properties", {}))
    reals = st.sampled_from([real[k] for k in ("done", "running", "cancelled", "failed", "run", "request_id")]
                            + real["cursors"])
    hostile = hostile_values(real)

    @st.composite
    def build(draw: Callable) -> dict[str, Any]:
        args = dict(draw(from_schema(schema, schema)))
        for name in names:
            how = draw(st.sampled_from(["keep", "keep", "hostile", "hostile", "real", "drop"]))
            if how == "hostile":
                args[name] = draw(hostile)
            elif how == "real":
                args[name] = draw(reals)
            elif how == "drop":
                args.pop(name, None)
        if draw(st.integers(0, 9)) == 0:
            args[draw(st.sampled_from(["extra", "__proto__", "limit; --", ""]))] = draw(leaf)
        return args

    return build()


# -- the checks -----------------------------------------------------------------------------------------------------


def check_answer(tool: str, answer: Answer) -> None:
    """An answer, not a crash: an error with a bounded message saying what was wrong (never the generic text of an
    unexpected exception, a traceback, SQL or an echo of a huge argument), or a structured answer."""
    if answer.is_error:
        assert answer.text.strip(), f"{tool}: empty error"
        assert answer.text != f"Error executing tool {tool}", f"{tool}: an unexpected exception (see server log)"
        assert len(answer.text) < 2000, f"{tool}: error of {len(answer.text)} chars"
        assert "\n" not in answer.text, f"{tool}: an error of more than one line: {answer.text[:300]}"
        for leak in ("Traceback", "SELECT ", "INSERT ", "UPDATE operations", "sqlalchemy", "psycopg", "sqlite3."):
            assert leak not in answer.text, f"{tool}: {answer.text[:300]}"
        # The database is healthy: an error blaming it means a bad value reached SQL (e.g. NUL on PostgreSQL).
        assert not re.search(r"\bdatabase\b", answer.text, re.IGNORECASE), f"{tool}: {answer.text[:300]}"
    else:
        assert isinstance(answer.value, dict), f"{tool}: {answer.text[:300]}"
        if answer.value.get("found") is False:
            assert answer.value.get("message"), answer.value


def check_call(session: SyncToolClient, tool: str, args: dict[str, Any]) -> Answer:
    """Call, check_answer, and check the argument names (CONTRACTS.md section 4): an unknown name is refused
    naming it, else a missing required one is; a call whose names are right is never refused for its names."""
    answer = session.call(tool, args)
    check_answer(tool, answer)
    schema = session.tools[tool].input_schema
    unknown = [name for name in args if name not in schema.get("properties", {})]
    missing = [name for name in schema.get("required", []) if name not in args]
    if unknown:
        assert answer.is_error and "unknown argument" in answer.text, f"{tool} took {unknown}: {answer.text[:300]}"
        assert json.dumps(unknown[0]) in answer.text, f"{tool}: {answer.text[:300]}"
    elif missing:
        assert answer.is_error and f"{missing[0]} " in answer.text and " required" in answer.text, answer.text[:300]
    else:
        assert not re.search(r"unknown argument| (is|are) required$", answer.text), f"{tool}: {answer.text[:300]}"
    return answer


def check_still_up(session: SyncToolClient, real: dict[str, Any]) -> None:
    good = session.call("get_batch_status", {"batch_operation_id": real["done"]})
    assert not good.is_error and good.value["found"] is True, good.text[:300]
    assert good.value["operation"]["progress"]["completed"] == 160


def served(db: str, port: int | None = None) -> Any:
    """`tracker serve` in this process on `db`, with no API key, its upstream (if any) a refused port."""
    env = {"TRACKER_FLUSH_INTERVAL": "0.05"}
    if port is not None:
        env["BITSCALE_API_BASE"] = f"http://127.0.0.1:{port}/api/v1"
    return sync_served(Settings.from_env(env, db=db))


def _tools(session: SyncToolClient, read_only: bool) -> list[str]:
    names = sorted(
        name for name, tool in session.tools.items()
        if bool(tool.annotations is not None and tool.annotations.read_only_hint) == read_only
    )
    assert names, f"the server lists no {'read-only' if read_only else 'writing'} tools"
    return names


# -- the tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("examples", [pytest.param(100, id="sqlite")])
def test_read_only_tools_answer_everything_and_write_nothing(
    tmp_path: Path, examples: int, caplog: pytest.LogCaptureFixture
) -> None:
    _fuzz_read_only(Settings.from_env({}, db=str(tmp_path / "t.db")), caplog, examples)


def test_read_only_tools_on_postgresql(postgres_server, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    db = postgres_server.create_database(f"fuzz_{os.getpid()}_{time.monotonic_ns()}")
    _fuzz_read_only(Settings.from_env({}, db=db), caplog, 60)


def _fuzz_read_only(settings_: Settings, caplog: pytest.LogCaptureFixture, examples: int) -> None:
    real = seed(settings_)
    with refused_port() as port, served(settings_.db, port) as session:
        tools = _tools(session, read_only=True)
        strategies = {name: arguments(session.tools[name].input_schema, real) for name in tools}
        before = checksum(settings_.db)

        @settings(FUZZ, max_examples=examples)
        @given(data=st.data())
        def read_only_call(data: st.DataObject) -> None:
            tool = data.draw(st.sampled_from(tools), label="tool")
            args = data.draw(strategies[tool], label="arguments")
            check_call(session, tool, args)
            assert checksum(settings_.db) == before, f"{tool} changed the database"
            check_still_up(session, real)

        read_only_call()
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_forged_cursors_with_valid_checksums(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """The cursor checksum is not a secret, so any position can arrive well-formed: a real cursor's position with
    one field changed is a clear tool error or a page, on both backends, and nothing is written."""
    if backend == "sqlite":
        db = str(tmp_path / "t.db")
    else:
        db = request.getfixturevalue("postgres_server").create_database(f"cursors_{os.getpid()}_{time.monotonic_ns()}")
    settings_ = Settings.from_env({}, db=db)
    real = seed(settings_)
    field_values = st.one_of(numbers, numbers, leaf, st.sampled_from(ODD_STRUCTURES))
    with served(db) as session:
        before = checksum(db)

        @settings(FUZZ, max_examples=60 if backend == "sqlite" else 30)
        @given(which=st.integers(0, len(real["positions"]) - 1), key=st.sampled_from(["v", "p", "op", "o", "s", "t",
               "i", "f", "extra"]), value=field_values, drop=st.booleans())
        @example(which=0, key="s", value=2**63, drop=False)
        @example(which=0, key="s", value=10**30, drop=False)
        @example(which=1, key="s", value=-1, drop=False)
        @example(which=1, key="s", value=2**63 - 1, drop=False)
        @example(which=2, key="t", value="9999-12-31T23:59:59.999999Z", drop=False)
        @example(which=2, key="t", value="0001-01-01T00:00:00.000Z", drop=False)
        @example(which=2, key="i", value="a\x00b", drop=False)
        @example(which=2, key="i", value=10**30, drop=False)
        @example(which=2, key="f", value="x", drop=False)
        def forged(which: int, key: str, value: Any, drop: bool) -> None:
            position = dict(real["positions"][which])
            if drop:
                position.pop(key, None)
            else:
                position[key] = value
            cursor = _sign(position)
            if real["positions"][which]["p"] == "items":
                outcome = position.get("o") if position.get("o") in ("succeeded", "failed") else "succeeded"
                tool, args = "get_operation_items", {"operation_id": real["done"], "outcome": outcome, "cursor": cursor}
            else:
                tool, args = "list_operations", {"cursor": cursor}
            check_call(session, tool, args)
            assert checksum(db) == before

        forged()
    assert "Traceback" not in caplog.text


HOSTILE_TABLE: list[Any] = [
    "a\x00b", "\x00", "", " \t\n", "\x01\x1b[2J\x7f", "' OR '1'='1' --", "'; DROP TABLE operations; --", "%", "🙂" * 100,
    "x" * 1_000_000, -1, 0, 2**31, 2**63, 10**30, -(10**30), 1.5, 1e308, True, None, [], {}, ["a\x00"], {"a\x00": "b"},
    {"k": "a\x00b"}, _deep(60),
]


def baseline_arguments(schema: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    """Plausible values for the required parameters, so that each hostile value is the only thing wrong."""

    def plausible(prop: dict[str, Any]) -> Any:
        prop = _resolve(prop, schema)
        if "enum" in prop:
            return next(v for v in prop["enum"] if v is not None)
        kind = prop.get("type")
        kind = next((k for k in kind if k != "null"), "string") if isinstance(kind, list) else kind
        if kind == "integer":
            return prop.get("minimum", 1)
        if kind == "object":
            return {"email": "a@x.io"}
        if kind == "array":
            return [plausible(prop.get("items", {"type": "string"}))]
        return real["done"]

    return {name: plausible(schema["properties"][name]) for name in schema.get("required", [])}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_parameter_of_every_tool_takes_each_hostile_value(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Exhaustive rather than random: each parameter of each listed tool, in turn, gets each value of a fixed table
    (NUL, 1 MB, control characters, SQL, huge and negative numbers, wrong types, deep nesting) with plausible
    values elsewhere. Read-only tools go first and must leave the checksum alone; then the writing tools."""
    if backend == "sqlite":
        db = str(tmp_path / "t.db")
    else:
        db = request.getfixturevalue("postgres_server").create_database(f"table_{os.getpid()}_{time.monotonic_ns()}")
    settings_ = Settings.from_env({}, db=db)
    real = seed(settings_)
    problems: list[str] = []
    with refused_port() as port, served(db, port) as session:
        before = checksum(db)
        for read_only in (True, False):
            for tool in _tools(session, read_only):
                schema = session.tools[tool].input_schema
                for name in schema.get("properties", {}):
                    for value in HOSTILE_TABLE:
                        args = {**baseline_arguments(schema, real), name: value}
                        try:
                            check_call(session, tool, args)
                        except AssertionError as exc:
                            problems.append(f"{tool}({name}={str(value)[:20]!r}): {str(exc).splitlines()[0][:200]}")
                        if read_only and checksum(db) != before:
                            problems.append(f"{tool}({name}={str(value)[:20]!r}) changed the database")
                            before = checksum(db)
                check_still_up(session, real)
    assert not problems, "\n".join(problems)


def test_rejected_writes_change_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Writing tools called with arguments their schema rejects: a tool error, nothing written. Calls that the
    schema allows but that name nothing (cancel of an unknown or ended operation) write nothing either."""
    settings_ = Settings.from_env({}, db=str(tmp_path / "t.db"))
    real = seed(settings_)
    with refused_port() as port, served(settings_.db, port) as session:
        tools = _tools(session, read_only=False)
        strategies = {name: arguments(session.tools[name].input_schema, real) for name in tools}
        validators = {name: jsonschema.Draft202012Validator(session.tools[name].input_schema) for name in tools}
        before = checksum(settings_.db)

        @settings(FUZZ, max_examples=60)
        @given(data=st.data())
        def rejected_write(data: st.DataObject) -> None:
            tool = data.draw(st.sampled_from(tools), label="tool")
            args = data.draw(strategies[tool], label="arguments")
            assume(not validators[tool].is_valid(args))
            answer = check_call(session, tool, args)
            assert answer.is_error, f"{tool} accepted arguments its schema rejects: {answer.text[:300]}"
            assert checksum(settings_.db) == before, f"a rejected {tool} call changed the database"
            check_still_up(session, real)

        rejected_write()

        # Allowed by the schema, but naming nothing that can change: found false or an error, nothing written.
        if "cancel_operation" in tools:
            for op_id in [real["done"], real["cancelled"], real["failed"], real["run"], "batch_x_" + "0" * 32,
                          real["running"] + "\x00", "' OR status='running' --"]:
                answer = session.call("cancel_operation", {"operation_id": op_id})
                check_answer("cancel_operation", answer)
                assert answer.is_error or answer.value["found"] is False, answer.text[:300]
                assert checksum(settings_.db) == before
    assert "Traceback" not in caplog.text


def test_writing_tools_always_answer_and_keep_the_database_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Writing tools with schema-valid and hostile arguments alike (run_grid may record failed runs, a batch may
    start, cancel may cancel): every call answers, the server stays up, and afterwards the file is intact and
    every operation's counters equal its item rows."""
    settings_ = Settings.from_env({}, db=str(tmp_path / "t.db"))
    real = seed(settings_)
    with refused_port() as port, served(settings_.db, port) as session:
        tools = _tools(session, read_only=False)
        strategies = {name: arguments(session.tools[name].input_schema, real) for name in tools}
        valid = {name: from_schema(session.tools[name].input_schema, session.tools[name].input_schema)
                 for name in tools}

        @settings(FUZZ, max_examples=60)
        @given(data=st.data())
        def any_write(data: st.DataObject) -> None:
            tool = data.draw(st.sampled_from(tools), label="tool")
            args = data.draw(st.one_of(valid[tool], strategies[tool]), label="arguments")
            check_call(session, tool, args)
            check_still_up(session, real)

        any_write()
        # Batches started above fail their rows at once (no API key); give their workers a moment to end them.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            listing = session.call("list_operations", {"status": "running", "limit": 100})
            if [op["operation_id"] for op in listing.value["operations"]] == [real["running"]] or not any(
                op["operation_type"] == "grid_run" for op in listing.value["operations"]
            ):
                break
            time.sleep(0.2)
    assert integrity_check(tmp_path / "t.db") == "ok"
    assert_counters_match_items(tmp_path / "t.db")
    assert "Traceback" not in caplog.text


# -- frames the SDK client would never send -------------------------------------------------------------------------


def test_raw_frames_no_client_would_send(tmp_path: Path) -> None:
    """Malformed JSON, invalid UTF-8, lone surrogates, 100,000 levels of nesting, a 5 MB line, numbers beyond any
    range: the server stays up, answers every frame that carries an id, writes nothing, and a good call afterwards
    works. (Frames that are not valid JSON-RPC, lone surrogates included, are answered by tracker's stdio transport
    with a JSON-RPC error, id null where none can be read: tests/test_stdio_errors.py.)"""
    settings_ = Settings.from_env({}, db=str(tmp_path / "t.db"))
    real = seed(settings_)
    before = checksum(settings_.db)
    server = LineServer(tmp_path / "t.db", tmp_path / "server.log")
    call = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":%s}}'
    without_id = [  # answered with id null, which wait_for passes over
        b"not json at all",
        b"{",
        b"\xff\xfe\xfa invalid utf-8",
        b"[" * 100_000 + b"]" * 100_000,
    ]
    answered = {
        2: b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":"not an object"}',
        4: (call % (4, "get_batch_status", '{"batch_operation_id":"\\ud800"}')).encode(),
        10: (call % (10, "run_grid", '{"grid_id":"\\ud800","inputs":{"\\ud800":"\\udfff"}}')).encode(),
        3: b'{"jsonrpc":"2.0","id":3,"method":"no/such/method","params":{}}',
        5: (call % (5, "get_batch_status", '{"batch_operation_id":"a\\u0000b"}')).encode(),
        6: (call % (6, "get_batch_status", '{"batch_operation_id":"' + "y" * 5_000_000 + '"}')).encode(),
        7: (call % (7, "list_operations", '{"limit":1e999}')).encode(),
        8: (call % (8, "list_operations", '{"limit":123456789012345678901234567890}')).encode(),
        9: (call % (9, "get_operation_items", '{"operation_id":"%s","limit":NaN}' % real["done"])).encode(),
        11: (call % (11, "get_operation_items", '{"operation_id":"%s","cursor":"\\u0000"}' % real["done"])).encode(),
    }
    try:
        server.initialize()
        for frame in [*without_id, *answered.values()]:
            server.send(frame)
        for request_id in answered:
            answer = server.wait_for(request_id, timeout_s=30.0)  # after a 5 MB line, on a busy machine
            result = answer.get("result", {})
            assert "error" in answer or result.get("isError") or result["structuredContent"]["found"] is False, answer
            text = json.dumps(answer)
            assert "Traceback" not in text and len(text) < 2000, text[:300]
        good = server.request(
            "tools/call", {"name": "get_batch_status", "arguments": {"batch_operation_id": real["done"]}}
        )
        assert good["result"]["structuredContent"]["operation"]["progress"]["completed"] == 160
        assert server.process.poll() is None
    finally:
        server.close()
    assert checksum(settings_.db) == before
