#!/usr/bin/env bash
# Make sure the services the test suite talks to answer on this machine:
# Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (database `test`).
# moto's SQS server is started by the test session itself (tests/conftest.py).
# dockerd (for tests/e2e/test_container.py) is started when installed and not answering.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_redis() {
  if listening 6379; then echo "redis: already listening on 6379"; return; fi
  if ! command -v redis-server >/dev/null; then
    echo "redis: installing redis-server from Debian"
    as_root apt-get update -qq && as_root apt-get install -y -qq redis-server >/dev/null
  fi
  mkdir -p /tmp/fleetinfer-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/fleetinfer-redis --logfile /tmp/fleetinfer-redis/redis.log
  for _ in $(seq 50); do listening 6379 && { echo "redis: started"; return; }; sleep 0.1; done
  echo "redis: failed to start (see /tmp/fleetinfer-redis/redis.log)" >&2; exit 1
}

ensure_postgres() {
  if listening 5432; then echo "postgresql: already listening on 5432"; return; fi
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "postgresql: installing from Debian"
    as_root apt-get update -qq && as_root apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 100); do listening 5432 && break; sleep 0.1; done
  listening 5432 || { echo "postgresql: failed to start" >&2; exit 1; }
  echo "postgresql: started"
}

ensure_postgres_db() {
  # trust auth for local TCP is what this machine ships; create the `test` database if missing.
  if command -v psql >/dev/null; then
    psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" \
      | grep -q 1 || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test" >/dev/null
  fi
}

ensure_docker() {
  # not fatal: without an engine the container test reports xfail (none installed) or fails
  # (installed, not answering), saying which
  if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then
    echo "docker: no container engine installed (apt-get install docker.io): the container test will report xfail"
    return
  fi
  if ! command -v debootstrap >/dev/null; then  # the image's Debian base is made with it
    echo "docker: installing debootstrap from Debian"
    as_root apt-get update -qq && as_root apt-get install -y -qq debootstrap >/dev/null || true
  fi
  if docker info >/dev/null 2>&1; then echo "docker: already answering"; return; fi
  mkdir -p /tmp/fleetinfer-docker
  as_root bash -c 'nohup dockerd >/tmp/fleetinfer-docker/dockerd.log 2>&1 &' || true
  for _ in $(seq 100); do docker info >/dev/null 2>&1 && { echo "docker: started dockerd"; return; }; sleep 0.2; done
  echo "docker: dockerd did not start (see /tmp/fleetinfer-docker/dockerd.log): the container test will fail" >&2
}

ensure_redis
ensure_postgres
ensure_postgres_db
ensure_docker
