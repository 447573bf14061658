#!/usr/bin/env bash
# A real Prometheus, from Debian's package, scraping one target on loopback every second, for the
# tests of Capstan's metrics. Run `tests/env/prometheus.sh help` for the interface.
set -euo pipefail

PROG=${0##*/}
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/${BASH_SOURCE[0]##*/}"
# shellcheck source=lib.sh
source "${SELF%/*}/lib.sh"

TIMEOUT=${PROMETHEUS_TIMEOUT:-30}
CACHE=${CAPSTAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capstan}
TOOLS_MOD=${SELF%/*}/prometheus-tools
# Debian's package; PROMETHEUS_BIN overrides it (e.g. with the one `build` makes).
PROMETHEUS=${PROMETHEUS_BIN:-/usr/bin/prometheus}

usage() {
    cat <<EOF2
Usage:
  $PROG install
      Install Debian's prometheus package if /usr/bin/prometheus is missing (needs root).
  $PROG up DIR --target HOST:PORT [--watch-pid PID]
      Start Prometheus on a free 127.0.0.1 port, state in DIR, scraping HOST:PORT/metrics every
      second (job "capstan"). Prints 'export PROMETHEUS_URL=http://127.0.0.1:PORT' (also in
      DIR/env). --watch-pid PID: stop once PID has exited.
  $PROG up DIR --config FILE [--watch-pid PID]
      The same with the caller's prometheus.yml (e.g. kubernetes_sd_configs for the test node).
  $PROG build
      Build (once) Prometheus with Kubernetes service discovery, which Debian's package lacks, from
      the Go module pinned in tests/env/prometheus-tools (only that discovery is compiled in);
      print its path. Run 'up' with PROMETHEUS_BIN=that path. Cached like the control plane.
  $PROG down DIR
      Stop what 'up' started in DIR.

Logs: DIR/prometheus.log, DIR/reaper.log.
EOF2
}

cmd_install() {
    [[ -x /usr/bin/prometheus ]] && return 0
    [[ $(id -u) == 0 ]] || die "prometheus is missing; install Debian's prometheus package (needs root)"
    command -v apt-get >/dev/null 2>&1 || die "prometheus is missing and apt-get is not available"
    log "installing Debian's prometheus package"
    # The package would start its own service; keep it from doing so while it installs.
    local policy=/usr/sbin/policy-rc.d ours=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >&2 || {
        log "install failed; running apt-get update and retrying"
        apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >&2
    } || rc=$?
    ((ours)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get install prometheus failed"
    [[ -x /usr/bin/prometheus ]] || die "/usr/bin/prometheus still missing after installing the package"
}


PROMETHEUS_TAGS=remove_all_sd,enable_kubernetes_sd

build_prometheus() {
    go build -trimpath -tags "$PROMETHEUS_TAGS" -ldflags='-s -w' -o "$1/prometheus" \
        github.com/prometheus/prometheus/cmd/prometheus
}

cmd_build() {
    local version key bin
    version=$(go_pin github.com/prometheus/prometheus)
    [[ -n $version ]] || die "$TOOLS_MOD/go.mod pins no github.com/prometheus/prometheus"
    key=$(cat "$TOOLS_MOD/go.mod" "$TOOLS_MOD/go.sum" <(echo "$PROMETHEUS_TAGS") | sha256sum | cut -c1-12)
    bin=$(go_cached "$CACHE/prometheus-$key/bin" \
        "Prometheus ($version) with Kubernetes service discovery" build_prometheus prometheus)
    echo "$bin/prometheus"
}

cmd_up() {
    local dir=${1:-} target="" watch_pid="" config=""
    [[ -n $dir ]] || usage_error "up needs DIR"
    shift
    while (($#)); do
        case $1 in
        --target) target=${2:?}; shift 2 ;;
        --config) config=${2:?}; shift 2 ;;
        --watch-pid) watch_pid=${2:?}; shift 2 ;;
        *) usage_error "unknown option '$1'" ;;
        esac
    done
    [[ -n $target || -n $config ]] || usage_error "up needs --target HOST:PORT or --config FILE"
    [[ -z $config || -f $config ]] || die "--config $config: no such file"
    [[ -n ${PROMETHEUS_BIN:-} ]] || cmd_install
    [[ -x $PROMETHEUS ]] || die "$PROMETHEUS is not an executable Prometheus"
    mkdir -p "$dir"
    dir=$(abs_dir "$dir")
    check_path_chars "$dir"
    [[ -z $(recorded_pids "$dir") ]] || die "Prometheus for $dir is already running; run '$PROG down $dir' first"
    rm -f "$dir/pids" "$dir/reaper.pid" "$dir/env"
    if [[ -n $config ]]; then
        cp "$config" "$dir/prometheus.yml.tmp" && mv -f "$dir/prometheus.yml.tmp" "$dir/prometheus.yml"
    else
        cat >"$dir/prometheus.yml" <<EOF2
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: capstan
    static_configs:
      - targets: ["$target"]
EOF2
    fi
    local port pid deadline
    port=$(free_port)
    # "--flag VALUE", not "--flag=VALUE": `down` recognises its processes by " DIR/" in their command line.
    "$PROMETHEUS" --config.file "$dir/prometheus.yml" --storage.tsdb.path "$dir/data" \
        --web.listen-address="127.0.0.1:$port" >"$dir/prometheus.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >>"$dir/pids"
    deadline=$((SECONDS + TIMEOUT))
    until tcp_open "$port"; do
        if ! is_alive "$pid" || ((SECONDS > deadline)); then
            log_tail "$dir/prometheus.log"
            stop_pids "$pid"
            die "Prometheus did not start on 127.0.0.1:$port"
        fi
        sleep 0.2
    done
    [[ -z $watch_pid ]] || start_reaper "$dir" "$watch_pid" "$SELF"
    printf 'export PROMETHEUS_URL=%s\n' "$(shquote "http://127.0.0.1:$port")" | tee "$dir/env"
}

case ${1:-help} in
install) cmd_install ;;
build) cmd_build ;;
up) shift; cmd_up "$@" ;;
down) down_recorded "${2:?down needs DIR}" "Prometheus" ;;
help | -h | --help) usage ;;
*) usage_error "unknown command '$1'" ;;
esac
