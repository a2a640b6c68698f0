"""Registering the templates and personas that runs use: name@version is bound to one hash."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devflow.errors import Code, DevflowError
from devflow.store.database import Database
from devflow.store.tables import DEFINITION

_CONFLICT = {"template": Code.TEMPLATE_VERSION_CONFLICT, "persona": Code.PERSONA_VERSION_CONFLICT}


class Registry:
    def __init__(self, db: Database) -> None:
        self.db = db
        # (kind, name, version, hash) known to be stored: a stored row never changes, so a
        # long-lived process registers each definition once, not once per run.
        self._stored: set[tuple[str, str, str, str]] = set()

    def register(self, items: list[tuple[str, str, str, str, Mapping[str, Any]]],
                 now: datetime) -> None:
        """Register (kind, name, version, hash, body) items; a known one with another hash fails."""
        new = [item for item in items if item[:4] not in self._stored]
        if not new:
            return

        def tx(conn: sa.Connection) -> None:
            self.db.serialize(conn, "devflow-definitions")
            for kind, name, version, digest, body in new:
                row = conn.execute(_BY_KEY, {"kind": kind, "name": name,
                                             "version": version}).first()
                if row is None:
                    conn.execute(sa.insert(DEFINITION).values(
                        kind=kind, name=name, version=version, hash=digest, body=dict(body),
                        registered_at=now))
                elif row.hash != digest:
                    raise DevflowError(
                        _CONFLICT[kind],
                        f"{kind} {name}@{version} was registered on {row.registered_at:%Y-%m-%d} "
                        f"with hash {row.hash[:12]}, and its definition now hashes to "
                        f"{digest[:12]}",
                        hint=f"a changed {kind} needs a new version: bump `version` in its file "
                             f"(runs already started keep the definition they began with)",
                        ref=f"{name}@{version}")
        self.db.write(tx)
        self._stored.update(item[:4] for item in new)


_BY_KEY = sa.select(DEFINITION.c.hash, DEFINITION.c.registered_at).where(
    DEFINITION.c.kind == sa.bindparam("kind"), DEFINITION.c.name == sa.bindparam("name"),
    DEFINITION.c.version == sa.bindparam("version"))
