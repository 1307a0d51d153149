"""A real TCP proxy on 127.0.0.1 for tests, in background threads of the test process (standard library only).

    with TcpProxy("127.0.0.1", pg_port) as proxy:   # or proxy.start() ... proxy.stop()
        url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/db"
        proxy.go_silent()          # a partition
        proxy.forward()            # healed

Modes, switchable at any time (each replaces the previous one):

- `forward()` (default): bytes pass both ways.
- `go_silent()`: a partition. Every connection stays open and nothing is forwarded either way; new connections
  are accepted and never reach the target. Bytes sent meanwhile wait in the kernel's buffers (at most one chunk in
  the proxy), so when `forward()` heals it they arrive late, as TCP retransmission delivers them after a real
  partition; a connection its client closed meanwhile is closed towards the server once they have been delivered.
- `cut_after_commit(count=1)`: the next `count` COMMITs (psycopg sends `COMMIT` as a simple Query message) go to
  the server; the server's reply to each is dropped and that connection is closed on both sides. The server
  applied the commit, the client never learns it. `commits_cut` counts them.
- `lossy(cut_probability, seed)`: each chunk, either way, is dropped with that probability and its connection
  closed on both sides (a request lost before the server saw it, or a reply lost after the server acted on it).
- `cut_all()` (an action, not a mode): close every open connection now.

Counters: `connections` (accepted), `cuts` (connections closed by the proxy: cut_all, lossy, cut_after_commit),
`commits_cut`.

`SilentListener()` accepts TCP connections on 127.0.0.1 and never sends a byte: a server that is up but never
answers (`.port`, `.stop()`, context manager).
"""

from __future__ import annotations

import random
import select
import socket
import threading

# A simple Query message (type 'Q', int32 length 4 + len("COMMIT\0") = 11) carrying exactly COMMIT: matching the
# whole message, not the word, keeps an item id or a value that contains "COMMIT" from triggering a cut.
COMMIT_QUERY = b"Q\x00\x00\x00\x0bCOMMIT\x00"

_POLL_S = 0.05
_CHUNK = 65536

FORWARD, SILENT, CUT_AFTER_COMMIT, LOSSY = "forward", "silent", "cut_after_commit", "lossy"


def _close_socket(sock: socket.socket) -> None:
    # shutdown first: it wakes a thread blocked on this socket, which close() alone does not do on Linux
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _listen() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.settimeout(_POLL_S)
    return listener


class _Connection:
    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.server: socket.socket | None = None
        self.closed = False
        self.cut_next_reply = False  # a COMMIT went to the server: drop what it answers and close
        self._lock = threading.Lock()

    def close(self, before=None) -> bool:
        """Close both sides; True if this call closed it (False if it was closed already). `before()` runs first,
        so a counter it bumps is up to date by the time the client sees the connection end."""
        with self._lock:
            if self.closed:
                return False
            self.closed = True
        if before is not None:
            before()
        _close_socket(self.client)
        if self.server is not None:
            _close_socket(self.server)
        return True


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self.commits_cut = 0
        self._mode = FORWARD
        self._commits_to_cut = 0
        self._cut_probability = 0.0
        self._random = random.Random(0)
        self._changed = threading.Condition()
        self._open: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._listener = _listen()
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopped.set()
        with self._changed:
            self._changed.notify_all()
        if self._listener is not None:
            self._listener.close()
        for connection in self._snapshot():
            connection.close()
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- modes -----------------------------------------------------------------------------------------------------

    def forward(self) -> None:
        self._set_mode(FORWARD)

    def go_silent(self) -> None:
        self._set_mode(SILENT)

    def cut_after_commit(self, count: int = 1) -> None:
        with self._changed:
            self._commits_to_cut = count
        self._set_mode(CUT_AFTER_COMMIT)

    def lossy(self, cut_probability: float, seed: int = 0) -> None:
        with self._changed:
            self._cut_probability = cut_probability
            self._random = random.Random(seed)
        self._set_mode(LOSSY)

    def cut_all(self) -> int:
        """Close every open connection now; returns how many."""
        return sum(1 for connection in self._snapshot() if connection.close(before=self._count_cut))

    @property
    def mode(self) -> str:
        return self._mode

    # -- internals -------------------------------------------------------------------------------------------------

    def _set_mode(self, mode: str) -> None:
        with self._changed:
            self._mode = mode
            self._changed.notify_all()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"tcp-proxy-{self.port}")
        self._threads.append(thread)
        thread.start()

    def _snapshot(self) -> list[_Connection]:
        with self._changed:
            return list(self._open)

    def _count_cut(self, commit: bool = False) -> None:
        with self._changed:
            self.cuts += 1
            self.commits_cut += commit

    def _cut(self, connection: _Connection, commit: bool = False) -> None:
        connection.close(before=lambda: self._count_cut(commit))

    def _wait_until_forwarding(self, connection: _Connection) -> bool:
        """Block while the proxy is silent; False once the connection or the proxy is closed."""
        with self._changed:
            while self._mode == SILENT and not connection.closed and not self._stopped.is_set():
                self._changed.wait(_POLL_S)
        return not connection.closed and not self._stopped.is_set()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.setblocking(True)
            connection = _Connection(client)
            with self._changed:
                self.connections += 1
                self._open.add(connection)
            self._spawn(self._open_connection, connection)

    def _open_connection(self, connection: _Connection) -> None:
        # during a partition the target is unreachable: connect only once forwarding
        if not self._wait_until_forwarding(connection):
            return self._forget(connection)
        try:
            server = socket.create_connection(self.target, timeout=10)
        except OSError:
            connection.close()
            return self._forget(connection)
        server.settimeout(None)
        with connection._lock:
            if connection.closed:
                server.close()
                return self._forget(connection)
            connection.server = server
        self._spawn(self._pump, connection, connection.client, server, True)
        self._pump(connection, server, connection.client, False)

    def _forget(self, connection: _Connection) -> None:
        with self._changed:
            self._open.discard(connection)

    def _pump(self, connection: _Connection, source: socket.socket, dest: socket.socket, to_server: bool) -> None:
        try:
            while self._wait_until_forwarding(connection):
                readable, _, _ = select.select([source], [], [], _POLL_S)
                if not readable:
                    continue
                data = source.recv(_CHUNK)
                if not data:
                    break
                if not self._wait_until_forwarding(connection):  # went silent meanwhile: hold the chunk
                    break
                if not self._pass(connection, data, to_server):
                    return
                dest.sendall(data)
        except (OSError, ValueError):
            pass
        connection.close()
        self._forget(connection)

    def _pass(self, connection: _Connection, data: bytes, to_server: bool) -> bool:
        """Apply the mode to one chunk about to be forwarded; False when the connection was cut instead."""
        with self._changed:
            mode = self._mode
            lose = mode == LOSSY and self._random.random() < self._cut_probability
            if mode == CUT_AFTER_COMMIT and to_server and self._commits_to_cut > 0 and COMMIT_QUERY in data:
                self._commits_to_cut -= 1
                connection.cut_next_reply = True  # set before the COMMIT leaves, so its reply cannot slip by
        if lose or (not to_server and connection.cut_next_reply):
            self._cut(connection, commit=not lose)
            self._forget(connection)
            return False
        return True


class SilentListener:
    """Accepts TCP connections on 127.0.0.1, keeps them open and never sends a byte."""

    def __init__(self) -> None:
        self._listener = _listen()
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._accepted: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"silent-{self.port}")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._accepted.append(client)
            self.connections += 1

    def url(self, database: str = "x") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for client in self._accepted:
            _close_socket(client)

    def __enter__(self) -> SilentListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
