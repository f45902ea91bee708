#!/bin/sh
# Runs Mosquitto and restarts it whenever one of its TLS files changes (crlfile, cafile,
# certfile, keyfile), so that a revocation reaches the running broker.
#
#   run-broker.sh -c /mosquitto/config/mosquitto.conf [other mosquitto options]
#
# Why a restart and not SIGHUP (measured with Mosquitto 2.0.11, docs/security.md): SIGHUP
# makes new connections use the new CRL, but a revoked client that is already connected stays
# connected for as long as it likes, and SIGHUP does not reload cafile. A restart drops every
# connection; clients reconnect, each one is checked against the new files, and persistent
# sessions survive (persistence true). It costs every client one reconnection, so certgen
# rewrites the CRL only when it changes or nears its next update.
#
# Environment: CRL_POLL_SECONDS (default 5) between checks; MOSQUITTO (default mosquitto).
# POSIX sh only: it runs in the eclipse-mosquitto image (busybox) and on a development machine.

set -u

interval=${CRL_POLL_SECONDS:-5}
mosquitto=${MOSQUITTO:-mosquitto}

conf=""
previous=""
for arg in "$@"; do
    [ "$previous" = "-c" ] && conf=$arg
    previous=$arg
done
if [ -z "$conf" ] || [ ! -r "$conf" ]; then
    echo "run-broker: usage: run-broker.sh -c mosquitto.conf [mosquitto options]" >&2
    exit 2
fi
# The files to watch are whatever the configuration names: one source of truth.
watched=$(awk '$1 == "crlfile" || $1 == "cafile" || $1 == "certfile" || $1 == "keyfile" { print $2 }' "$conf")

# The files' content, not their mtime: a CRL rewritten twice within a second, or renamed
# over a file whose inode number is then reused, still counts as a change. They are a few
# kilobytes, so the content itself is the stamp: no checksum tool needed (Debian's busybox
# has no cksum).
stamp() {
    for file in $watched; do
        cat "$file" 2> /dev/null || echo "unreadable: $file"
    done
}

# The watcher is a child that signals us (USR1); we spend our time in `wait`, which a trapped
# signal interrupts, so we notice at once when Mosquitto exits on its own.
watch() {
    # Take the sleep down too, so nothing of ours outlives the supervisor.
    nap=""
    trap 'kill $nap 2> /dev/null; exit 0' TERM
    last=$(stamp)
    while :; do
        sleep "$interval" &
        nap=$!
        wait "$nap"
        kill -0 "$supervisor" 2> /dev/null || exit 0
        now=$(stamp)
        [ "$now" = "$last" ] && continue
        # Wait until the files hold still: a key and its certificate are replaced one after
        # the other, and Mosquitto refuses to start between the two.
        settled=""
        while [ "$settled" != "$now" ]; do
            [ -n "$settled" ] && now=$settled
            sleep 1
            settled=$(stamp)
        done
        last=$now
        kill -USR1 "$supervisor" 2> /dev/null || exit 0
    done
}

log() {
    echo "run-broker: $*" >&2
}

# Waits until Mosquitto has exited, even when a signal interrupts the wait; sets $status.
reap() {
    wait "$pid"
    status=$?
    while kill -0 "$pid" 2> /dev/null; do
        wait "$pid"
        status=$?
    done
}

supervisor=$$
pid=""
stopping=0
restart=0
trap 'stopping=1' INT TERM
trap 'restart=1' USR1
trap 'kill -HUP "$pid" 2> /dev/null' HUP

for file in $watched; do
    [ -r "$file" ] || log "cannot read $file: changes to it go unnoticed"
done
watch &
watcher=$!
"$mosquitto" "$@" &
pid=$!
log "mosquitto started (pid $pid); watching $(echo $watched) every ${interval}s"

while :; do
    wait "$pid"
    status=$?
    if [ "$stopping" = 1 ]; then
        kill -TERM "$pid" 2> /dev/null
        reap
        break
    fi
    if [ "$restart" = 1 ]; then
        restart=0
        log "TLS files changed: restarting mosquitto so every client is checked against them"
        kill -TERM "$pid" 2> /dev/null
        reap
        [ "$stopping" = 1 ] && break
        "$mosquitto" "$@" &
        pid=$!
        log "mosquitto restarted (pid $pid)"
        continue
    fi
    if ! kill -0 "$pid" 2> /dev/null; then
        log "mosquitto exited with status $status"
        break
    fi
done

kill -TERM "$watcher" 2> /dev/null
exit "$status"
