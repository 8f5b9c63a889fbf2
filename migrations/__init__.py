"""Alembic migrations for Parley's relational schema (run with ``parley migrate``)."""
