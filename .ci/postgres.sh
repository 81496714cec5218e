#!/usr/bin/env bash
# A throwaway PostgreSQL server for the `fcgpu search` tests (tests/test_search_postgres.py).
#
#   . .ci/postgres.sh start   # sourced: starts it and exports FCGPU_TEST_POSTGRES_URL
#   . .ci/postgres.sh stop    # sourced: stops it, removes its files, unsets the variable
#   .ci/postgres.sh start     # executed: starts it and prints the URL on stdout
#   .ci/postgres.sh stop      # executed: stops it
#   .ci/postgres.sh status    # executed: prints the URL if it runs, else exits 1
#   .ci/postgres.sh halt      # executed: stops the server, keeping its data and port
#   .ci/postgres.sh resume    # executed: starts a halted server again (same data, port, URL)
#
# `start` installs PostgreSQL from the distribution's packages when no server binaries
# are found (apt-get, as root; the package's own cluster is not started), creates a
# cluster in a fresh temporary folder as an unprivileged user (postgres, else nobody:
# the server refuses to run as root), starts it on 127.0.0.1 at a free port with its
# unix socket in that folder, creates the database fcgpu_test and prints
#   postgresql+psycopg2://fcgpu@127.0.0.1:PORT/fcgpu_test
# (trust authentication on loopback only). Starting twice reuses the running server;
# stopping a server that does not run does nothing. Any failure exits non-zero with the
# reason and the server log on stderr. `halt` and `resume` are how the search tests
# restart the server under a running study (tests/test_search_faults.py runs its own
# server, with its own FCGPU_PG_STATE, so the shared one is never restarted).

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # sourced: run the real work in a child bash, so the caller's shell options and
    # variables stay as they were, and export the result
    _fcgpu_pg_sourced() {
        local script="${BASH_SOURCE[0]}" url
        case "${1:-}" in
            start)
                url="$(bash "$script" start)" || {
                    echo ".ci/postgres.sh: could not start PostgreSQL" >&2
                    return 1
                }
                export FCGPU_TEST_POSTGRES_URL="$url"
                echo ".ci/postgres.sh: FCGPU_TEST_POSTGRES_URL=$url" >&2
                ;;
            stop)
                bash "$script" stop || return 1
                unset FCGPU_TEST_POSTGRES_URL
                ;;
            *)
                echo "usage: . .ci/postgres.sh start|stop" >&2
                return 2
                ;;
        esac
    }
    _fcgpu_pg_sourced "$@"
    _fcgpu_pg_rc=$?
    unset -f _fcgpu_pg_sourced
    return $_fcgpu_pg_rc
fi

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEY="$(printf %s "$ROOT" | md5sum | cut -c1-10)"
STATE="${FCGPU_PG_STATE:-${TMPDIR:-/tmp}/fcgpu-ci-postgres-$KEY.state}"
DB=fcgpu_test
PGUSER_NAME=fcgpu

log() { echo ".ci/postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

find_bindir() {
    local d
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

install_postgres() {
    [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is not available"
    log "installing PostgreSQL from the distribution's packages"
    # keep the package from starting its own cluster (no init system in CI containers)
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        made_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                postgresql
    } >&2 || rc=$?
    [[ $made_policy -eq 1 ]] && rm -f "$policy"
    [[ $rc -eq 0 ]] || die "apt-get install postgresql failed (exit $rc)"
}

# run a command as the unprivileged server user (directly when not root)
as_user() {
    if [[ $EUID -ne 0 ]]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$RUN_AS" -- "$@"
    else
        su -s /bin/sh "$RUN_AS" -c "$(printf '%q ' "$@")"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

read_state() {
    [[ -f $STATE ]] || return 1
    # shellcheck source=/dev/null
    . "$STATE"
    [[ -n ${PGDIR:-} && -n ${PORT:-} && -n ${URL:-} ]]
}

running() {
    read_state || return 1
    [[ -d $PGDIR/data ]] || return 1
    "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d "$DB" -U "$PGUSER_NAME" 2>/dev/null
}

cleanup_dir() {
    [[ -n ${PGDIR:-} && -d $PGDIR && $PGDIR == */fcgpu-pg.* ]] && rm -rf "$PGDIR"
    rm -f "$STATE"
}

stop() {
    if ! read_state; then
        log "no server recorded in $STATE: nothing to stop"
        return 0
    fi
    RUN_AS="${RUN_AS_USER:-}"
    [[ -n $RUN_AS ]] || RUN_AS=postgres
    if [[ -f $PGDIR/data/postmaster.pid ]]; then
        if ! as_user "$BINDIR/pg_ctl" -D "$PGDIR/data" -m fast -w -t 30 stop >&2; then
            local pid
            pid="$(head -n1 "$PGDIR/data/postmaster.pid" 2>/dev/null || true)"
            if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
                log "pg_ctl stop failed; sending SIGQUIT to postmaster $pid"
                kill -QUIT "$pid" 2>/dev/null || true
                sleep 2
            fi
        fi
    fi
    cleanup_dir
    log "stopped PostgreSQL on port $PORT and removed $PGDIR"
}

# start the server of $PGDIR on 127.0.0.1:$PORT (as $RUN_AS), waiting until it accepts
pg_start() {
    local opts="-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$PGDIR"
    opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    as_user "$BINDIR/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 -o "$opts" start >&2
}

halt() {
    read_state || die "no server recorded in $STATE: nothing to halt"
    RUN_AS="${RUN_AS_USER:-}"
    if [[ ! -f $PGDIR/data/postmaster.pid ]]; then
        log "the server on port $PORT is not running"
        return 0
    fi
    as_user "$BINDIR/pg_ctl" -D "$PGDIR/data" -m fast -w -t 30 stop >&2 ||
        die "pg_ctl stop failed"
    log "halted PostgreSQL on port $PORT (data kept in $PGDIR; .ci/postgres.sh resume)"
}

resume() {
    read_state || die "no server recorded in $STATE: start one first"
    RUN_AS="${RUN_AS_USER:-}"
    if running; then
        log "PostgreSQL already runs on port $PORT"
    else
        if ! pg_start; then
            tail -n 20 "$PGDIR/server.log" >&2 || true
            die "the server did not start again on port $PORT"
        fi
        running || die "the server does not answer on 127.0.0.1:$PORT"
        log "resumed PostgreSQL on port $PORT"
    fi
    echo "$URL"
}

start() {
    if running; then
        log "PostgreSQL already runs on port $PORT ($PGDIR)"
        echo "$URL"
        return 0
    fi
    if read_state; then
        log "stale state in $STATE: cleaning up"
        stop
    fi
    local bindir
    if ! bindir="$(find_bindir)"; then
        install_postgres
        bindir="$(find_bindir)" || die "no PostgreSQL server binaries found after installing"
    fi
    RUN_AS=""
    if [[ $EUID -eq 0 ]]; then
        if id postgres >/dev/null 2>&1; then RUN_AS=postgres; else RUN_AS=nobody; fi
    fi
    { : >"$STATE"; } 2>/dev/null || die "cannot write the state file $STATE"
    local dir port
    dir="$(mktemp -d "${TMPDIR:-/tmp}/fcgpu-pg.XXXXXX")"
    chmod 700 "$dir"
    [[ -n $RUN_AS ]] && chown "$RUN_AS" "$dir"
    log "initdb in $dir/data as ${RUN_AS:-$(id -un)} ($bindir)"
    PGDIR=$dir BINDIR=$bindir PORT=""
    if ! as_user "$bindir/initdb" -D "$dir/data" -U "$PGUSER_NAME" -A trust -E UTF8 \
        --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        cleanup_dir
        die "initdb failed"
    fi
    local attempt started=0
    for attempt in 1 2 3; do
        port="$(free_port)" || { cleanup_dir; die "could not find a free TCP port"; }
        PORT=$port
        URL="postgresql+psycopg2://$PGUSER_NAME@127.0.0.1:$port/$DB"
        # record it first, so `stop` can clean up whatever happens next
        cat >"$STATE" <<EOF
PGDIR='$dir'
PORT='$port'
BINDIR='$bindir'
URL='$URL'
RUN_AS_USER='$RUN_AS'
EOF
        log "starting the server on 127.0.0.1:$port (attempt $attempt)"
        if pg_start; then
            started=1
            break
        fi
        # another process took the port between our probe and the server's bind: retry
        grep -q "could not bind\|Address already in use" "$dir/server.log" 2>/dev/null || break
        log "port $port was taken meanwhile; trying another"
    done
    if [[ $started -ne 1 ]]; then
        log "server log:"
        tail -n 40 "$dir/server.log" >&2 || true
        stop || true
        die "the server did not start"
    fi
    if ! as_user "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$PGUSER_NAME" "$DB" >&2; then
        tail -n 20 "$dir/server.log" >&2 || true
        stop || true
        die "createdb $DB failed"
    fi
    running || { stop || true; die "the server does not answer on 127.0.0.1:$port"; }
    log "PostgreSQL runs: $URL (stop with .ci/postgres.sh stop)"
    echo "$URL"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if running; then echo "$URL"; else exit 1; fi
        ;;
    halt) halt ;;
    resume) resume ;;
    *)
        echo "usage: $0 start|stop|status|halt|resume" >&2
        exit 2
        ;;
esac
