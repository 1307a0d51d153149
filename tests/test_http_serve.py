"""`tracker serve --http`: a real `python -m tracker serve --http 127.0.0.1:0` subprocess on a tmp_path SQLite file,
driven by the official Python client's Streamable HTTP transport and by raw HTTP requests: bearer tokens, refused
starts, Host checks, the body bound, the per-subject concurrency limit, two servers on one database, SIGTERM with a
call in flight, and `tracker token new`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer

from tracker import Settings, Tracker
from tracker.cli import main
from tracker.errors import InvalidInput
from tracker.limits import HTTP_BODY_BYTES
from tracker.remote import service as service_module
from tracker.server import http as http_module
from tracker.server.app import ServedDatabase
from tracker.server.caller import current_subject
from tracker.testing.env import child_env
from tracker.tokens import TokenFile, add_token, token_hash

from .conftest import PYTHON, REPO, FakeUpstreamProcess
from .http_server import HttpServer, http_server, http_servers, http_session, post, sync_http_session, wait_for
from .ts_sdk import call, http_params, run_client

TOOLS = 11
CALL_LIST = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_operations", "arguments": {}}}
)
TOKEN_SHAPE = re.compile(r"trk_[A-Za-z0-9_-]{43}")


def _one_line_json(response: httpx2.Response) -> dict[str, Any]:
    text = response.text
    assert "\n" not in text.strip() and "Traceback" not in text, text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return json.loads(text)


def _sse_result(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer in an SSE answer (stateless: one `data:` event per request)."""
    data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    assert data, response.text
    return json.loads(data[-1])


# -- one authenticated server shared by the HTTP-level tests of this module ------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpServer, dict[str, str]]]:
    directory = tmp_path_factory.mktemp("http")
    tokens = directory / "tokens"
    issued = {subject: add_token(tokens, subject)[0] for subject in ("alice", "bob")}
    args = ["--tokens", str(tokens), "--allowed-host", "tracker.example.com"]
    with http_server(directory / "t.db", args, TRACKER_HTTP_CONCURRENCY="2") as server:
        yield server, issued


def test_a_tool_call_over_streamable_http_with_a_good_token(shared: tuple[HttpServer, dict[str, str]]) -> None:
    server, tokens = shared
    with sync_http_session(server.url, tokens["alice"]) as session:
        assert len(session.tools) == TOOLS
        assert session.answer("list_operations") == {"operations": [], "count": 0, "next_cursor": None}
        unknown = session.answer("get_batch_status", batch_operation_id="batch_import_unknown")
        assert unknown["found"] is False
        bad = session.call("get_batch_status", batch_operation_id="")
        assert bad.is_error and "batch_operation_id" in bad.text and "\n" not in bad.text
    # The proxy's public name, allowed by --allowed-host, is served too.
    named = post(server.url, CALL_LIST, tokens["bob"], Host="tracker.example.com")
    assert named.status_code == 200 and _sse_result(named)["result"]["structuredContent"]["count"] == 0


def test_no_token_or_a_wrong_one_is_401_with_one_line_and_no_token_in_the_log(
    shared: tuple[HttpServer, dict[str, str]],
) -> None:
    server, tokens = shared
    wrong = "trk_" + "x" * 43
    for token in (None, wrong, tokens["alice"][:-1]):
        refused = post(server.url, CALL_LIST, token)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer ")
        assert _one_line_json(refused)["error"] == "invalid_token"
    wait_for(lambda: server.stderr.count("http: 401") >= 3)
    assert "no bearer token" in server.stderr and "bearer token not accepted" in server.stderr
    for secret in (wrong, *tokens.values(), *(token_hash(t) for t in tokens.values())):
        assert secret not in server.stderr


def test_a_bad_host_or_origin_is_refused_and_every_error_is_one_line_of_json(
    shared: tuple[HttpServer, dict[str, str]],
) -> None:
    server, tokens = shared
    token = tokens["alice"]
    rebound = post(server.url, CALL_LIST, token, Host="evil.example")  # DNS rebinding: a foreign name, our address
    assert rebound.status_code == 421 and _one_line_json(rebound)["error_description"] == "Invalid Host header"
    foreign = post(server.url, CALL_LIST, token, Origin="http://evil.example")
    assert foreign.status_code == 403 and _one_line_json(foreign)["error_description"] == "Invalid Origin header"
    base = server.url.removesuffix("/mcp")
    answers = {
        404: httpx2.get(f"{base}/elsewhere", headers={"Authorization": f"Bearer {token}"}),
        405: httpx2.get(server.url, headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}),
        400: post(server.url, "{}", token, **{"Content-Type": "text/plain"}),
    }
    for status, answer in answers.items():
        assert answer.status_code == status, (status, answer.text)
        assert _one_line_json(answer)
    assert answers[405].headers["allow"] == "POST"
    wait_for(lambda: "http: 421" in server.stderr)
    assert "(subject alice)" in server.stderr  # the verified subject, in the log line of a refused request


def _raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    """A request written by hand on a new connection, its body perhaps cut short (the server then waits for it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def _head(port: int, token: str, length: int) -> str:
    return "\r\n".join([
        "POST /mcp HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Authorization: Bearer {token}",
        "Content-Type: application/json", "Accept: application/json, text/event-stream", f"Content-Length: {length}",
    ])


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", data.partition(b"\r\n\r\n")[0], re.IGNORECASE)
    return int(found.group(1)) if found else 0


def test_an_oversized_body_is_413_and_the_server_goes_on_serving(shared: tuple[HttpServer, dict[str, str]]) -> None:
    server, tokens = shared
    declared = _raw_request(server.port, _head(server.port, tokens["alice"], HTTP_BODY_BYTES + 1))
    status, body = _read_answer(declared)
    declared.close()
    assert status == 413 and b"\n" not in body.strip()
    assert json.loads(body)["error"] == "request_entity_too_large"
    # A body larger than the bound sent whole, without a declared length (chunked): read up to the bound, refused.
    streamed = httpx2.post(
        server.url, content=iter([b"[" + b" " * 2**20] * (HTTP_BODY_BYTES // 2**20 + 2)),
        headers={"Authorization": f"Bearer {tokens['alice']}", "Content-Type": "application/json",
                 "Accept": "application/json, text/event-stream"},
        timeout=30,
    )
    assert streamed.status_code == 413 and _one_line_json(streamed)
    served = post(server.url, CALL_LIST, tokens["alice"])
    assert served.status_code == 200 and _sse_result(served)["result"]["isError"] is False


def test_a_subject_over_its_concurrency_limit_gets_429_while_another_is_served(
    shared: tuple[HttpServer, dict[str, str]],
) -> None:
    server, tokens = shared
    # Two requests of alice held in flight (TRACKER_HTTP_CONCURRENCY=2): their bodies are promised, not sent.
    held = [_raw_request(server.port, _head(server.port, tokens["alice"], 1000), b'{"jsonrpc"') for _ in range(2)]
    try:
        answers: list[httpx2.Response] = []

        def third_is_refused() -> bool:
            answers.append(post(server.url, CALL_LIST, tokens["alice"]))
            return answers[-1].status_code == 429

        wait_for(third_is_refused, timeout=10, every=0.05)
        refused = answers[-1]
        assert refused.headers["retry-after"] == "1"
        assert _one_line_json(refused)["error"] == "too_many_requests"
        other = post(server.url, CALL_LIST, tokens["bob"])  # another subject is still served meanwhile
        assert other.status_code == 200 and _sse_result(other)["result"]["isError"] is False
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: post(server.url, CALL_LIST, tokens["alice"]).status_code == 200, timeout=10)  # slots freed


def test_the_typescript_sdk_client_over_streamable_http(shared: tuple[HttpServer, dict[str, str]]) -> None:
    server, tokens = shared
    output = run_client(
        None,
        [call("list_operations"), call("get_batch_status", batch_operation_id="batch_import_unknown")],
        server=http_params(server.url, {"Authorization": f"Bearer {tokens['bob']}"}),
    )
    assert len(output["tools"]) == TOOLS
    listed, unknown = output["calls"]
    assert listed["result"]["structuredContent"]["count"] == 0, listed
    assert unknown["result"]["structuredContent"]["found"] is False, unknown
    refused = run_client(None, [call("list_operations")], server=http_params(server.url), allow_fatal=True)
    assert refused["fatal"]["code"] == 401 and "invalid_token" in refused["fatal"]["message"], refused


def _readme_quick_path() -> tuple[str, str]:
    """The shell block and the Python block of the README's "Serving over HTTP", as an operator copies them."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Serving over HTTP"):]
    section = section[: section.index("\n## ", 1)]
    shell = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert shell and python
    return shell.group(1), python.group(1)


def test_the_readme_quick_path_works_as_written(tmp_path: Path) -> None:
    shell, python = _readme_quick_path()
    with socket.socket() as probe:  # a free port in place of the README's 8080, which may be taken here
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shell, python = (text.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for text in (shell, python))
    (tmp_path / "client.py").write_text(python)
    before_kill, kill, after = shell.partition("kill %1")
    assert kill, shell
    # The README's five commands, with its Python client run while the server still listens, then the exit status.
    script = f"set -e\n{before_kill}\nTOKEN=$TOKEN python client.py\n{kill}{after}\nwait %1 && echo server-exit-0\n"
    env = child_env(tmp_path / "unused.db", HOME=str(tmp_path))
    for name in ("TRACKER_DB", "XDG_DATA_HOME", "TRACKER_HTTP_TOKENS"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), env.get("PATH", "")])
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"structuredContent":{"operations":[],"count":0,"next_cursor":null}' in done.stdout, done.stdout
    assert "{'operations': [], 'count': 0, 'next_cursor': None}" in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith("server-exit-0"), done.stdout
    assert f"listening on http://127.0.0.1:{port}/mcp" in done.stderr
    assert (tmp_path / ".local" / "share" / "tracker" / "tracker.db").is_file()
    assert stat.S_IMODE((tmp_path / ".config" / "tracker" / "tokens").stat().st_mode) == 0o600


# -- starts that are refused -----------------------------------------------------------------------------------------


def _start(db: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "tracker", "serve", *args], capture_output=True, text=True, timeout=60, env=child_env(db, **env),
        cwd=REPO, stdin=subprocess.DEVNULL,
    )


def test_a_non_loopback_address_without_tokens_is_refused_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    done = _start(db, "--http", "0.0.0.0:0")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "without a tokens file" in done.stderr, done.stderr
    assert not db.exists()  # refused before anything was opened
    settings = Settings.from_env({}, db=str(db))
    for address in ("[::]:0", "10.1.2.3:8080"):
        with pytest.raises(InvalidInput, match="without a tokens file"):
            http_module.plan(settings, address)
    for address in ("127.0.0.1:0", "127.8.9.10:0", "localhost:0", "[::1]:0", ":0", "0"):
        assert http_module.plan(settings, address).listen.is_loopback, address
    for address in ("127.0.0.1:65536", "127.0.0.1:http", "127.0.0.1:", "[::1:80", "::1]:80"):
        with pytest.raises(InvalidInput):
            http_module.plan(settings, address)


def test_a_malformed_tokens_file_refuses_the_start_naming_the_line_not_its_content(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    add_token(tokens, "alice")
    with tokens.open("a") as file:
        file.write("# a comment\n\nbob trk_this-is-a-raw-token-not-a-hash\n")
    done = _start(tmp_path / "t.db", "--http", "127.0.0.1:0", "--tokens", str(tokens))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "line 4" in done.stderr, done.stderr
    assert "trk_this" not in done.stderr and "bob" not in done.stderr
    tokens.write_text(tokens.read_text().replace("bob trk_this-is-a-raw-token-not-a-hash\n", ""))
    os.chmod(tokens, 0o622)  # others may write it: they could let themselves in
    settings = Settings.from_env({}, db=str(tmp_path / "t.db"), http_tokens=str(tokens))
    with pytest.raises(InvalidInput, match="chmod 600"):
        http_module.plan(settings, "127.0.0.1:0")
    with pytest.raises(InvalidInput, match="does not exist"):
        http_module.plan(replace(settings, http_tokens=str(tmp_path / "missing")), "127.0.0.1:0")
    os.chmod(tokens, 0o600)
    with pytest.raises(InvalidInput, match="not a host name"):
        http_module.plan(replace(settings, http_allowed_hosts=("evil.example/x",)), "127.0.0.1:0")


# -- two servers, one database -------------------------------------------------------------------------------------


def test_two_http_servers_on_one_database_see_each_others_operations(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess
) -> None:
    db = tmp_path / "t.db"
    tokens = tmp_path / "tokens"
    token = add_token(tokens, "alice")[0]
    env = {**fake_upstream.env(), "TRACKER_POLL_INTERVAL": "0.3"}
    # A with tokens; B on loopback without (served unauthenticated, and it says so).
    with http_servers(HttpServer(db, ["--tokens", str(tokens)], env), HttpServer(db, env=env)) as (a, b):
        assert "serving unauthenticated on loopback" in b.stderr and "(unauthenticated)" in b.stderr
        with sync_http_session(a.url, token) as on_a, sync_http_session(b.url, None) as on_b:
            started = on_a.answer("run_grid_batch", grid_id="g1", rows=[{"email": "a@x.io"}, {"email": "b@x.io"}])
            run = on_b.answer("run_grid", grid_id="g1", inputs={"email": "c@x.io"}, mode="async")
            seen_on_b = on_b.answer("get_batch_status", batch_operation_id=started["batch_operation_id"])
            assert seen_on_b["found"] is True and seen_on_b["operation"]["progress"]["total"] == 2
            seen_on_a = on_a.answer("get_run_status", request_id=run["operation_id"])
            assert seen_on_a["found"] is True and seen_on_a["grid_id"] == "g1"
            listed = {op["operation_id"] for op in on_a.answer("list_operations", limit=100)["operations"]}
            assert {started["batch_operation_id"], run["operation_id"]} <= listed


# -- SIGTERM with a call in flight -------------------------------------------------------------------------------------


def test_sigterm_lets_a_call_in_flight_finish_and_exits_0(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds="2.5")  # the sync POST answers after 2.5 s
    tokens = tmp_path / "tokens"
    token = add_token(tokens, "alice")[0]
    env = {**fake_upstream.env(), "TRACKER_HTTP_SHUTDOWN_GRACE": "60s"}
    with http_server(tmp_path / "t.db", ["--tokens", str(tokens)], **env) as server:

        async def call() -> Any:
            async with http_session(server.url, token) as session:
                await session.list_tools()  # else the client lists them after the answer, to check it: too late
                return await session.call("run_grid", grid_id="g1", inputs={"email": "a@x.io"}, mode="sync")

        result: list[Any] = []
        caller = threading.Thread(target=lambda: result.append(asyncio.run(call())))
        caller.start()
        wait_for(lambda: fake_upstream.stats()["posts"] == 1)
        signalled = time.monotonic()
        server.terminate()
        caller.join(30)
        assert server.wait(50) == 0
        exited_after = time.monotonic() - signalled
    (answer,) = result  # the SSE answer was not cut at SIGTERM (sse-starlette's default would)
    assert not answer.is_error and answer.value["status"] == "completed", answer
    assert exited_after < 45, exited_after  # once the call ended, not at the 60 s grace
    assert "SIGTERM: finishing the calls in flight" in server.stderr
    with Tracker(Settings.from_env({}, db=str(tmp_path / "t.db"))) as tracker:
        (run,) = tracker.list(kind="run")
    assert run.status == "completed"
    assert fake_upstream.stats()["posts"] == 1


def test_sigterm_past_the_grace_records_the_run_and_exits_0(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.configure(run_seconds="30")
    tokens = tmp_path / "tokens"
    token = add_token(tokens, "alice")[0]
    env = {**fake_upstream.env(), "TRACKER_HTTP_SHUTDOWN_GRACE": "1s"}
    with http_server(tmp_path / "t.db", ["--tokens", str(tokens)], **env) as server:
        body = json.dumps({
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {
                "name": "run_grid", "arguments": {"grid_id": "g1", "inputs": {"email": "a@x.io"}, "mode": "sync"}
            },
        })
        answered: list[Any] = []

        def call() -> None:
            try:
                answered.append(post(server.url, body, token))
            except httpx2.HTTPError as exc:  # the connection closed under the call
                answered.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        wait_for(lambda: fake_upstream.stats()["posts"] == 1)
        server.terminate()
        assert server.wait(15) == 0  # at the 1 s grace, not when the 30 s run ends
        caller.join(10)
    (outcome,) = answered
    assert isinstance(outcome, Exception) or '"result"' not in outcome.text  # cut at the grace: no answer
    with Tracker(Settings.from_env({}, db=str(tmp_path / "t.db"))) as tracker:
        (run,) = tracker.list(kind="run")
    # Nothing lost: the run is recorded, ended as interrupted (not resubmitted: the upstream may have it).
    assert run.status == "failed" and "interrupted" in (run.error or "")
    assert fake_upstream.stats()["posts"] == 1


# -- the verified subject reaches the tools ----------------------------------------------------------------------------


def test_the_tools_see_the_tokens_subject_and_progress_reaches_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_upstream: FakeUpstreamProcess
) -> None:
    """In process, on a real socket: build_app's server with one extra tool that answers current_subject(), and a
    sync run_grid whose progress notifications come back on the SSE answer."""
    monkeypatch.setattr(service_module, "SYNC_PROGRESS_EVERY_S", 0.05)
    fake_upstream.configure(run_seconds="5")
    tokens = tmp_path / "tokens"
    alice = add_token(tokens, "alice")[0]
    bob = add_token(tokens, "bob.smith@example.com")[0]
    built = ServedDatabase.build_server

    def with_whoami(self: ServedDatabase, **options: Any) -> MCPServer:
        server = built(self, **options)
        server.add_tool(lambda: str(current_subject()), name="whoami", structured_output=False)
        return server

    monkeypatch.setattr(ServedDatabase, "build_server", with_whoami)
    # A 1 s bound with a note every 0.05 s: at least two notes even on a loaded machine (0.45 s and 0.1 s gave one).
    env = {**fake_upstream.env(), "TRACKER_SYNC_WAIT": "1s"}
    settings = Settings.from_env(env, db=str(tmp_path / "t.db"), http_tokens=str(tokens))
    chosen = http_module.plan(settings, "127.0.0.1:0")
    database = ServedDatabase(settings)
    database.open_tracker()
    sock = http_module.bind(chosen.listen)
    url = chosen.listen.url(sock.getsockname()[1])
    app = http_module.build_app(database, settings, chosen.listen, chosen.tokens, url)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    progress: list[str | None] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    async def scenario() -> tuple[list[str], Any]:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.02)
        seen = []
        try:
            for token in (alice, bob):
                async with http_session(url, token) as session:
                    seen.append((await session.call("whoami")).text)
            async with http_session(url, alice) as session:
                ran = await session.client.call_tool(
                    "run_grid", {"grid_id": "g1", "inputs": {"email": "a@x.io"}}, progress_callback=on_progress
                )
        finally:
            server.should_exit = True
            await serving
        return seen, ran

    try:
        seen, ran = asyncio.run(scenario())
    finally:
        sock.close()
        database.close()
    assert seen == ["alice", "bob.smith@example.com"]
    assert ran.structured_content["status"] == "running"  # answered at the 1 s bound
    assert len(progress) >= 2 and all(ran.structured_content["operation_id"] in (note or "") for note in progress)


def test_the_verifier_sets_subject_and_client_id_and_rereads_the_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    first = add_token(tokens, "alice")[0]
    verifier = http_module.TokenFileVerifier(TokenFile(tokens))
    found = asyncio.run(verifier.verify_token(first))
    assert found is not None and found.subject == found.client_id == "alice" and found.token != first
    assert asyncio.run(verifier.verify_token(first + "x")) is None
    second = add_token(tokens, "bob")[0]  # appended while serving: accepted from the next request
    assert asyncio.run(verifier.verify_token(second)).subject == "bob"
    tokens.write_text(tokens.read_text().splitlines()[1] + "\n")  # alice's line deleted: revoked
    assert asyncio.run(verifier.verify_token(first)) is None
    tokens.write_text("garbage\n")  # a broken file accepts no one
    assert asyncio.run(verifier.verify_token(second)) is None


# -- tracker token new ---------------------------------------------------------------------------------------------


def test_token_new_prints_the_token_once_and_stores_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "conf" / "tokens"
    made = subprocess.run(
        [PYTHON, "-m", "tracker", "token", "new", "alice", "--tokens", str(tokens)], capture_output=True, text=True,
        timeout=60, env=child_env(tmp_path / "t.db"), cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and TOKEN_SHAPE.fullmatch(token), made.stdout
    assert token not in made.stderr and "Authorization: Bearer" in made.stderr
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600 and stat.S_IMODE(tokens.parent.stat().st_mode) == 0o700
    assert tokens.read_text() == f"alice {token_hash(token)}\n" and token not in tokens.read_text()

    monkeypatch.delenv("TRACKER_HTTP_TOKENS", raising=False)

    def token_new(*args: str) -> tuple[int, str, str]:
        code = main(["token", "new", *args])
        out, err = capsys.readouterr()
        return code, out, err

    monkeypatch.setenv("TRACKER_HTTP_TOKENS", str(tokens))  # the setting instead of the flag
    code, out, _ = token_new("bob")
    assert code == 0 and TOKEN_SHAPE.fullmatch(out.strip()) and out.strip() != token
    assert [line.split()[0] for line in tokens.read_text().splitlines()] == ["alice", "bob"]
    for bad in ("al ice", "", "x" * 65, "alice\nbob 00", "ünï", "a/b"):
        code, out, err = token_new(bad, "--tokens", str(tokens))
        assert code == 2 and out == "", bad
        assert len(err.strip().splitlines()) == 1 and "subject" in err, err
    assert len(tokens.read_text().splitlines()) == 2
    monkeypatch.delenv("TRACKER_HTTP_TOKENS")
    code, out, err = token_new("carol")
    assert code == 2 and out == "" and "TRACKER_HTTP_TOKENS" in err


# -- each caller sees its own, over real HTTP ------------------------------------------------------------------------


def test_another_subjects_operation_is_answered_as_one_that_never_existed(tmp_path: Path) -> None:
    """alice's batch, asked for by bob through his own token: every tool answers as for an id nobody ever made
    (the id in the message swapped), cancelling it changes nothing, and alice still has it; a batch recorded
    without a subject is seen by both."""
    db = tmp_path / "t.db"
    tokens = tmp_path / "tokens"
    issued = {subject: add_token(tokens, subject)[0] for subject in ("alice", "bob")}
    with Tracker.open(db=str(db)) as tracker:
        hers = tracker.start_batch("import", total=2, subject="alice")
        hers.record_success("contact-1")
        hers.flush()
        shared_batch = tracker.start_batch("update", total=1)
        shared_batch.detach()
        hers.detach()
    never = "batch_import_019000000000_" + "0" * 32

    def asked(session: Any, operation_id: str) -> list[Any]:
        return [
            session.answer("get_batch_status", batch_operation_id=operation_id),
            session.answer("get_operation_items", operation_id=operation_id),
            session.answer("cancel_operation", operation_id=operation_id),
        ]

    with http_server(db, ["--tokens", str(tokens)]) as server:
        with sync_http_session(server.url, issued["bob"]) as bob:
            foreign = asked(bob, hers.id)
            unknown = asked(bob, never)
            bob_sees = {row["operation_id"] for row in bob.answer("list_operations")["operations"]}
        with sync_http_session(server.url, issued["alice"]) as alice:
            mine = alice.answer("get_batch_status", batch_operation_id=hers.id)
            alice_sees = {row["operation_id"] for row in alice.answer("list_operations")["operations"]}
    assert json.loads(json.dumps(foreign).replace(hers.id, never)) == unknown
    assert all(answer["found"] is False for answer in foreign)
    assert bob_sees == {shared_batch.id} and alice_sees == {hers.id, shared_batch.id}
    assert mine["found"] is True and mine["operation"]["status"] == "running"  # bob's cancel changed nothing
    assert mine["operation"]["successful_ids"] == ["contact-1"]
