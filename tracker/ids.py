"""Operation ids: a readable prefix, the creation time, then 128 bits from the OS's CSPRNG.

The time (milliseconds since the epoch, 12 hex digits) comes before the random part so that ids of one kind and
type sort in creation order. Every index that starts with the id (the primary key, the items' operation index)
then grows at its end and is purged from its start, page after page, the way the time-ordered indexes are;
random ids would scatter each purge chunk over the whole index and rewrite each page once per chunk that touches
it. The random part alone makes an id unguessable; the time it reveals is the operation's started_at, which its
status shows anyway."""

import re
import secrets
import time

_UNSAFE = re.compile(r"[^a-z0-9]+")
RANDOM_BITS = 128


def operation_id(kind: str, operation_type: str, created_ms: int, random_part: int) -> str:
    """The id format, from its parts (the benchmarks make ids for generated rows with this too)."""
    label = _UNSAFE.sub("_", operation_type.lower()).strip("_")[:32] or "op"
    return f"{kind}_{label}_{created_ms:012x}_{random_part:032x}"


def new_operation_id(kind: str, operation_type: str) -> str:
    return operation_id(kind, operation_type, time.time_ns() // 1_000_000, secrets.randbits(RANDOM_BITS))
