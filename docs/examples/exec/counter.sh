#!/bin/sh
# A counter for websocket_exec (websocketd's classic count.sh): sends 1, 2,
# ... up to TO (default 10), one number every EVERY seconds (default 1), then
# exits 0, so the client sees close code 1000.
#
#   websocket_exec -R /var/run/websocket -n counter -- docs/examples/exec/counter.sh 10 1
to=${1:-10}
every=${2:-1}
case $to in '' | *[!0-9]*) echo "counter: TO must be a whole number, not '$to'" >&2; exit 2 ;; esac
i=1
while [ "$i" -le "$to" ]; do
    echo "$i"
    i=$((i + 1))
    if [ "$i" -le "$to" ]; then sleep "$every"; fi
done
