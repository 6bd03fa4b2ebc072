"""Document store (SQLite, secure delete) and the hash-chained forget ledger."""

from lethe.store.docstore import DocStore, content_hash
from lethe.store.ledger import Entry, Ledger

__all__ = ["DocStore", "Entry", "Ledger", "content_hash"]
