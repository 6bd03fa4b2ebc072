"""API keys: one tenant and one role per key; only the key's sha256 is stored.

Roles are ordered: ``reader`` (search, read documents and receipts) < ``editor`` (also add documents
and submit forget requests) < ``admin`` (also verify, list models).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from lethe.errors import LetheError
from lethe.store.sqlite import connect, transaction

ROLES = ("reader", "editor", "admin")
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    hash TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Principal:
    """Who a key belongs to."""

    tenant: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this principal's role is at least ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)


def check_tenant(tenant: str) -> str:
    """A tenant name is a directory name: lowercase letters, digits, ``-`` and ``_``."""
    if not TENANT_RE.match(tenant):
        raise LetheError(f"tenant name {tenant!r} is not valid: use 1-64 lowercase letters, digits, '-' or '_'")
    return tenant


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """API keys of one service home (``<home>/keys.db``)."""

    def __init__(self, home: Path) -> None:
        self.conn = connect(Path(home) / "keys.db")
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self.conn.close()

    def add(self, tenant: str, role: str) -> str:
        """Create a key for ``tenant`` with ``role``; returns the key (it is not stored)."""
        check_tenant(tenant)
        if role not in ROLES:
            raise LetheError(f"--role {role!r} is not valid; choose one of {', '.join(ROLES)}")
        key = "lethe_" + secrets.token_urlsafe(32)
        with transaction(self.conn) as c:
            c.execute("INSERT INTO keys(hash, tenant, role, created_at) VALUES (?,?,?,?)",
                      (_digest(key), tenant, role, time.time()))
        return key

    def lookup(self, key: str) -> Principal | None:
        """The principal of a key, or None."""
        row = self.conn.execute("SELECT tenant, role FROM keys WHERE hash=?", (_digest(key),)).fetchone()
        return Principal(row[0], row[1]) if row else None

    def tenants(self) -> list[str]:
        """Every tenant with at least one key."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT tenant FROM keys ORDER BY tenant")]
