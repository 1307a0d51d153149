"""The bearer tokens of `tracker serve --http`: a file of `SUBJECT SHA256-HEX` lines (# comments and blank lines
allowed), one line per token, written by `tracker token new`.

Tokens are `trk_` + 32 random bytes (secrets.token_urlsafe), so the file keeps only their SHA-256: a slow hash
(scrypt, bcrypt) protects guessable passwords from a stolen file, and there is nothing to guess in 256 random
bits; a fast hash lets every request (stateless HTTP verifies each one) be checked by one dict lookup of the hash
of the token it presents. The lookup is not timing-sensitive: how long it takes depends on the hash of the
presented token, which tells a guesser nothing about any stored token (finding a token for a stored hash is a
SHA-256 preimage).

Errors name a line by its number, never its content (the file is authorization data)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput
from .limits import SUBJECT_CHARS

log = logging.getLogger(__name__)

TOKEN_PREFIX = "trk_"  # recognisable in a config file or a secret scanner's report
SUBJECT_PATTERN = re.compile(rf"[A-Za-z0-9._@-]{{1,{SUBJECT_CHARS}}}")
_HASH = re.compile(r"[0-9a-f]{64}")
_LINE_SHAPE = f"expected 'SUBJECT SHA256-HEX' (SUBJECT: 1-{SUBJECT_CHARS} of A-Z a-z 0-9 . _ @ -)"


def check_subject(value: str) -> str:
    if not SUBJECT_PATTERN.fullmatch(value):
        raise InvalidInput(f"a subject is 1 to {SUBJECT_CHARS} characters of A-Z a-z 0-9 . _ @ - (and nothing else)")
    return value


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse(text: str, where: str) -> dict[str, str]:
    """{hash: subject} of a tokens file's text; InvalidInput naming the first bad line by number."""
    table: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        if len(parts) != 2 or not SUBJECT_PATTERN.fullmatch(parts[0]) or not _HASH.fullmatch(parts[1]):
            raise InvalidInput(f"tokens file {where} line {number}: {_LINE_SHAPE}")
        if parts[1] in table:
            raise InvalidInput(f"tokens file {where} line {number}: the same token hash as an earlier line")
        table[parts[1]] = parts[0]
    return table


def _check_mode(path: Path, mode: int) -> None:
    """Whoever can write the file can let themselves in: refuse one that others may write, as ssh refuses keys."""
    if mode & 0o022:
        raise InvalidInput(
            f"cannot use tokens file {path}: its mode {stat.S_IMODE(mode):04o} lets other users change it; "
            f"run: chmod 600 {path}"
        )


def read(path: Path) -> dict[str, str]:
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = f"make one with: tracker token new SUBJECT --tokens {path}"
        raise InvalidInput(f"tokens file {path} does not exist ({hint})") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read tokens file {path}: {exc.strerror}") from None
    _check_mode(path, mode)
    return parse(raw.decode("utf-8", "replace"), str(path))


@dataclass(frozen=True)
class _Loaded:
    signature: tuple[int, int, int, int] | None  # (device, inode, size, mtime_ns) the table was read at
    table: dict[str, str]


class TokenFile:
    """The tokens file, read again when it changes (its inode, size or mtime), so a token added by `tracker token new`
    (or a line deleted to revoke one) counts from the next request, without a restart. A file that no longer parses
    or is gone authenticates no one until it is fixed (fail closed), and says so once on stderr."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._loaded = _Loaded(self._signature(), read(self.path))  # a bad file refuses the start

    def _signature(self) -> tuple[int, int, int, int] | None:
        try:
            s = self.path.stat()
        except OSError:
            return None
        return (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns)

    def __len__(self) -> int:
        return len(self._loaded.table)

    def _table(self) -> dict[str, str]:
        signature = self._signature()  # one stat a request: about 2 us
        if signature != self._loaded.signature:
            try:
                table = read(self.path)
            except InvalidInput as exc:
                log.warning("%s; no token is accepted until it is fixed", exc)
                table = {}
            else:
                log.warning("tokens file %s read again: %d tokens", self.path, len(table))
            self._loaded = _Loaded(signature, table)
        return self._loaded.table

    def subject_of(self, token: str) -> str | None:
        """The subject of `token`, or None when no line holds its hash."""
        return self._table().get(token_hash(token))


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def add_token(path: str | os.PathLike[str], subject: str) -> tuple[str, int]:
    """Make a token for `subject`, append its line to the file (created 0600, its directory 0700 when missing),
    and return (token, the line's number). The file must parse first: a line is never added to a broken file."""
    check_subject(subject)
    path = Path(path)
    try:
        return _append(path, subject)
    except OSError as exc:
        raise InvalidInput(f"cannot write tokens file {path}: {exc.strerror}") from None


def _append(path: Path, subject: str) -> tuple[str, int]:
    text = ""
    if path.exists():
        _check_mode(path, path.stat().st_mode)
        text = path.read_bytes().decode("utf-8", "replace")
        parse(text, str(path))
    elif not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=0o700)
    token = new_token()
    line = f"{subject} {token_hash(token)}\n"
    if text and not text.endswith("\n"):
        line = "\n" + line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())  # one O_APPEND write of one short line: two `token new` cannot interleave
    finally:
        os.close(fd)
    return token, len(text.splitlines()) + 1
