"""The checks of run_grid and run_grid_batch arguments, before anything is written or sent. Messages name the
parameter and never echo a value (it may be long, or a secret); the bounds are limits.py's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..checks import require_count, require_text
from ..errors import InvalidInput
from ..limits import BATCH_CONCURRENCY, BATCH_ROWS, ID_CHARS, INPUT_COLUMNS, INPUT_VALUE_CHARS, KEY_CHARS
from .upstream import RunRequest

MODES = ("sync", "async")


@dataclass(frozen=True)
class BatchParams:
    """What every run of a batch shares: its grid, mode, columns and source, and how many are submitted at once.
    The batch's row keeps these in `inputs`; its rows are stored apart."""

    grid_id: str
    mode: str
    output_columns: list[str] | None
    source_id: str | None
    concurrency: int

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> BatchParams:
        """Back from what params() stored (batches written before `concurrency` was kept submit one at a time)."""
        return cls(
            params["grid_id"], params["mode"], params.get("output_columns"), params.get("source_id"),
            params.get("concurrency", 1),
        )

    def run(self, row: dict[str, str]) -> RunRequest:
        return RunRequest(self.grid_id, row, self.mode, self.output_columns, self.source_id)

    def params(self) -> dict[str, Any]:
        return {
            "grid_id": self.grid_id,
            "mode": self.mode,
            "output_columns": self.output_columns,
            "source_id": self.source_id,
            "concurrency": self.concurrency,
        }


@dataclass(frozen=True)
class BatchRequest(BatchParams):
    """A run_grid_batch call: the shared parameters and one inputs object per run."""

    rows: list[dict[str, str]]

    def params(self) -> dict[str, Any]:
        return {**super().params(), "row_count": len(self.rows)}


def check_run(
    grid_id: Any, inputs: Any, mode: Any, output_columns: Any, source_id: Any
) -> RunRequest:
    return RunRequest(
        text(grid_id, "grid_id"), check_inputs(inputs), check_mode(mode), check_output_columns(output_columns),
        optional_text(source_id, "source_id"),
    )


def check_batch(
    grid_id: Any, rows: Any, mode: Any, output_columns: Any, source_id: Any, concurrency: Any
) -> BatchRequest:
    return BatchRequest(
        text(grid_id, "grid_id"), check_mode(mode), check_output_columns(output_columns),
        optional_text(source_id, "source_id"), check_concurrency(concurrency), check_rows(rows),
    )


def check_idempotency_key(value: Any) -> str | None:
    return optional_text(value, "idempotency_key", KEY_CHARS)


def text(value: Any, name: str, max_chars: int = ID_CHARS) -> str:
    return require_text(value, name, max_chars).strip()


def optional_text(value: Any, name: str, max_chars: int = ID_CHARS) -> str | None:
    return None if value is None else text(value, name, max_chars)


def no_nul(value: str, name: str) -> None:
    # PostgreSQL text and JSONB cannot hold NUL; refuse it everywhere so every backend answers alike.
    if "\x00" in value:
        raise InvalidInput(f"{name} contains a NUL character")


def check_inputs(value: Any, name: str = "inputs") -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise InvalidInput(f"{name} must be a non-empty object mapping column labels to string values")
    if len(value) > INPUT_COLUMNS:
        raise InvalidInput(f"{name} has more than {INPUT_COLUMNS} entries")
    for label, value_text in value.items():
        if not isinstance(label, str) or not label.strip():
            raise InvalidInput(f"{name} has an empty label; labels are the grid's input column names")
        no_nul(label, f"a label of {name}")
        if len(label) > ID_CHARS:
            raise InvalidInput(f"a label of {name} is longer than {ID_CHARS} characters")
        if not isinstance(value_text, str):
            raise InvalidInput(f"{name}[{label[:40]!r}] must be a string, not {type(value_text).__name__}")
        if len(value_text) > INPUT_VALUE_CHARS:
            raise InvalidInput(f"{name}[{label[:40]!r}] is longer than {INPUT_VALUE_CHARS} characters")
        no_nul(value_text, f"{name}[{label[:40]!r}]")
    return dict(value)


def check_mode(value: Any) -> str:
    if value not in MODES:
        raise InvalidInput("mode must be 'sync' or 'async'")
    return value


def check_output_columns(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
        raise InvalidInput("output_columns must be a list of column ids (non-empty strings), or omitted")
    for column in value:
        no_nul(column, "output_columns")
        if len(column) > ID_CHARS:
            raise InvalidInput(f"an output_columns entry is longer than {ID_CHARS} characters")
    return list(value)


def check_rows(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("rows must be a non-empty list of input objects, one per run")
    if len(value) > BATCH_ROWS:
        raise InvalidInput(f"rows has {len(value)} entries; a batch takes at most {BATCH_ROWS} (split it)")
    return [check_inputs(row, f"rows[{n}]") for n, row in enumerate(value)]


def check_concurrency(value: Any) -> int:
    return require_count(value, "concurrency", 1, BATCH_CONCURRENCY)
