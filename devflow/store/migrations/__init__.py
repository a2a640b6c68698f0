"""Alembic migrations for both databases. ``HEAD`` is checked against the tree by a test,
so that a process can tell whether its database is current without loading Alembic."""

HEAD = "0011"
