#!/usr/bin/env bash
# Property-based API testing: schemathesis generates requests from the served OpenAPI document
# (/v1/openapi.json) and checks every answer: no 5xx, documented status codes, content types,
# headers and response bodies that match their schemas. Run by .ci/run after `cargo test`.
#
#   bash scripts/schemathesis.sh                 # the bounded CI run
#   ST_MAX_EXAMPLES=500 ST_SEED=7 bash scripts/schemathesis.sh   # a longer or different run
#   BATON_API_KEY=... bash scripts/schemathesis.sh                 # use this key (else one is made)
#
# Schemathesis is installed from PyPI (pinned below) into a venv under target/, reused across
# runs. The server is a debug `baton server` on 127.0.0.1 (a port it picks) over a temporary
# SQLite data dir, with an administrator API key made for the run (a keys file); it is stopped on
# exit. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
max_examples=${ST_MAX_EXAMPLES:-25}
seed=${ST_SEED:-20261121}
python=${PYTHON:-python3}
venv=target/schemathesis-venv

# --- schemathesis, in a venv keyed by its version (so a version bump reinstalls)
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- the server
cargo build --locked -p baton-cli
work=$(mktemp -d)
server=
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# With an API key, as a server on a network runs: every check of authentication (401 without a
# key or with a wrong one) applies, and the cases run as an administrator.
key=${BATON_API_KEY:-$(target/debug/baton keys create --offline --name schemathesis --grant admin: \
    2>"$work/keys.toml")}
# The key gets a known id, so the hooks keep the run from revoking its own key.
export ST_ADMIN_KEY_ID=key_5c4e3a2b1d0f9e8d
if [ -s "$work/keys.toml" ]; then
    echo "id = \"$ST_ADMIN_KEY_ID\"" >>"$work/keys.toml"
else
    : >"$work/keys.toml"
fi
target/debug/baton server --listen 127.0.0.1:0 --data-dir "$work/data" \
    --keys-file "$work/keys.toml" 2>"$work/server.log" &
server=$!
base=
for _ in $(seq 1 100); do
    base=$(sed -n 's/^baton listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$work/server.log" | head -n 1)
    [ -n "$base" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$base" ] || { echo "the server did not start" >&2; cat "$work/server.log" >&2; exit 1; }
ready=
for _ in $(seq 1 100); do
    if "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$base/readyz" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || { echo "the server never became ready" >&2; cat "$work/server.log" >&2; exit 1; }

auth=(--header "Authorization: Bearer $key")

# Every check. scripts/schemathesis.toml lists the few documented refusals of schema-valid
# input; scripts/schemathesis_hooks.py shortens long-polls. Waits are at most 60 s on the
# server, so the request timeout only trips on a hung connection.
status=0
SCHEMATHESIS_HOOKS=scripts/schemathesis_hooks.py \
"$venv/bin/st" --config-file scripts/schemathesis.toml run "$base/v1/openapi.json" \
    --checks all \
    --max-examples "$max_examples" \
    --seed "$seed" \
    --request-timeout 65 \
    --workers 1 \
    --no-color \
    --generation-database none \
    "${auth[@]}" || status=$?

if [ "$status" -ne 0 ]; then
    echo "schemathesis found failures (exit $status); server log:" >&2
    tail -n 50 "$work/server.log" >&2
fi
exit "$status"
