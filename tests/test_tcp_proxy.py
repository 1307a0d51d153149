"""Self-test of tests/tcp_proxy.py: a real PostgreSQL through the proxy, and each mode on a raw echo server."""

from __future__ import annotations

import itertools
import os
import socket
import threading

import psycopg
import pytest

from .tcp_proxy import SilentListener, TcpProxy

pytestmark = pytest.mark.timeout(60)

_numbers = itertools.count()


def _conninfo(port: int, dbname: str) -> str:
    return f"host=127.0.0.1 port={port} user=postgres dbname={dbname} connect_timeout=5"


@pytest.fixture
def pg(postgres_server):
    name = f"proxy_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(_conninfo(postgres_server.port, "postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(_conninfo(postgres_server.port, name), autocommit=True) as direct:
        direct.execute("CREATE TABLE t (v text)")
    return postgres_server.port, name


def test_forwarding_reaches_postgresql(pg):
    port, name = pg
    with TcpProxy("127.0.0.1", port) as proxy, psycopg.connect(_conninfo(proxy.port, name)) as conn:
        conn.execute("INSERT INTO t VALUES ('through the proxy, not a COMMIT')")
        conn.commit()
        assert conn.execute("SELECT v FROM t").fetchall() == [("through the proxy, not a COMMIT",)]
        assert proxy.connections == 1 and proxy.cuts == 0 and proxy.commits_cut == 0


def test_cut_after_commit_leaves_the_row_committed_while_the_client_raises(pg):
    port, name = pg
    with TcpProxy("127.0.0.1", port) as proxy:
        conn = psycopg.connect(_conninfo(proxy.port, name))
        conn.execute("INSERT INTO t VALUES ('applied, never acknowledged')")
        proxy.cut_after_commit()
        with pytest.raises(psycopg.OperationalError):
            conn.commit()
        conn.close()
        assert proxy.commits_cut == 1 and proxy.cuts == 1
        with psycopg.connect(_conninfo(port, name)) as direct:
            assert direct.execute("SELECT v FROM t").fetchall() == [("applied, never acknowledged",)]
        # only `count` commits are cut: the next connection commits normally
        with psycopg.connect(_conninfo(proxy.port, name)) as conn:
            conn.execute("INSERT INTO t VALUES ('second')")
            conn.commit()
        assert proxy.commits_cut == 1


@pytest.fixture
def echo_port():
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()


def _roundtrip(sock: socket.socket, data: bytes, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    sock.sendall(data)
    return sock.recv(4096)


def test_silent_holds_bytes_until_forward_and_cut_all_closes(echo_port):
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        old = socket.create_connection(("127.0.0.1", proxy.port))
        assert _roundtrip(old, b"hello") == b"hello"
        proxy.go_silent()
        with pytest.raises(socket.timeout):
            _roundtrip(old, b"during", timeout=0.5)
        new = socket.create_connection(("127.0.0.1", proxy.port))  # accepted, never forwarded
        with pytest.raises(socket.timeout):
            _roundtrip(new, b"new", timeout=0.5)
        proxy.forward()
        old.settimeout(5)
        new.settimeout(5)
        assert old.recv(4096) == b"during"  # delivered late, as after a healed partition
        assert new.recv(4096) == b"new"
        assert proxy.cut_all() == 2 and proxy.cuts == 2
        assert old.recv(4096) == b"" and new.recv(4096) == b""
        assert proxy.connections == 2


def test_lossy_cuts_some_connections_and_passes_others(echo_port):
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        proxy.lossy(0.5, seed=7)
        answered = 0
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
                try:
                    answered += _roundtrip(sock, b"x") == b"x"
                except OSError:
                    pass
        assert 0 < answered < 20 and proxy.cuts == 20 - answered


def test_silent_listener_accepts_and_never_answers():
    with SilentListener() as silent:
        with socket.create_connection(("127.0.0.1", silent.port), timeout=5) as sock:
            with pytest.raises(socket.timeout):
                _roundtrip(sock, b"anyone?", timeout=0.5)
