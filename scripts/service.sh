# Shared by the scripts that run a receiver in the background (sourced,
# not run): wait for one to come up, stop one by its pid file.

# await_up NAME PIDFILE LOG TRIES DELAY CHECK...: runs CHECK every DELAY
# seconds, at most TRIES times, until it succeeds (then returns 0) or the
# process in PIDFILE has exited; on failure prints LOG's last lines and
# returns 1.
await_up() {
  local name=$1 pidfile=$2 log=$3 tries=$4 delay=$5
  shift 5
  for _ in $(seq 1 "$tries"); do
    if "$@"; then return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then break; fi
    sleep "$delay"
  done
  echo "$name did not come up; last lines of $log:" >&2
  tail -20 "$log" >&2 || true
  return 1
}

# stop_pidfile PIDFILE: stops the process it names (TERM, then KILL after
# 15 s) and removes it.
stop_pidfile() {
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}
