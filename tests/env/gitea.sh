#!/usr/bin/env bash
# A real forge for the notification tests: Gitea, built from the Go module pinned in
# tests/env/gitea-tools and cached outside the repository, on loopback with SQLite. It serves
# git over HTTP, push webhooks signed as GitHub signs them, and the commit status API. Run
# `tests/env/gitea.sh help` for the interface.
set -euo pipefail

PROG=${0##*/}
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/${BASH_SOURCE[0]##*/}"
# shellcheck source=lib.sh
source "${SELF%/*}/lib.sh"

TIMEOUT=${GITEA_TIMEOUT:-60}
CACHE=${CAPSTAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capstan}
TOOLS_MOD=${SELF%/*}/gitea-tools
GITEA_TAGS="sqlite sqlite_unlock_notify"
USER_NAME=capstan
USER_PASSWORD=capstan-test-password

usage() {
    cat <<EOF2
Usage:
  $PROG build
      Build (once) Gitea from the Go module pinned in tests/env/gitea-tools; print its path.
  $PROG up DIR [--watch-pid PID]
      Start Gitea on a free 127.0.0.1 port, state in DIR, with an admin user and an API token.
      Prints GITEA_URL, GITEA_USER, GITEA_PASSWORD and GITEA_TOKEN as exports (also in
      DIR/env). Webhooks may be delivered to loopback. --watch-pid PID: stop once PID has exited.
  $PROG down DIR
      Stop what 'up' started in DIR.

Logs: DIR/gitea.log, DIR/log/, DIR/reaper.log.
EOF2
}

build_gitea() {
    CGO_ENABLED=1 go build -trimpath -tags "$GITEA_TAGS" \
        -ldflags="-s -w -X main.Version=$(go_pin code.gitea.io/gitea)" -o "$1/gitea" code.gitea.io/gitea
}

cmd_build() {
    local version key bin
    version=$(go_pin code.gitea.io/gitea)
    [[ -n $version ]] || die "$TOOLS_MOD/go.mod pins no code.gitea.io/gitea"
    key=$(cat "$TOOLS_MOD/go.mod" "$TOOLS_MOD/go.sum" <(echo "$GITEA_TAGS") | sha256sum | cut -c1-12)
    bin=$(go_cached "$CACHE/gitea-$key/bin" "Gitea ($version)" build_gitea gitea)
    echo "$bin/gitea"
}

cmd_up() {
    local dir=${1:-} watch_pid=""
    [[ -n $dir ]] || usage_error "up needs DIR"
    shift
    while (($#)); do
        case $1 in
        --watch-pid) watch_pid=${2:?}; shift 2 ;;
        *) usage_error "unknown option '$1'" ;;
        esac
    done
    local gitea src
    gitea=$(cmd_build)
    # A build without embedded assets reads its templates and locales from the module's source.
    src=$(cd "$TOOLS_MOD" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' code.gitea.io/gitea)
    [[ -d $src/templates ]] || die "the Gitea module source ($src) has no templates"
    mkdir -p "$dir"
    dir=$(abs_dir "$dir")
    check_path_chars "$dir"
    [[ -z $(recorded_pids "$dir") ]] || die "Gitea for $dir is already running; run '$PROG down $dir' first"
    rm -f "$dir/pids" "$dir/reaper.pid" "$dir/env"
    local port
    port=$(free_port)
    cat >"$dir/app.ini" <<EOF2
APP_NAME = capstan-test
RUN_MODE = prod
RUN_USER = $(id -un)
WORK_PATH = $dir

[server]
PROTOCOL = http
HTTP_ADDR = 127.0.0.1
HTTP_PORT = $port
ROOT_URL = http://127.0.0.1:$port/
STATIC_ROOT_PATH = $src
APP_DATA_PATH = $dir/data
DISABLE_SSH = true
OFFLINE_MODE = true
LFS_START_SERVER = false

[database]
DB_TYPE = sqlite3
PATH = $dir/data/gitea.db

[repository]
ROOT = $dir/repositories

[security]
INSTALL_LOCK = true

[service]
DISABLE_REGISTRATION = true

[webhook]
ALLOWED_HOST_LIST = loopback
DELIVER_TIMEOUT = 10

[actions]
ENABLED = false

[packages]
ENABLED = false

[oauth2]
ENABLED = false

[cron]
ENABLED = false

[session]
PROVIDER = memory

[cache]
ADAPTER = memory

[log]
MODE = file
LEVEL = Info
ROOT_PATH = $dir/log
EOF2
    # Gitea refuses root unless told; the tests run as whoever runs them.
    export GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT=true GITEA_WORK_DIR=$dir
    local g=("$gitea" --config "$dir/app.ini" --work-path "$dir")
    "${g[@]}" migrate >"$dir/gitea.log" 2>&1 || { log_tail "$dir/gitea.log"; die "gitea migrate failed (log: $dir/gitea.log)"; }
    "${g[@]}" admin user create --username "$USER_NAME" --password "$USER_PASSWORD" \
        --email capstan@example.com --admin --must-change-password=false >>"$dir/gitea.log" 2>&1 ||
        { log_tail "$dir/gitea.log"; die "creating the Gitea user failed (log: $dir/gitea.log)"; }
    local pid from
    from=$(size_of "$dir/gitea.log")
    "${g[@]}" web >>"$dir/gitea.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >>"$dir/pids"
    wait_ready Gitea "$pid" "$dir/gitea.log" \
        curl -fsS --max-time 2 "http://127.0.0.1:$port/api/v1/version" ||
        { stop_pids "$pid"; exit 1; }
    local token
    token=$(curl -fsS --max-time 10 -u "$USER_NAME:$USER_PASSWORD" -H 'Content-Type: application/json' \
        -d '{"name":"tests","scopes":["all"]}' "http://127.0.0.1:$port/api/v1/users/$USER_NAME/tokens" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["sha1"])') ||
        { log_tail "$dir/gitea.log" "$from"; stop_pids "$pid"; die "creating a Gitea API token failed"; }
    [[ -z $watch_pid ]] || start_reaper "$dir" "$watch_pid" "$SELF"
    {
        printf 'export GITEA_URL=%s\n' "$(shquote "http://127.0.0.1:$port")"
        printf 'export GITEA_USER=%s\n' "$(shquote "$USER_NAME")"
        printf 'export GITEA_PASSWORD=%s\n' "$(shquote "$USER_PASSWORD")"
        printf 'export GITEA_TOKEN=%s\n' "$(shquote "$token")"
    } | tee "$dir/env"
}

case ${1:-help} in
build) cmd_build ;;
up) shift; cmd_up "$@" ;;
down) down_recorded "${2:?down needs DIR}" "Gitea" ;;
help | -h | --help) usage ;;
*) usage_error "unknown command '$1'" ;;
esac
