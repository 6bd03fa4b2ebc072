"""Errors raised by lethe. Every message says what was wrong and, where it can, what to do."""

from __future__ import annotations

from pathlib import Path


class LetheError(Exception):
    """Base class of every error lethe raises on purpose."""


class DataError(LetheError):
    """Bad input data; names the file, the line (1-based) and the problem."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class DataErrors(DataError):
    """Several data problems found in one pass (the first few are listed)."""

    def __init__(self, errors: list[DataError]) -> None:
        self.errors = errors
        first = errors[0]
        shown = "\n  ".join(str(e) for e in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        LetheError.__init__(
            self, f"{len(errors)} problem(s) in the input; nothing was ingested:\n  {shown}{more}"
        )
        self.path, self.line, self.problem = first.path, first.line, first.problem


class DatasetNotFound(LetheError):
    """A dataset name or path that does not resolve."""


class RegistryError(LetheError):
    """Unknown model/artifact, bad source scheme, retired artifact, duplicate registration."""


class IndexError_(LetheError):  # noqa: N801 - avoid shadowing the builtin IndexError
    """An index cannot do what was asked (unknown kind, wrong dimension, corrupt file)."""


class StoreError(LetheError):
    """The document store refused an operation."""


class ForgetError(LetheError):
    """A forget request is malformed or could not be completed."""


class LedgerError(LetheError):
    """The forget ledger is corrupt: a hash chain link does not match."""


class MissingDependency(LetheError):
    """An optional dependency is missing; the message carries the install hint."""
