#!/usr/bin/env bash
# Real services on loopback for the test suite and local use:
#   PostgreSQL (MLflow backend store), SeaweedFS (S3 API: MLflow artifacts + DVC remote),
#   an MLflow tracking server using both.
# Usage: infra/local/services.sh start|stop|status|env     (state in .services/, idempotent)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STATE="${MEDOPS_SERVICES_DIR:-$ROOT/.services}"
BIN="$ROOT/.venv/bin"
PG_PORT="${MEDOPS_PG_PORT:-55432}"
S3_PORT=8333
MLFLOW_PORT="${MEDOPS_MLFLOW_PORT:-55000}"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
export AWS_ACCESS_KEY_ID="${MEDOPS_S3_KEY:-medops-test-key}"
export AWS_SECRET_ACCESS_KEY="${MEDOPS_S3_SECRET:-medops-test-secret-0123456789}"
PG_PASSWORD="${MEDOPS_PG_PASSWORD:-medops-test-pg}"

env_lines() {
  cat <<ENV
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export MEDOPS_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
ENV
}

wait_for() {  # url seconds
  for _ in $(seq 1 "$2"); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 1; done
  echo "timed out waiting for $1" >&2; return 1
}

check_disk() {  # SeaweedFS marks every volume read-only below 1 % free disk: uploads then fail with HTTP 500
  local size_k free_k need_k
  read -r size_k free_k < <(df -Pk "$STATE" | awk 'NR==2 {print $2, $4}')
  need_k=$(( size_k / 100 + ${MEDOPS_SERVICES_HEADROOM_GB:-3} * 1024 * 1024 ))
  if [ "$free_k" -lt "$need_k" ]; then
    echo "not enough free disk for the S3 store: $STATE has $(( free_k / 1024 / 1024 )) GiB free," \
         "needs $(( need_k / 1024 / 1024 )) GiB (SeaweedFS stops accepting writes below 1 % of the disk free," \
         "plus ${MEDOPS_SERVICES_HEADROOM_GB:-3} GiB for runs and artifacts). Free space on that disk (old" \
         "/tmp/pytest-of-$(id -un) folders, unused DVC caches) or set MEDOPS_SERVICES_DIR to a folder on a" \
         "larger disk." >&2
    return 1
  fi
}

start() {
  mkdir -p "$STATE"
  check_disk
  [ -n "$PG_BIN" ] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }
  # PostgreSQL, owned by the postgres user, loopback only
  if [ ! -f "$STATE/pg/PG_VERSION" ]; then
    mkdir -p "$STATE/pg"; chown postgres "$STATE/pg" "$STATE"
    echo "$PG_PASSWORD" > "$STATE/pgpass"; chown postgres "$STATE/pgpass"
    su postgres -c "$PG_BIN/initdb -D '$STATE/pg' -U postgres --auth=scram-sha-256 --pwfile='$STATE/pgpass'" >/dev/null
  fi
  touch "$STATE/pg.log"; chown postgres "$STATE/pg.log"
  if ! su postgres -c "$PG_BIN/pg_ctl -D '$STATE/pg' status" >/dev/null 2>&1; then
    su postgres -c "$PG_BIN/pg_ctl -D '$STATE/pg' -l '$STATE/pg.log' -w start \
      -o '-p $PG_PORT -c listen_addresses=127.0.0.1 -k $STATE/pg'" >/dev/null
  fi
  PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1 || \
    PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE mlflow" >/dev/null
  # SeaweedFS S3 (credentials from the environment; a wrong secret is rejected)
  if ! curl -fsS -o /dev/null "http://127.0.0.1:$S3_PORT/" 2>/dev/null && ! [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$S3_PORT/)" = "403" ]; then
    mkdir -p "$STATE/weed"
    nohup "$BIN/weed" mini -dir="$STATE/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -webdav=false -admin.ui=false \
      -s3.port.iceberg=0 > "$STATE/weed.log" 2>&1 &
    echo $! > "$STATE/weed.pid"
    for _ in $(seq 1 60); do
      code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/" || true)
      [ "$code" != "000" ] && break; sleep 1
    done
  fi
  "$BIN/python" - <<PY
import boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:$S3_PORT", region_name="us-east-1")
have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
for b in ("mlflow", "dvc"):
    if b not in have:
        s3.create_bucket(Bucket=b)
PY
  # MLflow tracking server: PostgreSQL backend store, S3 artifact store
  if ! curl -fsS -o /dev/null "http://127.0.0.1:$MLFLOW_PORT/health" 2>/dev/null; then
    MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" nohup "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
      --backend-store-uri "postgresql+psycopg2://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow" \
      --artifacts-destination s3://mlflow/artifacts --workers 1 > "$STATE/mlflow.log" 2>&1 &
    echo $! > "$STATE/mlflow.pid"
    wait_for "http://127.0.0.1:$MLFLOW_PORT/health" 120
  fi
  env_lines > "$STATE/env.sh"
  echo "services up: PostgreSQL :$PG_PORT, S3 :$S3_PORT, MLflow http://127.0.0.1:$MLFLOW_PORT (source $STATE/env.sh)"
}

stop() {
  for svc in mlflow weed; do
    if [ -f "$STATE/$svc.pid" ]; then
      pid=$(cat "$STATE/$svc.pid"); pkill -TERM -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true
      rm -f "$STATE/$svc.pid"
    fi
  done
  if [ -n "$PG_BIN" ] && [ -f "$STATE/pg/PG_VERSION" ]; then
    su postgres -c "$PG_BIN/pg_ctl -D '$STATE/pg' -m fast stop" >/dev/null 2>&1 || true
  fi
  echo "services stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) env_lines ;;
  status) curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health" && echo " mlflow ok" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
