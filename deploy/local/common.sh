# Shared by deploy/local/{up,down}: where the local servers keep their state.
# shellcheck shell=bash
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# PostgreSQL runs as an unprivileged user, who must reach the data folder:
# keep state under /tmp, one folder per checkout.
STATE="${FLAGTRAIL_STATE_DIR:-/tmp/flagtrail-local-$(printf '%s' "$REPO" | cksum | cut -d' ' -f1)}"
PG_DIR="$STATE/pg"
KAFKA_DIR="$STATE/kafka"
KAFKA_LIB="$REPO/deploy/kafka/lib"
PORTS_FILE="$STATE/ports.env"
PG_USER_OS="${FLAGTRAIL_PG_OS_USER:-postgres}"

log() { printf '[local] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_pg_user() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u "$PG_USER_OS" -- "$@")
  else
    "$@"
  fi
}

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/pg_ctl" ] && { printf '%s\n' "$dir"; return 0; }
  done
  command -v pg_ctl >/dev/null && { dirname "$(command -v pg_ctl)"; return 0; }
  return 1
}

load_ports() {
  mkdir -p "$STATE"
  [ -f "$PORTS_FILE" ] && . "$PORTS_FILE"
  PG_PORT="${PG_PORT:-}"
  KAFKA_PORT="${KAFKA_PORT:-}"
  CONTROLLER_PORT="${CONTROLLER_PORT:-}"
}

save_ports() {
  printf 'PG_PORT=%s\nKAFKA_PORT=%s\nCONTROLLER_PORT=%s\n' \
    "$PG_PORT" "$KAFKA_PORT" "$CONTROLLER_PORT" > "$PORTS_FILE"
}

kafka_pid() {
  local pid
  pid="$(cat "$KAFKA_DIR/kafka.pid" 2>/dev/null)" || return 1
  kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}
