#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for Capstan's tests and demo: etcd, kube-apiserver
# (RBAC, ServiceAccount tokens, an audit log) and kube-controller-manager (namespace deletion,
# garbage collection, default ServiceAccounts). No kubelet and no scheduler: nothing runs Pods,
# unless tests/env/node.sh starts it with --node and adds them.
# The binaries are built from Go modules pinned in tests/env/tools and cached outside the
# repository, keyed by the pins, so only the first run pays for the build.
# Run `tests/env/controlplane.sh help` for the interface.
set -euo pipefail

PROG=${0##*/}
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/${BASH_SOURCE[0]##*/}"
# shellcheck source=lib.sh
source "${SELF%/*}/lib.sh"

TOOLS_MOD=${SELF%/*}/tools
CACHE=${CAPSTAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capstan}
# shellcheck disable=SC2034 # read by wait_ready (lib.sh)
TIMEOUT=${CONTROLPLANE_TIMEOUT:-60}

usage() {
    cat <<EOF
Usage:
  $PROG build
      Build (once) kube-apiserver, kube-controller-manager, kubectl and etcd from the Go modules
      pinned in tests/env/tools; print the directory holding them. Cached under \$CAPSTAN_CACHE
      (default ~/.cache/capstan), keyed by the pins.
  $PROG up DIR [--watch-pid PID] [--node IP]
      Start etcd, kube-apiserver and kube-controller-manager on free 127.0.0.1 ports with state in
      DIR. Prints shell 'export' lines (also written to DIR/env): KUBECONFIG, PATH with kubectl,
      CAPSTAN_KUBE_BIN, CAPSTAN_AUDIT_LOG. --watch-pid PID: tear down once PID has exited.
      --node IP: for a node (tests/env/node.sh): the API server listens on and advertises IP (an
      address already on this machine), its certificate names IP and 10.96.0.1, the Node
      authorizer is on, it reaches kubelets by InternalIP, and the controller manager also runs
      the controllers Pods and Deployments need.
  $PROG down DIR
      Stop what 'up' started in DIR. Leaves DIR in place.
  $PROG env DIR
      Print DIR/env.

Logs: DIR/etcd.log, DIR/kube-apiserver.log, DIR/kube-controller-manager.log, DIR/audit.log.
A failed 'up' stops what it started and ends with one line naming the component and its log.
Environment: CONTROLPLANE_TIMEOUT (seconds for each component to become ready, default 60);
CONTROLPLANE_PORT (the API server's port, default a free one: a fixed port keeps the kubeconfig's
server URL the same across restarts).
EOF
}

# ---------------------------------------------------------------- build


K8S_VERSION=$(go_pin k8s.io/kubernetes)
# Stamp the version the binaries report (`kubectl version`, /version), as a release build does.
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$(cut -d. -f1 <<<"${K8S_VERSION#v}")"
    LDFLAGS+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $pkg.gitTreeState=clean"
done

bin_dir() {
    local key
    key=$(cat "$TOOLS_MOD/go.mod" "$TOOLS_MOD/go.sum" <(echo "$LDFLAGS") | sha256sum | cut -c1-12)
    echo "$CACHE/k8s-$K8S_VERSION-$key/bin"
}

build_control_plane() {
    go build -trimpath -ldflags="$LDFLAGS" -o "$1/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kubectl
    go build -trimpath -ldflags='-s -w' -o "$1/etcd" go.etcd.io/etcd/server/v3
}

cmd_build() {
    go_cached "$(bin_dir)" "kubernetes $K8S_VERSION and etcd $(go_pin go.etcd.io/etcd/server/v3)" \
        build_control_plane kube-apiserver kube-controller-manager kubectl etcd
}

# ---------------------------------------------------------------- up

UP_DONE=0
STARTED=()
up_cleanup() {
    local rc=$?
    ((UP_DONE)) && return 0
    if ((${#STARTED[@]})); then
        log "up failed; stopping what it started (pids ${STARTED[*]})"
        stop_pids "${STARTED[@]}"
    fi
    final_error up "$rc"
    exit $((rc ? rc : 1))
}

# A CA, a serving certificate for 127.0.0.1, an admin client certificate (system:masters) and
# the ServiceAccount token signing key.
make_pki() {
    local pki=$1 node_ip=${2:-}
    local sans="IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
    # Pods reach the API server through the kubernetes Service (10.96.0.1) or the node IP.
    [[ -z $node_ip ]] || sans+=",IP:$node_ip,IP:10.96.0.1,DNS:kubernetes.default,DNS:kubernetes"
    mkdir -p "$pki"
    (
        cd "$pki"
        umask 077
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
        key ca.key
        openssl req -x509 -new -key ca.key -subj /CN=capstan-test-ca -days 3650 -out ca.crt 2>/dev/null
        sign() { # name subject extensions
            key "$1.key"
            openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
            printf '%s\n' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
                -extfile "$1.ext" -out "$1.crt" 2>/dev/null
        }
        sign apiserver /CN=kube-apiserver "subjectAltName=$sans
extendedKeyUsage=serverAuth"
        sign admin "/O=system:masters/CN=capstan-admin" "extendedKeyUsage=clientAuth"
        # The API server's identity towards kubelets (logs, exec, port-forward).
        [[ -z $node_ip ]] || sign kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
        openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    ) || die "generating certificates with openssl failed"
}

write_kubeconfig() {
    local dir=$1 port=$2 host=${3:-127.0.0.1}
    cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: capstan-test
  cluster:
    server: https://$host:$port
    certificate-authority: $dir/pki/ca.crt
users:
- name: capstan-admin
  user:
    client-certificate: $dir/pki/admin.crt
    client-key: $dir/pki/admin.key
contexts:
- name: capstan-test
  context: {cluster: capstan-test, user: capstan-admin}
current-context: capstan-test
EOF
}

# start LOGFILE CMD...: run a component in the background, record it, and leave its pid in LAST_PID.
LAST_PID=
start() {
    local logfile=$1
    shift
    "$@" </dev/null >>"$logfile" 2>&1 &
    STARTED+=("$!")
    echo "$!" >>"$DIR/pids"
    LAST_PID=$!
}

cmd_up() {
    local dir_arg='' watch_pid='' node_ip=''
    while (($#)); do
        case $1 in
            --watch-pid) (($# >= 2)) || usage_error "--watch-pid needs a PID"; watch_pid=$2; shift 2 ;;
            --node) (($# >= 2)) || usage_error "--node needs an IP"; node_ip=$2; shift 2 ;;
            -*) usage_error "up: unknown option '$1'" ;;
            *) [[ -z $dir_arg ]] || usage_error "up: unexpected argument '$1'"; dir_arg=$1; shift ;;
        esac
    done
    [[ -n $dir_arg ]] || usage_error "up: DIR is required"
    if [[ -n $watch_pid ]]; then
        is_alive "$watch_pid" || die "--watch-pid $watch_pid: no such process"
    fi
    local port=${CONTROLPLANE_PORT:-}
    if [[ -n $port ]] && ! { [[ $port =~ ^[1-9][0-9]{0,4}$ ]] && ((port > 0 && port < 65536)); }; then
        usage_error "CONTROLPLANE_PORT: '$port' is not a TCP port"
    fi
    for tool in openssl curl flock; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
    done
    if [[ -n $node_ip ]]; then
        [[ $node_ip =~ ^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$ ]] || usage_error "--node: '$node_ip' is not an IPv4 address"
        grep -qF " $node_ip/" <<<"$(ip -o addr show 2>/dev/null)" ||
            die "--node $node_ip: no interface of this machine has that address (node.sh puts it on lo)"
    fi

    local bin
    bin=$(cmd_build)
    mkdir -p "$dir_arg"
    DIR=$(abs_dir "$dir_arg")
    local running
    running=$(recorded_pids "$DIR" | tr '\n' ' ')
    [[ -z $running ]] || die "a control plane for $DIR is already running (pids ${running% }); run '$PROG down $DIR' first"

    trap up_cleanup EXIT
    DEFER_ERROR=1
    trap 'exit 130' INT
    trap 'exit 143' TERM
    rm -rf "$DIR/etcd" "$DIR/pki" "$DIR/env" "$DIR/pids" "$DIR/reaper.pid"
    : >"$DIR/pids"
    make_pki "$DIR/pki" "$node_ip"

    local etcd_port peer_port api_port
    etcd_port=$(free_port)
    peer_port=$(free_port)
    api_port=${port:-$(free_port)}

    # fsync buys nothing for a throwaway store and costs seconds per test run.
    start "$DIR/etcd.log" "$bin/etcd" --name capstan-test --data-dir "$DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "capstan-test=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level warn
    wait_ready etcd "$LAST_PID" "$DIR/etcd.log" \
        bash -c "curl -sf -m 5 http://127.0.0.1:$etcd_port/health | grep -q '\"health\":\"true\"'"

    # Every request, at Metadata level: tests count what Capstan sends, by user agent and identity.
    cat >"$DIR/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
EOF
    : >"$DIR/audit.log"
    # Without a node: loopback only, and no endpoints for the kubernetes Service (nothing could use
    # them). With one: Pods reach the API server on the node IP through that Service.
    local api_host=127.0.0.1
    local -a node_args=(--advertise-address 127.0.0.1 --endpoint-reconciler-type none --authorization-mode RBAC)
    if [[ -n $node_ip ]]; then
        api_host=$node_ip
        # shellcheck disable=SC2054 # Node,RBAC is one value
        node_args=(--advertise-address "$node_ip" --authorization-mode Node,RBAC
            --kubelet-preferred-address-types InternalIP
            --kubelet-client-certificate "$DIR/pki/kubelet-client.crt" --kubelet-client-key "$DIR/pki/kubelet-client.key")
    fi
    start "$DIR/kube-apiserver.log" "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address "$api_host" --secure-port "$api_port" "${node_args[@]}" \
        --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
        --client-ca-file "$DIR/pki/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
        --service-cluster-ip-range 10.96.0.0/16 \
        --audit-policy-file "$DIR/audit-policy.yaml" --audit-log-path "$DIR/audit.log" \
        --audit-log-format json --audit-log-maxsize 0 \
        --allow-privileged=true
    wait_ready kube-apiserver "$LAST_PID" "$DIR/kube-apiserver.log" \
        curl -sf -m 5 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key" \
        "https://$api_host:$api_port/readyz"

    write_kubeconfig "$DIR" "$api_port" "$api_host"
    # Only the controllers a cluster without nodes needs: namespaces finish deleting, owner
    # references cascade, and every namespace gets its default ServiceAccount. A node adds what
    # Pods need: Deployments get Pods, Services endpoints, the not-ready taint is lifted, and
    # ServiceAccount tokens find kube-root-ca.crt.
    local controllers=namespace,garbagecollector,serviceaccount
    [[ -z $node_ip ]] || controllers+=,deployment,replicaset,endpointslice,nodelifecycle,root-ca-cert-publisher,podgc
    start "$DIR/kube-controller-manager.log" "$bin/kube-controller-manager" \
        --kubeconfig "$DIR/kubeconfig" --controllers "$controllers" \
        --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
        --service-account-private-key-file "$DIR/pki/sa.key" --root-ca-file "$DIR/pki/ca.crt"
    wait_ready kube-controller-manager "$LAST_PID" "$DIR/kube-controller-manager.log" \
        bash -c "'$bin/kubectl' --kubeconfig '$DIR/kubeconfig' --request-timeout 5s get serviceaccount default -n default"

    {
        printf 'export KUBECONFIG=%s\n' "$(shquote "$DIR/kubeconfig")"
        printf 'export CAPSTAN_KUBE_BIN=%s\n' "$(shquote "$bin")"
        printf 'export CAPSTAN_AUDIT_LOG=%s\n' "$(shquote "$DIR/audit.log")"
        # shellcheck disable=SC2016 # $PATH is expanded by whoever sources the file
        printf 'export PATH=%s:"$PATH"\n' "$(shquote "$bin")"
    } >"$DIR/env.tmp"
    mv -f "$DIR/env.tmp" "$DIR/env"

    if [[ -n $watch_pid ]]; then
        start_reaper "$DIR" "$watch_pid" "$SELF"
    fi
    UP_DONE=1
    DEFER_ERROR=0
    trap - EXIT INT TERM
    log "control plane up: https://$api_host:$api_port (state in $DIR)"
    cat "$DIR/env"
}

cmd_down() {
    (($# == 1)) || usage_error "down: expected exactly DIR"
    down_recorded "$1" "the control plane"
}


(($#)) || usage_error "missing command"
cmd=$1
shift
case $cmd in
    build) (($# == 0)) || usage_error "build takes no arguments"; cmd_build ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    env) cmd_env "$@" ;;
    help | -h | --help) usage ;;
    *) usage_error "unknown command '$cmd'" ;;
esac
