#!/usr/bin/env bash
# Install (Debian's `postgresql`), start and prepare a local PostgreSQL server for the store's tests;
# prints the DSN to use on stdout. Idempotent: a server that is already running is reused.
# PostgreSQL refuses to run as root; Debian's pg_createcluster / pg_ctlcluster run it as `postgres`.
set -euo pipefail
log() { echo "postgres.sh: $*" >&2; }

if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
    log "creating cluster $version/main"
    pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
    log "starting cluster $version/main"
    pg_ctlcluster "$version" main start >&2
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
psql_pg() { runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qAt "$@"; }
for _ in $(seq 1 30); do psql_pg -c "SELECT 1" >/dev/null 2>&1 && break; sleep 1; done
# A password login over TCP on loopback, as an application would connect.
if [ "$(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname = 'nowblock'")" != "1" ]; then
    psql_pg -c "CREATE ROLE nowblock LOGIN PASSWORD 'nowblock'" >&2
fi
if [ "$(psql_pg -c "SELECT 1 FROM pg_database WHERE datname = 'nowblock_test'")" != "1" ]; then
    psql_pg -c "CREATE DATABASE nowblock_test OWNER nowblock" >&2
fi
echo "postgresql://nowblock:nowblock@127.0.0.1:${port}/nowblock_test"
