# shellcheck shell=bash
# Shared helpers for the scripts in tests/env: logging, process bookkeeping, free ports, and the
# reaper that tears servers down when the process that started them (a test binary) exits.
# Sourced, never run; the caller sets PROG.

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
# A command whose EXIT trap undoes a failed start sets DEFER_ERROR=1: die then leaves its message
# to the trap (in ERROR), which prints it after the clean-up, so that the failure still ends in
# one line naming what failed and the log to read. In a subshell ($(...)) die prints at once.
DEFER_ERROR=0
ERROR=
die() {
    ERROR=$*
    ((DEFER_ERROR)) && [[ $BASHPID == "$$" ]] && exit 1
    log "error: $*"
    exit 1
}
# The last line of a deferred failure: die's message, or the exit status of whatever failed.
final_error() {
    log "error: ${ERROR:-$1 failed (exit status $2; the messages above say where)}"
}
usage_error() { log "$*"; usage >&2; exit 2; }

# `env DIR`: what `up DIR` exported, for `eval` or a test to read.
cmd_env() {
    (($# == 1)) || usage_error "env: expected exactly DIR"
    [[ -f $1/env ]] || die "$1/env not found; run '$PROG up $1' first"
    cat "$1/env"
}

# The version $TOOLS_MOD/go.mod pins of module $1 (in a require block or on a require line).
go_pin() {
    awk -v m="$1" '$1 == m && NF >= 2 { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$TOOLS_MOD/go.mod"
}

# go_cached BIN WHAT BUILD FILE...: prints BIN once every FILE is in it. Otherwise builds it
# first, one build at a time on the machine (the lock is shared by every script in tests/env):
# the caller's function BUILD TMP fills a fresh directory from Go modules, in $TOOLS_MOD, which
# then becomes BIN. WHAT names the build in messages. The caller sets CACHE and TOOLS_MOD.
go_cached() {
    local bin=$1 what=$2 build=$3
    shift 3
    if has_files "$bin" "$@"; then
        echo "$bin"
        return
    fi
    command -v go >/dev/null 2>&1 || die "go is not installed; it builds $what from Go modules"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/build.lock"
    flock 9
    if ! has_files "$bin" "$@"; then
        local tmp
        tmp=$(mktemp -d "$CACHE/build.XXXXXX")
        log "building $what from Go modules (first run only; minutes)"
        # go.sum pins every module; the checksum database is not needed (nor reachable here).
        (
            cd "$TOOLS_MOD"
            export GOFLAGS=-mod=readonly GOSUMDB=off
            "$build" "$tmp"
        ) >&2 || { rm -rf "$tmp"; die "building $what from Go modules failed (see above)"; }
        mkdir -p "${bin%/*}"
        rm -rf "$bin"
        mv "$tmp" "$bin"
    fi
    flock -u 9
    echo "$bin"
}

has_files() {
    local dir=$1 f
    shift
    for f; do [[ -e $dir/$f ]] || return 1; done
}

# Single-quote a value for POSIX shells (the env file may be sourced by sh or parsed by tests).
shquote() {
    local sq="'" rep="'\\''"
    printf "'%s'" "${1//$sq/$rep}"
}

# DIR ends up unquoted-ish in lighttpd.conf, sshd_config and ssh:// URLs, so keep it boring
# rather than trying to escape for three different syntaxes.
check_path_chars() {
    [[ $1 =~ ^[A-Za-z0-9._/+@%=,:-]+$ ]] ||
        die "path '$1' contains characters (space, quote, ...) this script does not escape; use a simpler path"
}

# Make DIR absolute and canonical, so the same server directory always yields the same string;
# `down` relies on that to recognise its processes by command line.
abs_dir() {
    (cd "$1" && pwd -P) || die "cannot enter directory '$1'"
}

# ---------------------------------------------------------------- processes

# True if PID exists and is not a zombie (an exited child that nobody reaped yet is dead to us).
is_alive() {
    local pid=$1 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# True if PID is alive and its command line mentions DIR. Guards `down` against pid reuse:
# we never signal a process that is not plainly one of ours.
is_ours() {
    local pid=$1 dir=$2 cmd
    is_alive "$pid" || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    cmd=" $cmd "
    [[ $cmd == *" $dir/"* || $cmd == *" $dir "* ]]
}

# All descendants of the given pids (sshd session processes, git-upload-pack, CGI children),
# found via /proc so that procps need not be installed.
descendants() {
    local -A kids=()
    local f stat pid ppid
    for f in /proc/[0-9]*/stat; do
        { read -r stat <"$f"; } 2>/dev/null || continue
        pid=${f#/proc/}
        pid=${pid%/stat}
        stat=${stat##*) }
        read -r _ ppid _ <<<"$stat"
        kids[$ppid]+=" $pid"
    done
    local -a queue=("$@")
    local p c
    while ((${#queue[@]})); do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        for c in ${kids[$p]:-}; do
            echo "$c"
            queue+=("$c")
        done
    done
}

# TERM the given pids and their descendants, KILL whatever is left after ~3 s.
stop_pids() {
    (($#)) || return 0
    local -a all
    mapfile -t all < <(printf '%s\n' "$@"; descendants "$@")
    kill -TERM "${all[@]}" 2>/dev/null || true
    local p left
    for _ in $(seq 30); do
        left=0
        for p in "${all[@]}"; do is_alive "$p" && left=1 && break; done
        ((left)) || return 0
        sleep 0.1
    done
    for p in "${all[@]}"; do
        if is_alive "$p"; then
            log "pid $p ignored SIGTERM; sending SIGKILL"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    for _ in $(seq 20); do
        left=0
        for p in "${all[@]}"; do is_alive "$p" && left=1 && break; done
        ((left)) || return 0
        sleep 0.1
    done
    log "warning: some processes did not exit: ${all[*]}"
}

# Pids recorded in DIR (servers, then the reaper) that are still ours.
recorded_pids() {
    local dir=$1 f pid
    for f in "$dir/pids" "$dir/reaper.pid"; do
        [[ -f $f ]] || continue
        while read -r pid; do
            is_ours "$pid" "$dir" && echo "$pid"
        done <"$f"
    done
    return 0
}

# ---------------------------------------------------------------- networking

# A TCP port on 127.0.0.1 that is free right now. Another process may still grab it before
# our server binds, so callers retry on "Address already in use".
free_port() {
    local port
    if command -v python3 >/dev/null 2>&1; then
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null) || port=
        if [[ $port =~ ^[0-9]+$ ]]; then
            echo "$port"
            return
        fi
    fi
    # No python3: guess in a range below Linux's default ephemeral ports and make sure
    # nobody is listening there.
    local _
    for _ in $(seq 50); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        if ! tcp_open "$port"; then
            echo "$port"
            return
        fi
    done
    die "could not find a free TCP port on 127.0.0.1"
}

tcp_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

log_tail() {
    local file=$1 from=${2:-0}
    log "---- last lines of $file ----"
    tail -c "+$((from + 1))" "$file" 2>/dev/null | tail -n 25 >&2 || true
    log "---- end of $file ----"
}

# The address a Go server's log says it could not bind ("listen tcp ADDR: bind: address already
# in use"); nothing if the log says no such thing.
busy_address() {
    grep -o 'listen tcp [^ ]*: bind: address already in use' "$1" 2>/dev/null | head -n 1 |
        sed 's/^listen tcp //; s/: bind: .*//'
}

# wait_ready NAME PID LOGFILE CHECK...: poll CHECK until it succeeds, the process dies, or the
# caller's TIMEOUT (seconds) runs out; each failure names the component and its log. CHECK must
# not hang (give curl --max-time).
wait_ready() {
    local name=$1 pid=$2 logfile=$3
    shift 3
    local deadline=$((SECONDS + TIMEOUT)) busy
    while ((SECONDS < deadline)); do
        if ! is_alive "$pid"; then
            log_tail "$logfile"
            busy=$(busy_address "$logfile")
            [[ -z $busy ]] || die "$name could not bind $busy: address already in use (log: $logfile)"
            grep -q 'address already in use' "$logfile" && die "$name could not bind its port: address already in use (log: $logfile)"
            die "$name exited during startup (log: $logfile)"
        fi
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log_tail "$logfile"
    busy=$(busy_address "$logfile")
    [[ -z $busy ]] || die "$name was not ready within ${TIMEOUT}s: it could not bind $busy, address already in use (log: $logfile)"
    die "$name was not ready within ${TIMEOUT}s (log: $logfile)"
}

size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }

# start_reaper DIR PID SELF: a detached process that runs `SELF down DIR` once PID has exited, and
# records itself in DIR/reaper.pid.
start_reaper() {
    local dir=$1 watch_pid=$2 self=$3
    # setsid + nohup: survive the caller's session and terminal; all three fds point
    # away from the caller so its pipes reach EOF when we exit.
    # shellcheck disable=SC2016 # the script is expanded by the reaper's bash, not here
    setsid nohup bash -c '
        dir=$1 pid=$2 self=$3
        alive() {
            local s
            { read -r s <"/proc/$1/stat"; } 2>/dev/null || return 1
            s=${s##*) }
            [ "${s%% *}" != Z ]
        }
        echo "$(date "+%F %T") reaper $$: watching pid $pid for $dir"
        while alive "$pid"; do sleep 1; done
        echo "$(date "+%F %T") reaper $$: pid $pid is gone; stopping servers"
        exec bash "$self" down "$dir"
    ' "capstan-reaper" "$dir" "$watch_pid" "$self" </dev/null >>"$dir/reaper.log" 2>&1 &
    echo "$!" >"$dir/reaper.pid"
}

# down_recorded DIR WHAT: stop the processes recorded in DIR (not this one: the reaper
# execs into `down`), saying WHAT was stopped.
down_recorded() {
    local dir pid what=$2
    [[ -d $1 ]] || { log "$1 does not exist; nothing to stop"; return 0; }
    dir=$(abs_dir "$1")
    local -a pids=()
    while read -r pid; do
        [[ -n $pid && $pid != "$$" ]] && pids+=("$pid")
    done < <(recorded_pids "$dir")
    ((${#pids[@]})) || { log "nothing running for $dir"; return 0; }
    stop_pids "${pids[@]}"
    log "stopped $what in $dir (pids ${pids[*]})"
}
