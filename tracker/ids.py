"""Operation ids: a readable prefix, then 128 bits from the OS's CSPRNG."""

import re
import secrets

_UNSAFE = re.compile(r"[^a-z0-9]+")


def new_operation_id(kind: str, operation_type: str) -> str:
    label = _UNSAFE.sub("_", operation_type.lower()).strip("_")[:32] or "op"
    return f"{kind}_{label}_{secrets.token_hex(16)}"
