#!/usr/bin/env bash
# Builds baton, starts the server on the embedded store (./baton-data), shows a lock being
# taken, queued for, handed over and released, then leaves the server running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p baton-cli
baton=target/release/baton
export BATON_URL=http://127.0.0.1:7878

"$baton" server --data-dir ./baton-data &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 50); do "$baton" status >/dev/null 2>&1 && break; sleep 0.1; done

echo; echo "== acquire the lock 'demo/nightly' (prints the lease id)"
lease=$("$baton" acquire demo/nightly --owner "demo-a" --ttl 30s)
echo "$lease"
echo; echo "== a second acquire that does not wait is refused (exit code 75)"
"$baton" acquire demo/nightly --owner "demo-b" --no-wait || echo "exit code $?"
echo; echo "== someone queues for it in the background"
( "$baton" acquire demo/nightly --owner "demo-b" --wait 30s > /tmp/baton-demo-b.lease ) &
waiter=$!
sleep 0.5
"$baton" status demo/nightly
echo; echo "== release: the waiter is granted at once"
"$baton" release "$lease"
wait $waiter
"$baton" status demo/nightly
"$baton" release "$(cat /tmp/baton-demo-b.lease)"
echo; echo "== history"
"$baton" history demo/nightly
echo; echo "The server is still running on $BATON_URL (data in ./baton-data); its dashboard is at $BATON_URL/ in a browser. Ctrl-C stops it."
wait $server
