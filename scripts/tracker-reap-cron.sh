#!/bin/sh
# Cron wrapper for `tracker reap`: finds tracker, runs one reap, logs what it printed, exits with its status.
#
#   */10 * * * * TRACKER_DB=/srv/mcp/tracker.db /path/to/tracker/scripts/tracker-reap-cron.sh
#
# Arguments go to `tracker reap` (e.g. --older-than 7d, --dry-run). Environment:
#   TRACKER_DB, TRACKER_RETENTION  as for tracker itself (cron's environment is nearly empty: set them here)
#   TRACKER_BIN       the tracker executable (default: this checkout's .venv/bin/tracker, else tracker on PATH)
#   TRACKER_REAP_LOG  append to this file instead of syslog (default: syslog via logger, tag tracker-reap)
# Two runs overlapping is harmless: purges split the work, each chunk deleting what is still there.
set -u
PATH=/usr/local/bin:/usr/bin:/bin:${PATH:-}
export PATH
here=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)

log() {  # log LEVEL TEXT...: one log line per line of TEXT
    level=$1
    shift
    if [ -n "${TRACKER_REAP_LOG:-}" ]; then
        stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
        printf '%s\n' "$*" | sed "s/^/$stamp tracker-reap: /" >>"$TRACKER_REAP_LOG"
    elif command -v logger >/dev/null 2>&1; then
        printf '%s\n' "$*" | logger -t tracker-reap -p "user.$level"
    else
        printf '%s\n' "$*" >&2
    fi
}

bin=${TRACKER_BIN:-}
if [ -z "$bin" ]; then
    if [ -x "$here/.venv/bin/tracker" ]; then
        bin=$here/.venv/bin/tracker
    else
        bin=$(command -v tracker || true)
    fi
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    log err "tracker not found (set TRACKER_BIN, or run ./dev once in $here to create .venv)"
    exit 127
fi

output=$("$bin" reap "$@" 2>&1)
status=$?
if [ "$status" -eq 0 ]; then
    log info "$output"
else
    log err "$output (exit $status)"
fi
exit "$status"
