"""The registry: versioned artifacts, their payloads, manifests and lineage, in one SQLite file."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lethe.errors import RegistryError
from lethe.registry import gguf, loaders, sources
from lethe.registry.db import (
    AFFECTED_SQL,
    LINEAGE_TABLES,
    connect,
    fill_temp_ids,
    transaction,
)
from lethe.registry.manifest import (
    destroy,
    dumps,
    library_versions,
    now_iso,
    stage_payload,
)
from lethe.registry.refs import ArtifactRef, Lineage, parse_ref
from lethe.registry.spec import ModelSpec, parse_source
from lethe.store.files import atomic_write_json
from lethe.store.redact import HASHED

#: statuses an artifact can have
STATUSES: tuple[str, ...] = ("active", "retired")
_COLUMNS = "id, name, version, kind, source, status, manifest"
#: the ledger's hash kind of each lineage field
LINEAGE_KINDS: dict[str, str] = {"doc_ids": "doc", "owner_ids": "owner", "query_ids": "query"}
#: the spec fields a derived version inherits from its parent
_SPEC_KEYS: tuple[str, ...] = ("name", "kind", "source", "revision", "base", "params")

RefLike = str | ArtifactRef
#: staged copies older than this are leftovers of a crash
_STALE_STAGING_S = 6 * 3600


class Registry:
    """Every model and index lethe knows, rooted at one directory (e.g. ``.lethe/registry``).

    ``root/registry.db`` holds the artifacts and their lineage; ``root/artifacts/<name>/v<n>/``
    the payloads the registry owns, with ``v<n>.manifest.json`` beside each; ``root/gguf-cache``
    the float32 conversions of .gguf sources. Nothing is ever rewritten in place: training or
    unlearning :meth:`derive` a new version, forgetting :meth:`retire` s old ones.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection = connect(self.root / "registry.db")
        self._gguf = gguf.GGUFCache(self.root / "gguf-cache", self.root / "trash")
        self._sweep()

    # -- housekeeping -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    def _sweep(self) -> None:
        """Finish work a crash interrupted: trash, stale staged copies, retired payloads."""
        shutil.rmtree(self.root / "trash", ignore_errors=True)
        stale = time.time() - _STALE_STAGING_S
        for staged in (self.root / "tmp").glob("*"):
            with contextlib.suppress(OSError):  # another process may be staging a fresh one
                if staged.stat().st_mtime < stale:
                    shutil.rmtree(staged, ignore_errors=True)
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM artifacts WHERE status = 'retired'"
        ).fetchall()
        for row in rows:
            payload = self._payload_dir(row["name"], row["version"])
            if payload.exists():
                destroy(payload, self.root / "trash")

    def _payload_dir(self, name: str, version: int) -> Path:
        return self.root / "artifacts" / name / f"v{version}"

    def _manifest_path(self, name: str, version: int) -> Path:
        return self.root / "artifacts" / name / f"v{version}.manifest.json"

    # -- reading ------------------------------------------------------------------------------

    def _to_ref(self, row: sqlite3.Row) -> ArtifactRef:
        manifest = json.loads(row["manifest"])
        payload = manifest.get("payload")
        path = self.root / payload if payload and row["status"] == "active" else None
        return ArtifactRef(id=row["id"], name=row["name"], version=row["version"],
                           kind=row["kind"], source=row["source"], status=row["status"],
                           manifest=manifest, path=path)

    def _row(self, name: str, version: int | None) -> sqlite3.Row:
        if version is not None:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM artifacts "
                                     "WHERE name = ? AND version = ?", (name, version)).fetchone()
        else:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE name = ? AND "
                                     "status = 'active' ORDER BY version DESC LIMIT 1",
                                     (name,)).fetchone()
        if row is None:
            raise self._not_found(name, version)
        return row

    def _not_found(self, name: str, version: int | None) -> RegistryError:
        known = [r[0] for r in self._conn.execute(
            "SELECT version FROM artifacts WHERE name = ? ORDER BY version", (name,))]
        if not known:
            names = [r[0] for r in self._conn.execute(
                "SELECT DISTINCT name FROM artifacts ORDER BY name")]
            return RegistryError(f"no artifact named {name!r}; known: {', '.join(names) or 'none'}"
                                 " (register it first)")
        if version is None:
            return RegistryError(f"every version of {name!r} is retired ({_vs(known)}); derive or "
                                 "register a new one")
        return RegistryError(f"{name!r} has no version {version}; versions: {_vs(known)}")

    def get(self, ref: RefLike) -> ArtifactRef:
        """The artifact ``name@version`` (``name@3`` or ``name@v3``); the latest active version
        for a bare ``name``. Retired versions are returned too when asked for by number."""
        if isinstance(ref, ArtifactRef):
            name, version = ref.name, ref.version
        else:
            name, version = parse_ref(ref)
        return self._to_ref(self._row(name, version))

    def _get_exact(self, ref: RefLike, action: str) -> ArtifactRef:
        """Like :meth:`get`, but a destructive ``action`` needs the version spelled out."""
        if isinstance(ref, str) and parse_ref(ref)[1] is None:
            raise RegistryError(f"{action} needs an explicit version: '{ref}@<version>'")
        return self.get(ref)

    def versions(self, name: str) -> builtins.list[ArtifactRef]:
        """Every version of ``name``, oldest first (retired ones included)."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM artifacts WHERE name = ? "
                                  "ORDER BY version", (name,)).fetchall()
        if not rows:
            raise self._not_found(name, None)
        return [self._to_ref(r) for r in rows]

    def list(self, status: str | None = None) -> builtins.list[ArtifactRef]:
        """Every artifact version, by name then version; only ``status`` ones if given."""
        if status is not None:
            _check_status(status)
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM artifacts WHERE ? IS NULL OR status = ? "
            "ORDER BY name, version", (status, status)).fetchall()
        return [self._to_ref(r) for r in rows]

    def lineage_of(self, ref: RefLike) -> Lineage:
        """The doc, owner and query ids recorded for an artifact (sorted)."""
        art = self.get(ref)
        found = {}
        for field_name, (table, column) in LINEAGE_TABLES.items():
            found[field_name] = [r[0] for r in self._conn.execute(
                f"SELECT {column} FROM {table} WHERE artifact_id = ? ORDER BY {column}",
                (art.id,))]
        return Lineage(**found)

    def parents_of(self, ref: RefLike) -> builtins.list[tuple[str, ArtifactRef]]:
        """``(relation, parent)`` pairs of an artifact, by parent id."""
        art = self.get(ref)
        rows = self._conn.execute(
            "SELECT p.relation, a.id, a.name, a.version, a.kind, a.source, a.status, a.manifest "
            "FROM lineage_parents AS p JOIN artifacts AS a ON a.id = p.parent_id "
            "WHERE p.artifact_id = ? ORDER BY a.id, p.relation", (art.id,)).fetchall()
        return [(r["relation"], self._to_ref(r)) for r in rows]

    # -- registering --------------------------------------------------------------------------

    def register(self, spec: ModelSpec, payload_dir: Path | None = None,
                 lineage: Lineage | None = None, parents: Mapping[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> ArtifactRef:
        """Register version 1 of a new artifact.

        ``payload_dir`` (a folder, or one file) is copied into the registry, which then owns it;
        without one, the weights stay at ``spec.source``. ``parents`` maps a relation
        (``"teacher"``, ``"encoder"``, ``"cache"``...) to a registered artifact or a list of them;
        an adapter's ``spec.base`` is added as relation ``"base"``. ``lineage`` records the ids
        that went into it; ``extra`` is free JSON kept in the manifest.
        """
        if not isinstance(spec, ModelSpec):
            raise RegistryError(f"register() takes a ModelSpec, not {type(spec).__name__}")
        edges = self._parent_edges(parents)
        base_ref = None
        if spec.base:
            base = self.get(spec.base)
            self._check_active(base)
            base_ref = str(base)
            edges.append(("base", base))
        gguf_info = gguf.register_info(spec)
        staged = self._stage(payload_dir)
        try:
            with transaction(self._conn):
                if self._conn.execute("SELECT 1 FROM artifacts WHERE name = ?",
                                      (spec.name,)).fetchone():
                    raise RegistryError(f"{spec.name!r} is already registered; use "
                                        f"derive('{spec.name}') to add a version")
                manifest = {**spec.to_dict(), "version": 1, "base_ref": base_ref,
                            "forget_requests": [], "extra": dict(extra or {}), **gguf_info}
                art_id = self._insert(manifest, staged, edges)
                self._add_lineage_rows(art_id, lineage)
                ref = self._finish(art_id, staged)
        finally:
            _discard(staged)
        return ref

    def derive(self, name_or_ref: RefLike, payload_dir: Path | None = None,
               lineage: Lineage | None = None, extra: dict[str, Any] | None = None,
               relation: str = "parent", forget_request: str | None = None, *,
               without: Lineage | None = None, inherit_lineage: bool = True,
               params: dict[str, Any] | None = None,
               parents: Mapping[str, Any] | None = None) -> ArtifactRef:
        """Add a new version of an artifact, made from ``name_or_ref``; the old one is untouched.

        The new version keeps the parent's kind, source and params, gets an edge ``relation`` to
        it, and (``inherit_lineage``) a copy of the parent's lineage less the ids in ``without``,
        plus ``lineage``. ``forget_request`` is appended to the inherited list of forget requests
        applied; ``extra`` is merged over the parent's; ``params``, when given, replace the
        parent's. ``parents`` adds further edges (relation -> artifact(s)), e.g. the teacher and
        the score cache of a retrained student. A parent whose weights the registry owns needs
        ``payload_dir`` (the new weights).
        """
        parent = self.get(name_or_ref)
        if not isinstance(relation, str) or not relation:
            raise RegistryError(f"relation must be a non-empty string, got {relation!r}")
        if payload_dir is None and (parent.manifest.get("payload") or not parent.active):
            raise RegistryError(f"derive({str(parent)!r}) needs payload_dir: the new version's "
                                "weights or files")
        staged = self._stage(payload_dir)
        try:
            with transaction(self._conn):
                manifest = self._derived_manifest(parent, extra, forget_request)
                if params is not None:
                    manifest["params"] = dict(params)
                edges = [(relation, parent), *self._parent_edges(parents)]
                art_id = self._insert(manifest, staged, edges)
                if inherit_lineage:
                    self._copy_lineage(parent.id, art_id, without or Lineage())
                self._add_lineage_rows(art_id, lineage)
                ref = self._finish(art_id, staged)
        finally:
            _discard(staged)
        return ref

    def _derived_manifest(self, parent: ArtifactRef, extra: dict[str, Any] | None,
                          forget_request: str | None) -> dict[str, Any]:
        old = parent.manifest
        (latest,) = self._conn.execute("SELECT MAX(version) FROM artifacts WHERE name = ?",
                                       (parent.name,)).fetchone()
        forgets = list(old.get("forget_requests", []))
        if forget_request and forget_request not in forgets:
            forgets.append(forget_request)
        carried = {k: old[k] for k in ("gguf", "dequantized_from", "base_ref") if k in old}
        return {**{k: old.get(k) for k in _SPEC_KEYS}, **carried, "version": latest + 1,
                "forget_requests": forgets, "extra": {**old.get("extra", {}), **(extra or {})}}

    def _parent_edges(self, parents: Mapping[str, Any] | None) -> builtins.list[
            tuple[str, ArtifactRef]]:
        edges: builtins.list[tuple[str, ArtifactRef]] = []
        for relation, targets in (parents or {}).items():
            if not isinstance(relation, str) or not relation:
                raise RegistryError(f"parents keys are relation names, got {relation!r}")
            many = targets if isinstance(targets, list | tuple | set | frozenset) else [targets]
            edges.extend((relation, self.get(t)) for t in many)
        return edges

    def _stage(self, payload_dir: Path | None) -> Path | None:
        if payload_dir is None:
            return None
        return stage_payload(Path(payload_dir), self.root / "tmp")

    def _insert(self, manifest: dict[str, Any], staged: Path | None,
                edges: Sequence[tuple[str, ArtifactRef]]) -> int:
        """Insert the artifact row and its parent edges; returns the new id."""
        name, version = manifest["name"], manifest["version"]
        created = now_iso()
        manifest.update(created_at=created, status="active", versions=library_versions(),
                        payload=f"artifacts/{name}/v{version}" if staged else None,
                        parents=[{"relation": rel, "artifact": str(p), "id": p.id}
                                 for rel, p in edges])
        cur = self._conn.execute(
            "INSERT INTO artifacts(name, version, kind, source, status, created_at, manifest) "
            "VALUES (?, ?, ?, ?, 'active', ?, ?)",
            (name, version, manifest["kind"], manifest["source"], created, dumps(manifest)))
        art_id = int(cur.lastrowid or 0)
        self._conn.executemany(
            "INSERT OR IGNORE INTO lineage_parents(artifact_id, parent_id, relation) "
            "VALUES (?, ?, ?)", [(art_id, p.id, rel) for rel, p in edges])
        return art_id

    def _finish(self, art_id: int, staged: Path | None) -> ArtifactRef:
        """Record counts, move the payload into place and write the manifest file (in the
        caller's transaction; undone on error)."""
        manifest = self._refresh_counts(art_id)
        name, version = manifest["name"], manifest["version"]
        target = self._payload_dir(name, version)
        try:
            if staged is not None:
                if target.exists():  # left by a crash before a commit
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
            atomic_write_json(self._manifest_path(name, version), manifest)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            self._manifest_path(name, version).unlink(missing_ok=True)
            raise
        return self._to_ref(self._conn.execute(
            f"SELECT {_COLUMNS} FROM artifacts WHERE id = ?", (art_id,)).fetchone())

    # -- lineage ------------------------------------------------------------------------------

    def _add_lineage_rows(self, art_id: int, lineage: Lineage | None) -> None:
        if lineage is None:
            return
        if not isinstance(lineage, Lineage):
            raise RegistryError(f"lineage must be a Lineage, not {type(lineage).__name__}")
        for field_name, (table, column) in LINEAGE_TABLES.items():
            self._conn.executemany(
                f"INSERT OR IGNORE INTO {table}(artifact_id, {column}) VALUES (?, ?)",
                ((art_id, i) for i in getattr(lineage, field_name)))

    def _copy_lineage(self, src_id: int, dst_id: int, without: Lineage) -> None:
        for field_name, (table, column) in LINEAGE_TABLES.items():
            temp = f"w_{field_name}"
            fill_temp_ids(self._conn, temp, getattr(without, field_name))
            self._conn.execute(
                f"INSERT OR IGNORE INTO {table}(artifact_id, {column}) "
                f"SELECT ?, {column} FROM {table} WHERE artifact_id = ? "
                f"AND {column} NOT IN (SELECT id FROM temp.{temp})", (dst_id, src_id))

    def _refresh_counts(self, art_id: int) -> dict[str, Any]:
        counts = {field_name: self._conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE artifact_id = ?", (art_id,)).fetchone()[0]
            for field_name, (table, _) in LINEAGE_TABLES.items()}
        return self._patch_manifest(art_id, {"lineage_counts": counts})

    def _patch_manifest(self, art_id: int, changes: dict[str, Any],
                        status: str | None = None) -> dict[str, Any]:
        """Update a manifest (and the status column) inside the caller's transaction."""
        row = self._conn.execute("SELECT manifest FROM artifacts WHERE id = ?",
                                 (art_id,)).fetchone()
        manifest = {**json.loads(row[0]), **changes}
        if status is not None:
            manifest["status"] = status
        self._conn.execute("UPDATE artifacts SET manifest = ?, status = COALESCE(?, status) "
                           "WHERE id = ?", (dumps(manifest), status, art_id))
        return manifest

    def _mutate(self, ref: RefLike, action: str, work: Any) -> ArtifactRef:
        """Run ``work(artifact)`` in a transaction on an active artifact, then refresh its
        lineage counts and manifest file."""
        art = self.get(ref)
        with transaction(self._conn):
            if self._status(art.id) != "active":
                dead = self.get(art)
                raise RegistryError(f"cannot {action} {art}: it was retired "
                                    f"(request {dead.manifest.get('retired_by')})")
            work(art)
            manifest = self._refresh_counts(art.id)
            atomic_write_json(self._manifest_path(art.name, art.version), manifest)
        return self.get(art)

    def _status(self, art_id: int) -> str:
        return str(self._conn.execute("SELECT status FROM artifacts WHERE id = ?",
                                      (art_id,)).fetchone()[0])

    def add_lineage(self, ref: RefLike, lineage: Lineage) -> ArtifactRef:
        """Record more ids that went into an artifact (e.g. documents added to an index)."""
        return self._mutate(ref, "add lineage to", lambda a: self._add_lineage_rows(a.id, lineage))

    def _remove(self, ref: RefLike, field_name: str, ids: Iterable[str]) -> int:
        table, column = LINEAGE_TABLES[field_name]
        removed = [0]

        def work(art: ArtifactRef) -> None:
            fill_temp_ids(self._conn, "rm_ids", getattr(Lineage(**{field_name: ids}), field_name))
            removed[0] = self._conn.execute(
                f"DELETE FROM {table} WHERE artifact_id = ? AND {column} IN "
                "(SELECT id FROM temp.rm_ids)", (art.id,)).rowcount

        self._mutate(ref, "remove lineage from", work)
        return removed[0]

    def remove_lineage_docs(self, ref: RefLike, doc_ids: Iterable[str]) -> int:
        """Forget that ``doc_ids`` went into a mutable artifact (an index after a delete);
        returns how many rows went."""
        return self._remove(ref, "doc_ids", doc_ids)

    def remove_lineage_owners(self, ref: RefLike, owners: Iterable[str]) -> int:
        """Like :meth:`remove_lineage_docs`, for owner ids."""
        return self._remove(ref, "owner_ids", owners)

    def remove_lineage_queries(self, ref: RefLike, query_ids: Iterable[str]) -> int:
        """Like :meth:`remove_lineage_docs`, for query ids."""
        return self._remove(ref, "query_ids", query_ids)

    def affected_by(self, doc_ids: Iterable[str] = (), owner_ids: Iterable[str] = (),
                    query_ids: Iterable[str] = ()) -> builtins.list[ArtifactRef]:
        """Active artifacts that saw any of these ids, directly or through an ancestor.

        One recursive query over the lineage tables (ids go through temp tables, so the
        indexes are used for any number of them). Parents come before children.
        """
        wanted = Lineage(doc_ids, owner_ids, query_ids)
        if not wanted:
            return []
        with transaction(self._conn, "DEFERRED"):
            for field_name in LINEAGE_TABLES:
                fill_temp_ids(self._conn, f"q_{field_name}", getattr(wanted, field_name))
            rows = self._conn.execute(AFFECTED_SQL).fetchall()
        return [self._to_ref(r) for r in rows]

    def hash_lineage(self, doc_ids: Iterable[str] = (), owner_ids: Iterable[str] = (),
                     query_ids: Iterable[str] = (), hasher: Callable[[str, str], str] | None = None) -> int:
        """Replace forgotten ids in every artifact's lineage by ``h:`` + ``hasher(id, kind)`` (kind
        ``doc``, ``owner`` or ``query``; the ledger's keyed hash), in one transaction.

        For the models a forget request does not replace: their lineage still says they saw a
        forgotten item (:meth:`affected_by` finds them when asked with the hashed form) without
        naming it. Returns the number of lineage rows rewritten.
        """
        if hasher is None:
            raise RegistryError("hash_lineage() needs the hasher (the ledger's hash_id)")
        wanted = Lineage(doc_ids, owner_ids, query_ids)
        touched: builtins.list[int] = []
        with transaction(self._conn):
            for field_name, (table, column) in LINEAGE_TABLES.items():
                kind = LINEAGE_KINDS[field_name]
                for value in getattr(wanted, field_name):
                    touched += self._hash_rows(table, column, value, HASHED + hasher(value, kind))
            for art_id in sorted(set(touched)):
                self._write_manifest_file(art_id, self._refresh_counts(art_id))
        return len(touched)

    def _hash_rows(self, table: str, column: str, value: str, hashed: str) -> builtins.list[int]:
        """Rename one id in a lineage table (inside the caller's transaction); the artifacts it was in."""
        ids = [r[0] for r in self._conn.execute(f"SELECT artifact_id FROM {table} WHERE {column} = ?", (value,))]
        if ids:
            self._conn.execute(f"INSERT OR IGNORE INTO {table}(artifact_id, {column}) "
                               f"SELECT artifact_id, ? FROM {table} WHERE {column} = ?", (hashed, value))
            self._conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (value,))
        return ids

    def rewrite_manifests(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        """Apply ``change`` to every manifest (retired ones too), in the database and in the manifest
        files, in one transaction; returns how many changed (e.g. forgotten ids made keyed hashes)."""
        changed = 0
        with transaction(self._conn):
            rows = self._conn.execute("SELECT id, manifest FROM artifacts ORDER BY id").fetchall()
            for art_id, text in rows:
                old = json.loads(text)
                new = change(old)
                if new != old:
                    self._conn.execute("UPDATE artifacts SET manifest = ? WHERE id = ?", (dumps(new), art_id))
                    self._write_manifest_file(art_id, new)
                    changed += 1
        return changed

    def _write_manifest_file(self, art_id: int, manifest: dict[str, Any]) -> None:
        row = self._conn.execute("SELECT name, version FROM artifacts WHERE id = ?", (art_id,)).fetchone()
        atomic_write_json(self._manifest_path(row["name"], row["version"]), manifest)

    @property
    def conn(self) -> sqlite3.Connection:
        """The registry database's connection (to checkpoint it, or read it; write through methods)."""
        return self._conn

    # -- status, forgetting -------------------------------------------------------------------

    def record_forget(self, ref: RefLike, request_id: str) -> ArtifactRef:
        """Append a forget request id to an artifact's manifest (once)."""

        if not request_id:
            raise RegistryError("record_forget() needs a request id")

        def work(art: ArtifactRef) -> None:
            row = self._conn.execute("SELECT manifest FROM artifacts WHERE id = ?",
                                     (art.id,)).fetchone()
            applied = list(json.loads(row[0]).get("forget_requests", []))
            if request_id not in applied:
                self._patch_manifest(art.id, {"forget_requests": [*applied, request_id]})

        return self._mutate(ref, "record a forget request on", work)

    def retire(self, ref: RefLike, request_id: str) -> ArtifactRef:
        """Destroy an artifact's payload, drop its doc/owner/query lineage, keep a tombstone.

        The version must be explicit. Parent edges stay (descendants still trace to it).
        Weights outside the registry (``hf:``, ``pkg:``, ``path:`` without a copy, the .gguf
        file itself) are not touched; the tombstone says so. Retiring twice is a no-op.
        """
        art = self._get_exact(ref, "retire")
        if not request_id:
            raise RegistryError("retire() needs the id of the request that retires it")
        if not art.active:
            return art
        with transaction(self._conn):
            if self._status(art.id) != "active":  # retired meanwhile by another process
                return self.get(art)
            for table, _ in LINEAGE_TABLES.values():
                self._conn.execute(f"DELETE FROM {table} WHERE artifact_id = ?", (art.id,))
            manifest = self._patch_manifest(art.id, self._tombstone(art, request_id), "retired")
            atomic_write_json(self._manifest_path(art.name, art.version), manifest)
        if art.path is not None:
            destroy(art.path, self.root / "trash")
        self._drop_unused_gguf_cache(art)
        return self.get(art)

    def _tombstone(self, art: ArtifactRef, request_id: str) -> dict[str, Any]:
        owned = art.path is not None
        note = ("payload destroyed" if owned else
                f"weights live outside the registry ({art.source}); nothing of ours to destroy")
        return {"retired_at": now_iso(), "retired_by": request_id, "payload_removed": owned,
                "payload_note": note, "lineage_counts": dict.fromkeys(LINEAGE_TABLES, 0)}

    def set_status(self, ref: RefLike, status: str, request_id: str | None = None) -> ArtifactRef:
        """Set ``active`` or ``retired``. Retiring goes through :meth:`retire` (needs
        ``request_id``); a retired artifact cannot come back: derive a new version instead."""
        _check_status(status)
        art = self._get_exact(ref, "set_status")
        if status == art.status:
            return art
        if status == "retired":
            return self.retire(art, request_id or "")
        raise RegistryError(f"{art} was retired (request {art.manifest.get('retired_by')}) and "
                            "its payload and lineage are gone; derive a new version instead")

    # -- models -------------------------------------------------------------------------------

    def _check_active(self, art: ArtifactRef) -> None:
        if not art.active:
            raise RegistryError(
                f"{art} was retired at {art.manifest.get('retired_at')} by forget request "
                f"{art.manifest.get('retired_by')!r}; load a newer version "
                f"(registry.get({art.name!r}))")

    def resolve_path(self, ref: RefLike) -> Path:
        """The local directory the artifact loads from (hub sources: the local HF cache)."""
        art = self.get(ref)
        self._check_active(art)
        if art.path is not None:
            return art.path
        scheme, rest = parse_source(art.source)
        if scheme == "path":
            return sources.resolve_path(rest)
        if scheme == "pkg":
            return sources.resolve_pkg(rest)
        if scheme == "gguf":
            return self._gguf_dir(art)
        return sources.hf_snapshot(rest, art.manifest.get("revision"))

    def load(self, ref: RefLike, device: str = "cpu") -> Any:
        """The model object: ``SentenceTransformer`` (bi_encoder), ``CrossEncoder``
        (cross_encoder), ``(AutoModelForCausalLM, AutoTokenizer)`` in float32 (llm), or the base
        model with the peft adapter on it (adapter)."""
        art = self.get(ref)
        self._check_active(art)
        loaders.check_loadable(art.kind)
        if art.kind == "adapter":
            base = art.manifest.get("base_ref") or art.manifest.get("base")
            return loaders.apply_adapter(self.load(base, device), self.resolve_path(art))
        target, revision = self._load_target(art)
        if art.kind == "bi_encoder":
            return loaders.load_bi_encoder(target, revision, device)
        if art.kind == "cross_encoder":
            return loaders.load_cross_encoder(target, revision, device)
        return loaders.load_causal_lm(target, revision, device)

    def _load_target(self, art: ArtifactRef) -> tuple[str, str | None]:
        """``(folder, None)`` for local weights, ``("org/name", revision)`` for the hub."""
        scheme, rest = parse_source(art.source)
        if art.path is None and scheme == "hf":
            return rest, art.manifest.get("revision")
        return str(self.resolve_path(art)), None

    # -- gguf ---------------------------------------------------------------------------------

    def _gguf_dir(self, art: ArtifactRef) -> Path:
        """The float32 conversion of a .gguf source (:class:`~lethe.registry.gguf.GGUFCache`)."""
        return self._gguf.folder(art, self._store_gguf_info)

    def _store_gguf_info(self, art: ArtifactRef, info: dict[str, Any]) -> None:
        with transaction(self._conn):
            manifest = self._patch_manifest(art.id, {"gguf": info,
                                                     "dequantized_from": info["quant_type"]})
            atomic_write_json(self._manifest_path(art.name, art.version), manifest)

    def _drop_unused_gguf_cache(self, art: ArtifactRef) -> None:
        sha = (art.manifest.get("gguf") or {}).get("sha256")
        if not sha:
            return
        users = self._conn.execute(
            "SELECT COUNT(*) FROM artifacts WHERE status = 'active' "
            "AND json_extract(manifest, '$.payload') IS NULL "
            "AND json_extract(manifest, '$.gguf.sha256') = ?", (sha,)).fetchone()[0]
        if users == 0:
            self._gguf.drop(sha)


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise RegistryError(f"unknown status {status!r}; choose from {', '.join(STATUSES)}")


def _discard(staged: Path | None) -> None:
    if staged is not None and staged.exists():
        shutil.rmtree(staged, ignore_errors=True)


def _vs(versions: Iterable[int]) -> str:
    return ", ".join(f"v{v}" for v in versions)
