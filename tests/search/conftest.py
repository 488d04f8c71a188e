"""Fixtures of the search tests: a throwaway PostgreSQL server (see tests/postgres.py)."""

from __future__ import annotations

from tests.postgres import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]
