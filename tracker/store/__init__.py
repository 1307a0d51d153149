"""All SQL lives in this package, one module per job; the service layer above never writes SQL."""

from .operations import Store

__all__ = ["Store"]
