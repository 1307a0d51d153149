"""A line the server cannot parse still gets a JSON-RPC error answer (CONTRACTS.md section 4; tracker/server/stdio.py).
The SDK's stdio transport dropped such a line, so a client waited until its own timeout.

The transport tests speak raw lines to a real `python -m tracker serve` on a fresh SQLite file, because the stdio
framing is the point; every read has a deadline, so a dropped line fails the test with a message instead of
hanging it. The scanner and the line classification are tested in process."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.limits import STDIO_LINE_BYTES
from tracker.server import stdio
from tracker.server.stdio import LongLine, Refusal, read_envelope, take

from .raw_stdio import LineServer

SECRET = "sk-live-7f3a9c1e5b2d4f6a8c0e"  # stands for any value a client sends: no answer or log line may repeat it


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def tool_call(request_id: int | str, arguments: str) -> bytes:
    return (
        '{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"list_operations","arguments":%s}}'
        % (json.dumps(request_id), arguments)
    ).encode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LineServer]:
    served = LineServer(tmp_path / "t.db", tmp_path / "server.log")
    try:
        served.initialize()
        yield served
    finally:
        served.close()


# -- through a real `tracker serve` ---------------------------------------------------------------------------------


def test_a_line_that_is_not_json_gets_a_parse_error_with_id_null(server: LineServer) -> None:
    for line, what in [(b"not json at all", "a line that is not JSON"), (b"\xff\xfe\xfa\x80", "a line not in UTF-8")]:
        server.send(line)
        answer = server.next_message(what)
        assert answer["id"] is None and answer["error"]["code"] == -32700, answer
        assert answer["error"]["message"].startswith("Parse error: "), answer
        server.assert_still_serving()


def test_arguments_nested_250_levels_deep_get_an_error_with_their_id(server: LineServer) -> None:
    server.send(tool_call(7, '{"status":%s}' % nested(250)))
    answer = server.next_message("a tools/call nested 250 levels deep (id 7)")
    assert answer["id"] == 7 and answer["error"]["code"] == -32600, answer
    assert "nested too deeply" in answer["error"]["message"], answer
    server.assert_still_serving()


def test_nesting_deeper_than_pythons_own_parser_reads_is_answered_with_the_id_written_last(server: LineServer) -> None:
    """100,000 levels (Python's json module gives up at ~1,000), and the id after params, as the TypeScript SDK
    writes it."""
    deep = '{"method":"tools/call","params":{"name":"x","arguments":{"a":%s}},"jsonrpc":"2.0","id":8}' % nested(100_000)
    server.send(deep.encode())
    answer = server.next_message("a tools/call nested 100,000 levels deep, id last")
    assert answer["id"] == 8 and answer["error"]["code"] == -32600, answer
    server.assert_still_serving()


def test_the_answer_to_an_unreadable_line_repeats_no_value_from_it(server: LineServer) -> None:
    lines = {
        "too deep, after the secret": tool_call(9, '{"api_key":"%s","deep":%s}' % (SECRET, nested(250))),
        "too deep, before the secret": tool_call("nine", '{"deep":%s,"api_key":"%s"}' % (nested(250), SECRET)),
        "broken JSON": tool_call(9, '{"api_key":"%s" "no comma"}' % SECRET),
        "params not an object": b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":"%s"}' % SECRET.encode(),
        "a bad jsonrpc": b'{"jsonrpc":"%s","id":9,"method":"tools/call"}' % SECRET.encode(),
    }
    for what, line in lines.items():
        server.send(line)
        answer = server.next_message(f"{what} (a line carrying a secret)")
        assert answer["id"] in (9, "nine") and answer["error"]["code"] in (-32700, -32600), (what, answer)
        assert SECRET not in json.dumps(answer), (what, answer)
        server.assert_still_serving()
    server.close()
    log = server.errlog.read_text(errors="replace")
    assert log.count("answered an unreadable line") == len(lines) and SECRET not in log, log[-2000:]


def test_an_unreadable_notification_is_logged_and_not_answered(server: LineServer) -> None:
    server.send(b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"a":%s}}' % nested(250).encode())
    server.assert_still_serving()  # the next line on stdout is this answer: nothing was written for the notification
    server.close()
    assert "dropped an unreadable notification" in server.errlog.read_text(errors="replace")


def test_a_request_with_an_id_mcp_does_not_allow_is_answered(server: LineServer) -> None:
    """The SDK reads {"id": null, "method": ...} as a notification, which would go unanswered."""
    server.send(b'{"jsonrpc":"2.0","id":null,"method":"tools/list"}')
    answer = server.next_message("a request with id null")
    assert answer["id"] is None and answer["error"]["code"] == -32600, answer
    server.assert_still_serving()


def test_a_line_over_the_bound_is_refused_with_its_id_and_the_next_one_served(server: LineServer) -> None:
    server.send(tool_call(10, '{"cursor":"%s"}' % ("x" * (STDIO_LINE_BYTES + 1))))
    answer = server.next_message("a line over STDIO_LINE_BYTES", timeout_s=30)
    assert answer["id"] == 10 and answer["error"]["code"] == -32600, answer
    assert "longer than" in answer["error"]["message"], answer
    server.assert_still_serving()


# -- in process ----------------------------------------------------------------------------------------------------


def test_read_envelope_reads_the_top_level_members_without_recursion() -> None:
    text = '{"jsonrpc":"2.0","params":{"a":%s,"s":"]}\\"["},"method":"m","id":"x"}' % nested(200_000)
    envelope = read_envelope(text)
    assert envelope is not None and envelope.complete
    assert envelope.members == {"jsonrpc": "2.0", "params": {}, "method": "m", "id": "x"}


def test_read_envelope_of_a_cut_or_broken_text_gives_the_members_before_the_break() -> None:
    cut = read_envelope('{"id": 3, "method": "m", "params": {"a": [1, 2')
    assert cut is not None and not cut.complete and cut.members == {"id": 3, "method": "m"}
    broken = read_envelope('{"id": "a" "method": "m"}')
    assert broken is not None and not broken.complete and broken.members == {"id": "a"}
    assert read_envelope("[1, 2]") is None and read_envelope("not json") is None


def _answer(line: bytes | LongLine) -> tuple[int | str | None, int] | None:
    taken = take(line)
    assert isinstance(taken, Refusal), taken
    return None if taken.answer is None else (taken.answer.id, taken.answer.error.code)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"{", (None, -32700)),
        (b'{"jsonrpc":"2.0","id":4,"method":"m","params":{"a":"\\ud800"}}', (4, -32700)),  # a lone surrogate
        (b'{"jsonrpc":"2.0","id":5,"method":"m","params":{"a":"\xff"}}', (5, -32700)),  # not UTF-8
        (b'{"jsonrpc":"2.0","method":"m","params":{"a":},"id":6}', (6, -32700)),  # broken inside params
        (b'{"jsonrpc":"2.0","method":"m" "params":{},"id":6}', (6, -32700)),  # broken before an id that ends it
        (b'{"jsonrpc":"2.0","id":2,"method":"m","params":"text"}', (2, -32600)),
        (b'{"jsonrpc":"2.0","id":"two","method":"m","params":%s}' % nested(300).encode(), ("two", -32600)),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"m"}', (None, -32600)),
        (b'{"jsonrpc":"2.0","id":true,"method":"m"}', (None, -32600)),
        (b'{"jsonrpc":"2.0","id":"\\ud800","method":"m","params":%s}' % nested(300).encode(), (None, -32700)),
        (b"[1, 2]", (None, -32600)),
        (b'{"jsonrpc":"2.0","method":"notifications/m","params":%s}' % nested(300).encode(), None),
        (b'{"jsonrpc":"2.0","id":3,"result":%s}' % nested(300).encode(), None),  # a response: never answered
        (LongLine(b'{"jsonrpc":"2.0","id":11,"method":"m","params":{"a":"xx', b'xx"}}\n'), (11, -32600)),
        (LongLine(b'{"method":"m","params":{"a":"xx', b'xx"},"jsonrpc":"2.0","id":"t"}\n'), ("t", -32600)),
        (LongLine(b'{"method":"notifications/m","params":{"a":"xx', b'xx"}}\n'), (None, -32600)),  # an id may be cut
    ],
)
def test_take_answers_what_has_an_id_and_drops_notifications_and_responses(
    line: bytes | LongLine, expected: tuple[int | str | None, int] | None
) -> None:
    assert _answer(line) == expected


def test_take_passes_a_good_line_and_skips_a_blank_one() -> None:
    message = take(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}\n')
    assert not isinstance(message, Refusal) and message is not None and message.method == "tools/list"
    assert take(b"\n") is None and take(b"  \r\n") is None


JSONISH = ["{", "}", "[", "]", '"', "\\", ":", ",", '"id"', '"method"', '"result"', '"x"', "7", "-1.5", "null", " ", "\\u"]


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(JSONISH), max_size=60).map("".join).map(str.encode)))
def test_take_never_raises_and_every_answer_can_be_written(line: bytes) -> None:
    taken = take(line)
    if isinstance(taken, Refusal) and taken.answer is not None:
        taken.answer.model_dump_json(by_alias=True, exclude_unset=True)


def test_a_long_line_is_read_in_pieces_and_the_next_line_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdio, "STDIO_LINE_BYTES", 100)
    long_line = b'{"jsonrpc":"2.0","id":12,"method":"m","params":{"a":"' + b"y" * 1000 + b'"}}\n'
    stdin = io.BytesIO(long_line + b'{"jsonrpc":"2.0","id":13,"method":"tools/list"}\n')

    async def read_all() -> list[bytes | LongLine]:
        return [line async for line in stdio._lines(stdin)]

    lines = anyio.run(read_all)
    assert len(lines) == 2 and isinstance(lines[0], LongLine) and lines[0].tail.endswith(b'"}}\n')
    assert _answer(lines[0]) == (12, -32600)
    assert lines[1] == b'{"jsonrpc":"2.0","id":13,"method":"tools/list"}\n'
