"""Alembic environment: one tree for SQLite and PostgreSQL, batch mode on SQLite."""

from __future__ import annotations

from alembic import context

from devflow.store import tables

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - devflow always hands over a connection
    raise RuntimeError("run migrations through `devflow db upgrade`")

context.configure(
    connection=connection,
    target_metadata=tables.METADATA,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
