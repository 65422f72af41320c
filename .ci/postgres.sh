#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for hauler's tests: loopback only, trust auth, no fsync.
#
#   eval "$(bash .ci/postgres.sh start)"   # prints `export HAULER_TEST_POSTGRES_DSN=...`
#   bash .ci/postgres.sh env               # the same lines again, for another shell
#   bash .ci/postgres.sh status
#   bash .ci/postgres.sh restart           # fast restart in place (fault tests)
#   bash .ci/postgres.sh stop              # stops the cluster and deletes its files
#
# `start` uses the PostgreSQL server binaries it finds ($PG_BINDIR, `pg_config --bindir`,
# /usr/lib/postgresql/*/bin, PATH) and installs Debian's `postgresql` package when there are
# none. The cluster lives in a new temporary directory and listens on 127.0.0.1 only, on
# port $HAULER_PG_PORT (default 54329) or the next free one. Its state (data directory,
# port, the env file) is kept in $HAULER_PG_STATE_DIR (default .hauler-ci/postgres in the
# repository), so a second `start` reuses a cluster that is still running and `stop`
# finds it. Only the export lines go to stdout; progress goes to stderr.
#
# initdb and pg_ctl refuse to run as root: as root they run as the `postgres` system user
# (created if missing), which owns the temporary directory.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state_dir=${HAULER_PG_STATE_DIR:-$repo/.hauler-ci/postgres}
state_file=$state_dir/state
env_file=$state_dir/env
first_port=${HAULER_PG_PORT:-54329}
run_user=postgres

say() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# Run a command as the cluster's owner: ourselves, or `postgres` when we are root.
as_owner() {
    if [[ $(id -u) -ne 0 ]]; then
        "$@"
    elif command -v runuser >/dev/null; then
        runuser -u "$run_user" -- "$@"
    else
        su -s /bin/sh "$run_user" -c "$(printf '%q ' "$@")"
    fi
}

# Run a command as root: directly, or with sudo when it needs no password.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "need root (or password-less sudo) to run: $*"
    fi
}

is_server_bindir() {
    [[ -n $1 && -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]
}

# Print the first directory holding initdb, pg_ctl and postgres; fail if there is none.
find_bindir() {
    local dir
    if [[ -n ${PG_BINDIR:-} ]]; then
        is_server_bindir "$PG_BINDIR" || die "PG_BINDIR=$PG_BINDIR has no initdb/pg_ctl/postgres"
        echo "$PG_BINDIR"
        return
    fi
    if command -v pg_config >/dev/null; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if is_server_bindir "$dir"; then
            echo "$dir"
            return
        fi
    fi
    # Debian's layout; the newest version first.
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4 -rn); do
        if is_server_bindir "$dir"; then
            echo "$dir"
            return
        fi
    done
    if command -v initdb >/dev/null; then
        dir=$(dirname "$(readlink -f "$(command -v initdb)")")
        if is_server_bindir "$dir"; then
            echo "$dir"
            return
        fi
    fi
    return 1
}

install_server() {
    say "no PostgreSQL server binaries found; installing Debian's postgresql package"
    command -v apt-get >/dev/null || die "apt-get not found: install a PostgreSQL server (initdb, pg_ctl) or set PG_BINDIR"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        postgresql >&2
}

ensure_run_user() {
    [[ $(id -u) -eq 0 ]] || return 0
    if ! id -u "$run_user" >/dev/null 2>&1; then
        say "creating the system user $run_user to own the cluster"
        useradd --system --no-create-home --shell /bin/sh "$run_user"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
    local port
    for ((port = first_port; port < first_port + 100; port++)); do
        if ! port_in_use "$port"; then
            echo "$port"
            return
        fi
    done
    die "no free port in $first_port..$((first_port + 99))"
}

load_state() {
    [[ -f $state_file ]] || return 1
    # shellcheck source=/dev/null
    source "$state_file"
    [[ -n ${PG_DIR:-} && -n ${PG_PORT:-} && -n ${PG_BIN:-} ]]
}

# Whether the cluster recorded in the state file is up and accepting connections (a
# postmaster that died unreaped still passes `pg_ctl status`).
running() {
    load_state || return 1
    [[ -d $PG_DIR/data ]] || return 1
    (cd "$PG_DIR" && as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1) ||
        return 1
    if [[ -x $PG_BIN/pg_isready ]]; then
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 5
    else
        port_in_use "$PG_PORT"
    fi
}

cmd_start() {
    if running; then
        say "reusing the cluster in $PG_DIR (port $PG_PORT)"
        cat "$env_file"
        return
    fi
    if load_state; then
        say "the recorded cluster is not running; starting a new one"
        cmd_stop
    fi

    local bindir
    if ! bindir=$(find_bindir); then
        install_server
        bindir=$(find_bindir) || die "installed postgresql but found no server binaries"
    fi
    say "server binaries: $bindir ($("$bindir/postgres" --version))"
    ensure_run_user

    local dir port
    dir=$(mktemp -d "${TMPDIR:-/tmp}/hauler-pg.XXXXXX")
    chmod 700 "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        chown "$run_user:" "$dir"
    fi
    port=$(free_port)
    mkdir -p "$state_dir"
    # Recorded before anything can fail, so `stop` cleans up a half-made cluster too.
    printf 'PG_DIR=%q\nPG_PORT=%q\nPG_BIN=%q\n' "$dir" "$port" "$bindir" >"$state_file"

    # initdb and the server need a working directory they can read.
    cd "$dir"
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync \
        >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        die "initdb failed"
    }
    # Test settings: loopback only, durability off, room for parallel test pools.
    as_owner tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# hauler tests (.ci/postgres.sh)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >&2 || {
        cat "$dir/server.log" >&2 || true
        die "the server did not start"
    }
    local pid
    pid=$(head -n1 "$dir/data/postmaster.pid")
    printf 'PG_PID=%q\n' "$pid" >>"$state_file"
    printf 'export HAULER_TEST_POSTGRES_DSN=%s\n' \
        "postgresql://postgres@127.0.0.1:$port/postgres" >"$env_file"
    say "started: pid $pid, port $port, data in $dir/data (stop: bash .ci/postgres.sh stop)"
    cat "$env_file"
}

cmd_stop() {
    if ! load_state; then
        say "no cluster recorded in $state_file; nothing to stop"
        rm -f "$state_file" "$env_file"
        return
    fi
    if running; then
        (cd "$PG_DIR" && as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop \
            >/dev/null 2>&1) || true
    fi
    if [[ -n ${PG_PID:-} ]] && kill -0 "$PG_PID" 2>/dev/null; then
        kill -9 "$PG_PID" 2>/dev/null || true
    fi
    case $PG_DIR in
        "${TMPDIR:-/tmp}"/hauler-pg.*) rm -rf "$PG_DIR" ;;
        *) say "not deleting $PG_DIR: not a directory this script made" ;;
    esac
    rm -f "$state_file" "$env_file"
    say "stopped and removed the cluster in $PG_DIR"
}

# Restart the server in place (fast shutdown: connections are cut), for fault tests.
cmd_restart() {
    running || die "no cluster is running (bash .ci/postgres.sh start)"
    (cd "$PG_DIR" && as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" \
        -m fast -w -t 60 restart >&2) || die "the server did not restart"
    local pid
    pid=$(head -n1 "$PG_DIR/data/postmaster.pid")
    sed -i "s/^PG_PID=.*/PG_PID=$pid/" "$state_file"
    say "restarted: pid $pid"
}

cmd_env() {
    running || die "no cluster is running (bash .ci/postgres.sh start)"
    cat "$env_file"
}

cmd_status() {
    if running; then
        say "running: port $PG_PORT, data in $PG_DIR/data"
    else
        say "not running"
        return 1
    fi
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    status) cmd_status ;;
    restart) cmd_restart ;;
    *)
        echo "usage: bash .ci/postgres.sh start|stop|restart|env|status" >&2
        exit 2
        ;;
esac
