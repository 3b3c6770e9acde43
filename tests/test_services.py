"""The test services' claims (tests/harness/services.py): what one run drops of another's PostgreSQL databases."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.harness import services

POSTGRES_URL = os.environ.get(services.POSTGRES)


@pytest.mark.skipif(not POSTGRES_URL, reason="needs LORALOOP_TEST_POSTGRES_URL (make test sets it)")
def test_a_claim_drops_a_dead_runs_databases_and_leaves_a_live_runs_alone():
    import psycopg

    server = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)[0]
    live, dead = (f"{services.DATABASE_PREFIX}{uuid.uuid4().hex[:16]}" for _ in range(2))
    # A live run holds its claim; between tests its template and its tests' databases have no connection.
    names = [live, f"{live}{services.TEMPLATE_SUFFIX}", f"{live}_0123456789ab",
             dead, f"{dead}{services.TEMPLATE_SUFFIX}", f"{dead}_0123456789ab",
             f"{services.DATABASE_PREFIX}{uuid.uuid4().hex[:16]}_orphan"]  # its run's claim already gone
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            with psycopg.connect(f"{server}/{live}", autocommit=True):
                services._drop_leftovers(admin)
            left = {n for (n,) in admin.execute("select datname from pg_database").fetchall()}
            assert {live, f"{live}{services.TEMPLATE_SUFFIX}", f"{live}_0123456789ab"} <= left
            assert not left & set(names[3:])
        finally:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
