#!/usr/bin/env bash
# A real Kubernetes node on this machine, for the tests that need Pods: containerd and runc and the
# CNI plugins from Debian, kubelet, kube-scheduler and kube-proxy built from the same pinned
# k8s.io/kubernetes module as the control plane (tests/env/controlplane.sh, started here with
# --node), and a bridge pod network that cannot leave the machine. One node per machine: `up` of the
# same DIR from several test binaries shares it (each --watch-pid keeps it alive), another DIR is
# refused. `down` undoes what `up` did to the host (docs/node.md lists it).
# Run `tests/env/node.sh help` for the interface. Needs root.
set -euo pipefail

PROG=${0##*/}
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/${BASH_SOURCE[0]##*/}"
# shellcheck source=lib.sh
source "${SELF%/*}/lib.sh"

CONTROLPLANE=${SELF%/*}/controlplane.sh
# The control plane's pins, plus the modules only the node's binaries need (same k8s.io/kubernetes).
TOOLS_MOD=${SELF%/*}/node-tools
CACHE=${CAPSTAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capstan}
# shellcheck disable=SC2034 # read by wait_ready (lib.sh)
TIMEOUT=${NODE_TIMEOUT:-60}

# Addresses away from the machine's own network. The node IP lives on `lo`; Pods sit on a bridge
# with no uplink and get routes to the Service range and the node IP only (no default route).
NODE_NAME=capstan-node
NODE_IP=10.254.254.1
POD_CIDR=10.254.0.0/24
POD_GATEWAY=10.254.0.1
SERVICE_CIDR=10.96.0.0/16
BRIDGE=capstan0
# The sandbox image containerd runs for every Pod, compiled from the module's pause.c.
PAUSE_VERSION=3.10.2
PAUSE_IMAGE=registry.k8s.io/pause:$PAUSE_VERSION
# Machine-wide: who owns the node, and the lock that orders every up and down.
LOCK=/run/lock/capstan-node.lock
OWNER_FILE=/run/capstan-node.owner

usage() {
    cat <<EOF
Usage:
  $PROG install
      Install containerd, runc, the CNI plugins, iptables, nftables, conntrack and buildah from
      Debian's packages when missing (needs root). apt's output goes to
      $CACHE/node-install.log.
  $PROG build
      Build (once) kubelet, kube-scheduler, kube-proxy and the pause image from the Go modules
      pinned in tests/env/node-tools (tests/env/tools plus what only the node needs); print the
      directory holding them. Cached like the control plane, keyed by the pins.
  $PROG up DIR [--watch-pid PID]
      Start a control plane (controlplane.sh up DIR/controlplane --node $NODE_IP), containerd,
      kubelet, kube-scheduler and kube-proxy; wait for node $NODE_NAME to be Ready. Prints shell
      'export' lines (also in DIR/env). If DIR's node already runs and --watch-pid is given, PID
      joins it (the node lives until every watched PID has exited) and the env is printed.
      A failed 'up' stops what it started, restores the host, and ends with one line naming the
      component that failed and its log.
  $PROG down DIR
      Stop everything 'up' started and undo its changes to the host; fails if anything is left.
  $PROG check-clean DIR [OTHER_DIR...]
      List what a node in DIR left on the host, one line each, and fail if there is anything:
      processes and mounts under DIR (and each OTHER_DIR), the bridge $BRIDGE, the address
      $NODE_IP on lo, netfilter tables and KUBE-*/CNI-* chains, kubepods cgroups, Pod network
      namespaces, host directories the node created, ip_forward if it differs from before 'up'.
  $PROG env DIR
      Print DIR/env.
  $PROG import DIR ARCHIVE
      Import an image archive (docker-archive or OCI) into the node's containerd (namespace k8s.io).

Exported by 'up': those of controlplane.sh (KUBECONFIG, PATH, CAPSTAN_KUBE_BIN,
CAPSTAN_AUDIT_LOG), and CAPSTAN_NODE_NAME, CAPSTAN_NODE_IP (reachable from Pods: serve things
there), CAPSTAN_POD_CIDR, CAPSTAN_CONTAINERD_ADDRESS, CAPSTAN_NODE_DIR, CAPSTAN_NODE_BIN.

Logs: DIR/containerd.log, DIR/kubelet.log, DIR/kube-scheduler.log, DIR/kube-proxy.log,
DIR/reaper.log, DIR/controlplane/*.log (DIR/controlplane/up.log: what controlplane.sh up said).
Environment:
  NODE_TIMEOUT       seconds for each component to become ready (default 60)
  NODE_PACKAGES      the packages 'install' installs (space-separated) where a distribution or
                     mirror names them differently; when set, those dpkg does not list as
                     installed are installed. Default, when one of their commands is missing:
                     ${PACKAGES[*]}
  NODE_KUBELET_PORT  the kubelet's port on $NODE_IP (default: a free port; 10250 is the
                     kubelet's usual one)
  CONTROLPLANE_PORT, CONTROLPLANE_TIMEOUT: see controlplane.sh help
EOF
}

# ---------------------------------------------------------------- packages

PACKAGES=(containerd runc containernetworking-plugins iptables nftables conntrack iproute2 buildah)

pkg_installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }

# apt-get install PACKAGE..., output to LOGFILE; on failure once more after apt-get update (the
# package lists may be stale).
apt_install() {
    local logfile=$1
    shift
    local -a apt=(apt-get -o DPkg::Lock::Timeout=120 -y --no-install-recommends)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$@" >>"$logfile" 2>&1 && return 0
    log "apt-get install failed; running apt-get update and retrying"
    apt-get -o DPkg::Lock::Timeout=120 update >>"$logfile" 2>&1 || return
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "$@" >>"$logfile" 2>&1
}

cmd_install() {
    local missing=() c
    for c in containerd containerd-shim-runc-v2 ctr runc nft iptables conntrack ip buildah; do
        command -v "$c" >/dev/null 2>&1 || [[ -x /usr/sbin/$c ]] || missing+=("$c")
    done
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || missing+=(/usr/lib/cni)
    local -a packages=()
    if [[ -n ${NODE_PACKAGES:-} ]]; then
        # Packages named by the user: those dpkg does not have, whatever commands are found.
        local p named=()
        read -ra named <<<"$NODE_PACKAGES"
        for p in "${named[@]}"; do
            pkg_installed "$p" || { packages+=("$p") && missing+=("package $p"); }
        done
        if ((${#packages[@]} == 0)); then
            ((${#missing[@]} == 0)) || die "missing ${missing[*]}, though the NODE_PACKAGES ($NODE_PACKAGES) are installed"
            return 0
        fi
    else
        ((${#missing[@]})) || return 0
        packages=("${PACKAGES[@]}")
    fi
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; install ${packages[*]} (needs root)"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available to install them"
    mkdir -p "$CACHE"
    local logfile=$CACHE/node-install.log
    : >"$logfile"
    log "installing ${packages[*]} with apt-get (missing: ${missing[*]}; log: $logfile)"
    # The containerd package would start its own service; keep it from doing so while it installs.
    local policy=/usr/sbin/policy-rc.d ours=0 rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
    fi
    apt_install "$logfile" "${packages[@]}" || rc=$?
    ((ours == 0)) || rm -f "$policy"
    if ((rc)); then
        log_tail "$logfile"
        local unknown
        unknown=$(sed -n -e 's/^E: Unable to locate package //p' \
            -e "s/^E: Package '\(.*\)' has no installation candidate/\1/p" "$logfile" | sort -u | tr '\n' ' ')
        [[ -z $unknown ]] ||
            die "install: apt cannot find the package ${unknown% }${NODE_PACKAGES:+ (named in NODE_PACKAGES)}, even after apt-get update (log: $logfile)"
        die "install: apt-get install ${packages[*]} failed (log: $logfile)"
    fi
    [[ -x /usr/lib/cni/bridge ]] && command -v containerd >/dev/null 2>&1 ||
        die "containerd or /usr/lib/cni/bridge still missing after installing ${packages[*]} (log: $logfile)"
}

# ---------------------------------------------------------------- build


K8S_VERSION=$(go_pin k8s.io/kubernetes)
CP_K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" && NF >= 2 { print $2; exit }' "${SELF%/*}/tools/go.mod")
# The same stamp and cache key as controlplane.sh, so the node's binaries match the control plane's.
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$(cut -d. -f1 <<<"${K8S_VERSION#v}")"
    LDFLAGS+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $pkg.gitTreeState=clean"
done

node_bin_dir() {
    local key
    key=$(cat "$TOOLS_MOD/go.mod" "$TOOLS_MOD/go.sum" <(echo "$LDFLAGS") | sha256sum | cut -c1-12)
    echo "$CACHE/k8s-$K8S_VERSION-$key/node"
}

# docker_archive ROOT NAME OUT: a one-layer image archive of the directory ROOT, tagged NAME, whose
# entrypoint is its first extra argument (ctr imports it; no registry, no image builder).
docker_archive() {
    local root=$1 name=$2 out=$3 entry=$4 work diff
    work=$(mktemp -d)
    tar --owner=0 --group=0 --numeric-owner --sort=name --mtime=@0 -C "$root" -cf "$work/layer.tar" .
    diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["%s"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$entry" "$diff" >"$work/config.json"
    printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$name" >"$work/manifest.json"
    tar -C "$work" -cf "$out" manifest.json config.json layer.tar
    rm -rf "$work"
}

build_node() {
    local tmp=$1 src
    go build -trimpath -ldflags="$LDFLAGS" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kubelet \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kube-proxy
    src=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
    [[ -f $src ]] || die "pause.c not found at $src"
    mkdir -p "$tmp/pause-root"
    gcc -Os -static -DVERSION="v$PAUSE_VERSION-capstan" -o "$tmp/pause-root/pause" "$src" &&
        strip "$tmp/pause-root/pause" ||
        die "compiling the pause image from $src with gcc -static failed (is libc6-dev installed?)"
    docker_archive "$tmp/pause-root" "$PAUSE_IMAGE" "$tmp/pause.tar" /pause
    rm -rf "$tmp/pause-root"
}

cmd_build() {
    [[ $K8S_VERSION == "$CP_K8S_VERSION" ]] ||
        die "tests/env/node-tools pins k8s.io/kubernetes $K8S_VERSION but tests/env/tools pins $CP_K8S_VERSION; they must match"
    has_files "$(node_bin_dir)" pause.tar || command -v gcc >/dev/null 2>&1 ||
        die "gcc is not installed; it compiles the pause image"
    go_cached "$(node_bin_dir)" "kubelet, kube-scheduler and kube-proxy $K8S_VERSION" \
        build_node kubelet kube-scheduler kube-proxy pause.tar
}

# ---------------------------------------------------------------- helpers

LAST_PID=
start() {
    local logfile=$1
    shift
    # 8>&-: the machine-wide lock must not outlive `up` in the servers it starts.
    "$@" </dev/null >>"$logfile" 2>&1 8>&- &
    echo "$!" >>"$DIR/pids"
    LAST_PID=$!
}

watcher_alive() {
    local pid
    [[ -f $1/watchers ]] || return 1
    while read -r pid; do
        is_alive "$pid" && return 0
    done <"$1/watchers"
    return 1
}

node_running() { [[ -n $(recorded_pids "$1") ]]; }

take_lock() {
    exec 8>"$LOCK"
    flock -w 600 8 || die "waited 10 minutes for $LOCK (another node.sh up or down)"
}

# ---------------------------------------------------------------- host

# What the host looked like before `up`, so `down` removes only what the node added.
save_host_state() {
    local f=$DIR/host-state p
    {
        echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
        for p in /run/containerd /run/netns /var/lib/cni /var/lib/kubelet /var/log/containers /var/log/pods; do
            [[ -e $p ]] && echo "existed=$p"
        done
        for p in /run/netns/cni-*; do
            [[ -e $p ]] && echo "netns=$p"
        done
        nft list tables 2>/dev/null | sed 's/^/nft=/'
    } >"$f.tmp"
    mv -f "$f.tmp" "$f"
}

host_had() { grep -qxF "existed=$1" "$DIR/host-state" 2>/dev/null; }

setup_host_network() {
    grep -qF " $NODE_IP/32 " <<<"$(ip addr show dev lo)" || ip addr add "$NODE_IP/32" dev lo ||
        die "cannot add $NODE_IP/32 to lo (needs root and iproute2)"
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge || die "cannot create the bridge $BRIDGE"
    fi
    grep -qF " $POD_GATEWAY/" <<<"$(ip addr show dev "$BRIDGE")" || ip addr add "$POD_GATEWAY/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    # A Pod reaching a ClusterIP Service is DNATed and forwarded.
    echo 1 >/proc/sys/net/ipv4/ip_forward
}

# Chains named KUBE-* (kubelet and kube-proxy canaries, ...) in every table, for iptables and ip6tables.
remove_kube_chains() {
    local cmd table chain rule
    for cmd in iptables ip6tables; do
        command -v "$cmd" >/dev/null 2>&1 || continue
        for table in filter nat mangle raw; do
            "$cmd" -t "$table" -S >/dev/null 2>&1 || continue
            while read -r rule; do
                # shellcheck disable=SC2086 # a rule is several words
                "$cmd" -t "$table" ${rule/#-A/-D} 2>/dev/null || true
            done < <("$cmd" -t "$table" -S 2>/dev/null | grep -E '^-A ' | grep -E -- '-j KUBE-' | grep -vE '^-A KUBE-' || true)
            while read -r chain; do
                "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
            done < <("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }')
            while read -r chain; do
                "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
            done < <("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }')
        done
    done
    local fam
    for fam in ip ip6 inet; do
        nft list table "$fam" kube-proxy >/dev/null 2>&1 && nft delete table "$fam" kube-proxy
    done
    # The tables iptables-nft created for those chains (filter, nat, mangle), if the host had none.
    local t name
    while read -r t fam name; do
        [[ $t == table ]] || continue
        grep -qxF "nft=table $fam $name" "$DIR/host-state" 2>/dev/null && continue
        nft delete table "$fam" "$name" 2>/dev/null || log "warning: could not delete nftables table $fam $name"
    done < <(nft list tables 2>/dev/null)
    return 0
}

# Everything mounted below DIR (container root filesystems, Pod volumes) and the Pods' network
# namespaces, deepest first.
unmount_all() {
    local mp
    while read -r mp; do
        umount -l "$mp" 2>/dev/null || log "warning: could not unmount $mp"
    done < <(awk -v d="$DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    local ns
    for ns in /run/netns/cni-*; do
        [[ -e $ns ]] || continue
        grep -qxF "netns=$ns" "$DIR/host-state" 2>/dev/null && continue
        umount -l "$ns" 2>/dev/null || true
        rm -f "$ns"
    done
}

remove_cgroups() {
    local d
    for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods.slice; do
        [[ -d $d ]] || continue
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [[ -d $d ]] && log "warning: could not remove cgroup $d (processes still in it?)"
    done
    return 0
}

restore_host() {
    unmount_all
    remove_cgroups
    remove_kube_chains
    ip link del "$BRIDGE" 2>/dev/null || true
    ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
    local fwd
    fwd=$(sed -n 's/^ip_forward=//p' "$DIR/host-state" 2>/dev/null)
    [[ $fwd == [01] ]] && echo "$fwd" >/proc/sys/net/ipv4/ip_forward
    local p
    for p in /run/containerd /run/netns /var/lib/cni /var/lib/kubelet /var/log/containers /var/log/pods; do
        host_had "$p" || rm -rf "$p"
    done
    # The kubelet writes these outside its --root-dir whatever it is told.
    if host_had /var/lib/kubelet; then rm -rf /var/lib/kubelet/device-plugins; fi
    return 0
}

# This process and the ones it runs under (the caller of `down` or `check-clean` may name DIR).
self_and_ancestors() {
    local pid=$BASHPID ppid
    echo "$$"
    while [[ $pid =~ ^[0-9]+$ ]] && ((pid > 1)); do
        echo "$pid"
        ppid=$(awk '$1 == "PPid:" { print $2 }' "/proc/$pid/status" 2>/dev/null) || break
        pid=$ppid
    done
}

# What a node in DIR leaves on the host if teardown missed it, one line each (nothing when clean):
# processes and mounts under DIR (and under each extra directory given), the bridge, the address on
# lo, netfilter tables and chains the kubelet, kube-proxy or CNI add, cgroups, network namespaces,
# host directories that did not exist before `up`, ip_forward if it differs from before.
leftovers() {
    local f cmd pid d
    local -a dirs=("$DIR" "$@")
    local -A mine=()
    for pid in $(self_and_ancestors); do mine[$pid]=1; done
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [[ -n ${mine[$pid]:-} ]] && continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"$f") || continue
        for d in "${dirs[@]}"; do
            [[ " $cmd " == *" $d/"* ]] && { echo "process $pid: $cmd"; break; }
        done
    done
    for d in "${dirs[@]}"; do
        awk -v d="$d/" 'index($5, d) == 1 { print "mount " $5 }' /proc/self/mountinfo
    done | sort -u
    ip link show "$BRIDGE" >/dev/null 2>&1 && echo "bridge $BRIDGE"
    grep -qF " $NODE_IP/32 " <<<"$(ip addr show dev lo)" && echo "address $NODE_IP on lo"
    local t fam name
    nft list tables 2>/dev/null | while read -r t fam name; do
        grep -qxF "nft=table $fam $name" "$DIR/host-state" 2>/dev/null || echo "nftables table $fam $name"
    done
    { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } |
        awk '/^:(KUBE|CNI)-/ { print "iptables chain " substr($1, 2) }' | sort -u
    for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods.slice; do
        [[ -d $f ]] && echo "cgroup $f"
    done
    for f in /run/netns/cni-*; do
        [[ -e $f ]] && ! grep -qxF "netns=$f" "$DIR/host-state" 2>/dev/null && echo "netns $f"
    done
    if [[ -f $DIR/host-state ]]; then
        for d in /run/containerd /run/netns /var/lib/cni /var/lib/kubelet /var/log/containers /var/log/pods; do
            [[ -e $d ]] && ! host_had "$d" && echo "directory $d (absent before up)"
        done
        local fwd
        fwd=$(sed -n 's/^ip_forward=//p' "$DIR/host-state")
        [[ -z $fwd || $(cat /proc/sys/net/ipv4/ip_forward) == "$fwd" ]] ||
            echo "net.ipv4.ip_forward $(cat /proc/sys/net/ipv4/ip_forward) (was $fwd before up)"
    fi
    return 0
}

# ---------------------------------------------------------------- up

UP_DONE=0
up_cleanup() {
    local rc=$?
    ((UP_DONE)) && return 0
    log "up failed; stopping what it started and restoring the host"
    teardown >/dev/null 2>&1 || true
    local left
    left=$(leftovers)
    if [[ -n $left ]]; then
        log "warning: left behind:"
        printf '  %s\n' "$left" >&2
    else
        log "stopped and restored: no process, mount, bridge, address, netfilter rule or cgroup left"
    fi
    final_error up "$rc"
    exit $((rc ? rc : 1))
}

node_pki() {
    local cp=$DIR/controlplane/pki pki=$DIR/pki
    mkdir -p "$pki"
    (
        cd "$pki"
        umask 077
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
        sign() { # name subject extensions
            key "$1.key"
            openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
            printf '%s\n' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA "$cp/ca.crt" -CAkey "$cp/ca.key" -CAcreateserial \
                -CAserial "$pki/ca.srl" -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
        }
        # The Node authorizer knows the kubelet by this name and group.
        sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
        sign kubelet-serving "/CN=$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME
extendedKeyUsage=serverAuth"
    ) || die "generating the node's certificates with openssl failed"
}

write_configs() {
    local api_server=$1 kubelet_port=$2 kubelet_healthz=$3 proxy_healthz=$4 proxy_metrics=$5
    mkdir -p "$DIR/containerd" "$DIR/cni/conf" "$DIR/cni/ipam" "$DIR/kubelet" "$DIR/pod-logs"
    cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$DIR/containerd/containerd.sock"
[ttrpc]
  address = "$DIR/containerd/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj is refused and every sandbox fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/conf"
EOF
    # No masquerade and no default route: a Pod reaches the Service range and the node IP, nothing
    # beyond the machine.
    cat >"$DIR/cni/conf/10-capstan.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "capstan",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}, {"dst": "$NODE_IP/32"}]
      }
    }
  ]
}
EOF
    local pki=$DIR/pki ca=$DIR/controlplane/pki/ca.crt
    cat >"$DIR/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: capstan-test
  cluster: {server: "$api_server", certificate-authority: "$ca"}
users:
- name: kubelet
  user: {client-certificate: "$pki/kubelet-client.crt", client-key: "$pki/kubelet-client.key"}
contexts:
- name: kubelet
  context: {cluster: capstan-test, user: kubelet}
current-context: kubelet
EOF
    # failCgroupV1/cgroupfs: these machines run cgroup v1. oomScoreAdj 0: see restrict_oom_score_adj.
    # Eviction and image GC thresholds low: a full disk on a test machine must not evict the operator.
    cat >"$DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $ca}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
podLogsDir: $DIR/pod-logs
resolvConf: /etc/resolv.conf
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
EOF
    cat >"$DIR/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: $DIR/controlplane/kubeconfig
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:$proxy_healthz
metricsBindAddress: 127.0.0.1:$proxy_metrics
nodePortAddresses: ["$NODE_IP/32"]
# Leave the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

kubectl_() { "$CPBIN/kubectl" --kubeconfig "$DIR/controlplane/kubeconfig" --request-timeout 5s "$@"; }

node_ready() {
    [[ $(kubectl_ get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]] &&
        [[ -z $(kubectl_ get node "$NODE_NAME" -o 'jsonpath={.spec.taints}') ]]
}

start_node_reaper() {
    setsid nohup bash "$SELF" reap "$DIR" </dev/null >>"$DIR/reaper.log" 2>&1 8>&- &
    echo "$!" >"$DIR/reaper.pid"
}

cmd_up() {
    local dir_arg='' watch_pid=
    while (($#)); do
        case $1 in
            --watch-pid) (($# >= 2)) || usage_error "--watch-pid needs a PID"; watch_pid=$2; shift 2 ;;
            -*) usage_error "up: unknown option '$1'" ;;
            *) [[ -z $dir_arg ]] || usage_error "up: unexpected argument '$1'"; dir_arg=$1; shift ;;
        esac
    done
    [[ -n $dir_arg ]] || usage_error "up: DIR is required"
    [[ $(id -u) == 0 ]] || die "the node needs root (containerd, the kubelet, network set-up)"
    local kp=${NODE_KUBELET_PORT:-}
    if [[ -n $kp ]] && ! { [[ $kp =~ ^[1-9][0-9]{0,4}$ ]] && ((kp < 65536)); }; then
        usage_error "NODE_KUBELET_PORT: '$kp' is not a TCP port"
    fi
    if [[ -n $watch_pid ]]; then
        is_alive "$watch_pid" || die "--watch-pid $watch_pid: no such process"
    fi
    cmd_install
    local bin
    bin=$(cmd_build)
    CPBIN=$("$CONTROLPLANE" build)
    mkdir -p "$dir_arg"
    DIR=$(abs_dir "$dir_arg")
    check_path_chars "$DIR"

    take_lock
    local owner=''
    [[ -f $OWNER_FILE ]] && owner=$(cat "$OWNER_FILE")
    if [[ -n $owner ]] && node_running "$owner"; then
        if [[ $owner == "$DIR" && -n $watch_pid && -f $DIR/env ]]; then
            echo "$watch_pid" >>"$DIR/watchers"
            log "node $NODE_NAME already up in $DIR; pid $watch_pid joins it"
            cat "$DIR/env"
            return 0
        fi
        die "a node already runs on this machine (state in $owner; one node per machine): run '$PROG down $owner' first"
    fi
    if [[ -n $owner && -d $owner ]]; then
        log "cleaning up after a node in $owner that did not stop cleanly"
        (DIR=$owner && teardown) || true
    fi
    for p in /run/netns/cni-* ; do [[ -e $p ]] && log "note: $p exists before up (left alone)"; done

    trap up_cleanup EXIT
    DEFER_ERROR=1
    trap 'exit 130' INT
    trap 'exit 143' TERM
    rm -rf "$DIR/env" "$DIR/pids" "$DIR/reaper.pid" "$DIR/watchers" "$DIR/pki" "$DIR/containerd" \
        "$DIR/kubelet" "$DIR/cni" "$DIR/pod-logs"
    : >"$DIR/pids"
    [[ -z $watch_pid ]] || echo "$watch_pid" >"$DIR/watchers"
    echo "$DIR" >"$OWNER_FILE"
    save_host_state
    setup_host_network

    # Its messages pass through; its last error becomes this one's.
    local cpenv cpmsg=$DIR/controlplane/up.log
    mkdir -p "$DIR/controlplane"
    if ! cpenv=$("$CONTROLPLANE" up "$DIR/controlplane" --node "$NODE_IP" 2>"$cpmsg" 8>&-); then
        grep -v '^controlplane.sh: error: ' "$cpmsg" >&2 || true
        die "the control plane did not start: $(sed -n 's/^controlplane.sh: error: //p' "$cpmsg" | tail -n 1)"
    fi
    cat "$cpmsg" >&2
    local api_server
    api_server=$(awk '$1 == "server:" { print $2; exit }' "$DIR/controlplane/kubeconfig")
    node_pki

    local kubelet_port kubelet_healthz proxy_healthz proxy_metrics sched_port
    kubelet_port=${NODE_KUBELET_PORT:-$(free_port)}
    kubelet_healthz=$(free_port)
    proxy_healthz=$(free_port)
    proxy_metrics=$(free_port)
    sched_port=$(free_port)
    write_configs "$api_server" "$kubelet_port" "$kubelet_healthz" "$proxy_healthz" "$proxy_metrics"

    local sock=$DIR/containerd/containerd.sock
    start "$DIR/containerd.log" containerd --config "$DIR/containerd/config.toml"
    wait_ready containerd "$LAST_PID" "$DIR/containerd.log" ctr --address "$sock" version
    ctr --address "$sock" -n k8s.io images import "$bin/pause.tar" >/dev/null ||
        die "importing the pause image into containerd failed (log: $DIR/containerd.log)"

    start "$DIR/kubelet.log" "$bin/kubelet" --config "$DIR/kubelet-config.yaml" \
        --kubeconfig "$DIR/kubelet.kubeconfig" --root-dir "$DIR/kubelet" \
        --node-ip "$NODE_IP" --hostname-override "$NODE_NAME"
    wait_ready kubelet "$LAST_PID" "$DIR/kubelet.log" curl -sf -m 5 "http://127.0.0.1:$kubelet_healthz/healthz"

    start "$DIR/kube-scheduler.log" "$bin/kube-scheduler" \
        --kubeconfig "$DIR/controlplane/kubeconfig" --leader-elect=false \
        --bind-address 127.0.0.1 --secure-port "$sched_port"
    wait_ready kube-scheduler "$LAST_PID" "$DIR/kube-scheduler.log" curl -sfk -m 5 "https://127.0.0.1:$sched_port/healthz"

    start "$DIR/kube-proxy.log" "$bin/kube-proxy" --config "$DIR/kube-proxy-config.yaml"
    wait_ready kube-proxy "$LAST_PID" "$DIR/kube-proxy.log" curl -sf -m 5 "http://127.0.0.1:$proxy_healthz/healthz"

    local pid
    pid=$(sed -n 2p "$DIR/pids")
    wait_ready "kubelet (node $NODE_NAME Ready, untainted)" "$pid" "$DIR/kubelet.log" node_ready

    {
        printf '%s\n' "$cpenv"
        printf 'export CAPSTAN_NODE_NAME=%s\n' "$(shquote "$NODE_NAME")"
        printf 'export CAPSTAN_NODE_IP=%s\n' "$(shquote "$NODE_IP")"
        printf 'export CAPSTAN_POD_CIDR=%s\n' "$(shquote "$POD_CIDR")"
        printf 'export CAPSTAN_CONTAINERD_ADDRESS=%s\n' "$(shquote "$sock")"
        printf 'export CAPSTAN_NODE_DIR=%s\n' "$(shquote "$DIR")"
        printf 'export CAPSTAN_NODE_BIN=%s\n' "$(shquote "$bin")"
    } >"$DIR/env.tmp"
    mv -f "$DIR/env.tmp" "$DIR/env"
    [[ -z $watch_pid ]] || start_node_reaper
    UP_DONE=1
    DEFER_ERROR=0
    trap - EXIT INT TERM
    flock -u 8
    log "node $NODE_NAME Ready at $NODE_IP (state in $DIR)"
    cat "$DIR/env"
}

# ---------------------------------------------------------------- down

# Stop the node's processes (not this one) and the control plane, then restore the host.
teardown() {
    local pid sock=$DIR/containerd/containerd.sock
    local -a pids=() shims=()
    if [[ -f $DIR/pids ]]; then
        while read -r pid; do
            [[ -n $pid && $pid != "$$" ]] && is_ours "$pid" "$DIR" && pids+=("$pid")
        done < <(tail -n +2 "$DIR/pids"; cat "$DIR/reaper.pid" 2>/dev/null)
    fi
    # kubelet, scheduler, proxy (and the reaper) first, so nothing restarts containers.
    ((${#pids[@]} == 0)) || stop_pids "${pids[@]}"
    # The shims outlive containerd (they daemonize); the containers are their children.
    local f cmd
    for f in /proc/[0-9]*/cmdline; do
        cmd=$(tr '\0' ' ' 2>/dev/null <"$f") || continue
        [[ $cmd == *containerd-shim*" $sock "* ]] || continue
        pid=${f#/proc/}
        shims+=("${pid%/cmdline}")
    done
    ((${#shims[@]} == 0)) || stop_pids "${shims[@]}"
    pid=$(head -n 1 "$DIR/pids" 2>/dev/null || true)
    if [[ -n $pid ]] && is_ours "$pid" "$DIR"; then stop_pids "$pid"; fi
    [[ -d $DIR/controlplane ]] && "$CONTROLPLANE" down "$DIR/controlplane" >/dev/null 2>&1 8>&-
    restore_host
    rm -f "$DIR/env" "$DIR/watchers"
    : >"$DIR/pids"
    [[ $(cat "$OWNER_FILE" 2>/dev/null) == "$DIR" ]] && rm -f "$OWNER_FILE"
    return 0
}

cmd_down() {
    local if_unwatched=0
    [[ ${2:-} == --if-unwatched ]] && if_unwatched=1
    [[ -n ${1:-} ]] || usage_error "down: expected DIR"
    [[ -d $1 ]] || { log "$1 does not exist; nothing to stop"; return 0; }
    DIR=$(abs_dir "$1")
    [[ $(id -u) == 0 ]] || die "the node needs root to be stopped"
    CPBIN=
    take_lock
    if ((if_unwatched)) && watcher_alive "$DIR"; then
        # Someone joined while the reaper decided; keep watching.
        flock -u 8
        exec bash "$SELF" reap "$DIR"
    fi
    [[ -f $DIR/host-state ]] || { log "nothing was started in $DIR"; return 0; }
    teardown
    local left
    left=$(leftovers)
    [[ -z $left ]] || { log "warning: left behind after down:"; printf '  %s\n' "$left" >&2; return 1; }
    log "node stopped and host restored ($DIR): no process, mount, bridge, address, netfilter rule or cgroup left"
}

cmd_check_clean() {
    (($# >= 1)) || usage_error "check-clean: expected DIR [OTHER_DIR...]"
    [[ $(id -u) == 0 ]] || die "check-clean needs root (netfilter rules, cgroups)"
    [[ -d $1 ]] || die "$1 does not exist"
    DIR=$(abs_dir "$1")
    shift
    local d
    local -a others=()
    for d in "$@"; do
        [[ -d $d ]] && others+=("$(abs_dir "$d")")
    done
    ! node_running "$DIR" || die "the node in $DIR is running; run '$PROG down $DIR' first"
    [[ -f $DIR/host-state ]] || log "note: $DIR/host-state is missing (no up ran there): every nftables table counts"
    local left
    left=$(leftovers "${others[@]}")
    if [[ -n $left ]]; then
        printf '%s\n' "$left"
        die "the host is not clean after the node in $DIR: $(wc -l <<<"$left") leftovers (listed above)"
    fi
    log "clean: no process or mount under ${DIR}${others[*]:+ ${others[*]}}, no bridge $BRIDGE, no address $NODE_IP, no netfilter table or chain, cgroup, netns or host directory left by the node"
}

# The reaper of a node brought up with --watch-pid: tear down once every watcher has exited.
cmd_reap() {
    local dir=$1
    echo "$(date '+%F %T') reaper $$: watching the pids in $dir/watchers"
    while watcher_alive "$dir"; do sleep 1; done
    echo "$(date '+%F %T') reaper $$: no watcher left; stopping the node"
    exec bash "$SELF" down "$dir" --if-unwatched
}


cmd_import() {
    (($# == 2)) || usage_error "import: expected DIR ARCHIVE"
    [[ -f $1/env ]] || die "$1/env not found; run '$PROG up $1' first"
    [[ -f $2 ]] || die "image archive $2 not found"
    local dir
    dir=$(abs_dir "$1")
    ctr --address "$dir/containerd/containerd.sock" -n k8s.io images import "$2" >&2 ||
        die "ctr images import $2 failed (containerd log: $dir/containerd.log)"
}

(($#)) || usage_error "missing command"
cmd=$1
shift
case $cmd in
    install) (($# == 0)) || usage_error "install takes no arguments"; cmd_install ;;
    build) (($# == 0)) || usage_error "build takes no arguments"; cmd_build ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    reap) cmd_reap "$@" ;;
    env) cmd_env "$@" ;;
    check-clean) cmd_check_clean "$@" ;;
    import) cmd_import "$@" ;;
    help | -h | --help) usage ;;
    *) usage_error "unknown command '$cmd'" ;;
esac
