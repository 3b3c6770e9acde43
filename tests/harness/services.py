"""The test services (tests/services.sh) shared by every run on this machine: each run, and each xdist worker,
claims a PostgreSQL database and a Redis db of its own, so two runs at once never wipe each other's data.

``LORALOOP_TEST_POSTGRES_URL`` and ``LORALOOP_TEST_REDIS_URL`` arrive naming the servers; ``claim`` points them at
what this process claimed (tests read them at import, so tests/conftest.py claims before importing any test) and
``Claims.release`` drops the database and frees the db. A claim is an open connection: a run that died without
releasing leaves a database nobody is connected to, which the next claim drops, and a Redis db nobody holds. The
databases a run's tests create are named after its claim (tests/harness/db.py): they go with it.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

POSTGRES = "LORALOOP_TEST_POSTGRES_URL"
REDIS = "LORALOOP_TEST_REDIS_URL"
DATABASE_PREFIX = "loraloop_test_"
RUN_DATABASE = re.compile(rf"{DATABASE_PREFIX}[0-9a-f]{{16}}")  # a run's claim; "<claim>_…": its tests' (db.py)
TEMPLATE_SUFFIX = "_template"
REDIS_CLIENT_NAME = "loraloop-tests"


@dataclass
class Claims:
    """What this process holds, and the server URLs it was given (put back on release)."""

    given: dict[str, str] = field(default_factory=dict)
    release_steps: list[Any] = field(default_factory=list)

    def release(self) -> None:
        for step in reversed(self.release_steps):
            step()
        self.release_steps.clear()
        os.environ.update(self.given)


def claim() -> Claims:
    """Claim a database and a Redis db for this process; rewrite the two variables to name them."""
    claims = Claims({name: os.environ[name] for name in (POSTGRES, REDIS) if os.environ.get(name)})
    try:
        if POSTGRES in claims.given:
            os.environ[POSTGRES] = _claim_postgres(claims.given[POSTGRES], claims)
        if REDIS in claims.given:
            os.environ[REDIS] = _claim_redis(claims.given[REDIS], claims)
    except BaseException:
        claims.release()
        raise
    return claims


def _claim_postgres(server_url: str, claims: Claims) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"

    def dsn(database: str | None) -> str:
        return url.set(drivername="postgresql", database=database).render_as_string(hide_password=False)

    try:
        admin = psycopg.connect(dsn(url.database or "postgres"), autocommit=True)
    except psycopg.Error as exc:
        raise RuntimeError(f"{POSTGRES}: cannot reach the test PostgreSQL ({exc})".strip()) from None
    with admin:
        _drop_leftovers(admin)
        admin.execute(f'CREATE DATABASE "{name}"')
    holder = psycopg.connect(dsn(name), autocommit=True)

    def drop() -> None:
        holder.close()
        with psycopg.connect(dsn(url.database or "postgres"), autocommit=True) as conn:
            for derived in _databases(conn, f"{name}_"):  # its tests' and their template
                conn.execute(f'DROP DATABASE IF EXISTS "{derived}" WITH (FORCE)')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    claims.release_steps.append(drop)
    return url.set(database=name).render_as_string(hide_password=False)


def _databases(conn: Any, prefix: str, *, unconnected: bool = False) -> list[str]:
    query = "select datname from pg_database d where starts_with(datname, %s)"
    if unconnected:
        query += " and not exists (select 1 from pg_stat_activity a where a.datname = d.datname)"
    return [name for (name,) in conn.execute(query, (prefix,)).fetchall()]


def _drop_leftovers(admin: Any) -> None:
    """What runs that died left: their claims (which nobody holds any more), then every database named after a
    claim that is gone. A live run's template and tests' databases are often unconnected between tests: they stay."""
    import psycopg

    unconnected = _databases(admin, DATABASE_PREFIX, unconnected=True)
    claims = {n for n in _databases(admin, DATABASE_PREFIX) if RUN_DATABASE.fullmatch(n)}
    live = claims - set(unconnected)

    def claim_of(derived: str) -> str:
        return derived[:len(DATABASE_PREFIX) + 16]

    orphans = [n for n in unconnected if n not in claims and claim_of(n) not in live]
    for leftover in [*orphans, *(n for n in unconnected if n in claims)]:
        try:
            admin.execute(f'DROP DATABASE IF EXISTS "{leftover}"')
        except psycopg.Error:
            pass  # someone connected since, or it is not ours to drop


def _claim_redis(server_url: str, claims: Claims) -> str:
    """The first db no other run holds. A run holds its db through a named connection selected to it; when two
    claim the same db at once, both see each other and the later connection (the higher id) moves on."""
    import redis

    parts = urlsplit(server_url)
    probe = redis.Redis.from_url(urlunsplit(parts._replace(path="/0")))
    try:
        probe.ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"{REDIS}: cannot reach the test Redis ({exc})") from None
    try:
        databases = int(probe.config_get("databases").get("databases", 16))
    except redis.ResponseError:  # CONFIG refused: Redis's default
        databases = 16
    finally:
        probe.close()
    for db in range(1, databases):  # db 0 is the default of whatever else uses this Redis
        url = urlunsplit(parts._replace(path=f"/{db}"))
        holder = redis.Redis.from_url(url, single_connection_client=True)
        holder.client_setname(REDIS_CLIENT_NAME)
        me = holder.client_id()
        holders = [int(c["id"]) for c in holder.client_list()
                   if c.get("name") == REDIS_CLIENT_NAME and int(c["db"]) == db]
        if min(holders) == me:
            holder.flushdb()  # whatever a run that died left behind

            def free(holder: redis.Redis = holder) -> None:
                holder.flushdb()
                holder.close()

            claims.release_steps.append(free)
            return url
        holder.close()
    raise RuntimeError(f"{REDIS}: all {databases - 1} Redis dbs of the test Redis are held by other runs")
