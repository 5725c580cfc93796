#!/usr/bin/env bash
# Installs the system tools the build and tests need, only when they are missing, so that
# `make run` and `make test` work on a fresh Debian machine with nothing installed by hand.
# Each entry is "command:debian-package".
set -euo pipefail

tools=(
  "protoc:protobuf-compiler" # tonic-build and etcd-client's build script need protoc
  "etcd:etcd-server"         # the peer directory's tests start a real etcd
  "nats-server:nats-server"  # the event bus's tests start a real NATS server
  "runuser:util-linux"       # scripts/test-postgres.sh runs PostgreSQL as postgres when root
  "mosquitto_sub:mosquitto-clients" # the AS's MQTT server is tested with the real clients
  "openssl:openssl"          # TLS tests make their throwaway certificates with it
  "python3:python3"          # scripts/chart-test.sh validates the Helm chart in a venv
)

missing=()
for entry in "${tools[@]}"; do
  cmd=${entry%%:*}
  pkg=${entry#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
# The PostgreSQL server (not only the psql client) for the store's conformance suite.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=("postgresql")
# The mosquitto broker (in /usr/sbin, not always on PATH) for the external MQTT pub/sub tests.
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=("mosquitto")
# The chart test's venv needs ensurepip, which Debian ships in python3-venv (pip comes with it).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=("python3-venv")
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "ensure-tools: installing ${missing[*]}" >&2
# `apt-get update` once per run: a fresh machine has empty package lists.
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
