# Sourced by `make test`: make sure the local PostgreSQL and Redis are up and point the tests at the servers.
# Each run (each xdist worker) claims a database and a Redis db of its own there (tests/harness/services.py), so
# runs at once never wipe each other. Where neither can be reached, the PostgreSQL/Redis tests skip and say why.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && command -v pg_ctlcluster >/dev/null 2>&1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start 2>/dev/null || true
fi
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  export LORALOOP_TEST_POSTGRES_URL="${LORALOOP_TEST_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}"
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && command -v redis-server >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/loraloop-test-redis.log >/dev/null 2>&1 || true
fi
if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  export LORALOOP_TEST_REDIS_URL="${LORALOOP_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
fi
