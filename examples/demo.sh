#!/usr/bin/env bash
# The Capstan demo: a local control plane, a local git server holding examples/manifests, the
# CRD, the controller, and a GitRepository that syncs the repository. Safe to run again.
#   examples/demo.sh        start (or refresh) the demo and show what was synced
#   examples/demo.sh down   stop everything the demo started
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${CAPSTAN_DEMO_DIR:-$HOME/.cache/capstan/demo}
ENV=tests/env

stop_controller() {
    if [[ -f $DEMO_DIR/controller.pid ]]; then
        kill "$(cat "$DEMO_DIR/controller.pid")" 2>/dev/null || true
        rm -f "$DEMO_DIR/controller.pid"
    fi
}

if [[ ${1:-} == down ]]; then
    stop_controller
    $ENV/gitserver.sh down "$DEMO_DIR/git"
    $ENV/controlplane.sh down "$DEMO_DIR/cp"
    exit 0
fi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Control plane (etcd + kube-apiserver, built from Go modules on first run)"
# shellcheck source=/dev/null
if ! $ENV/controlplane.sh env "$DEMO_DIR/cp" >/dev/null 2>&1 || ! (source "$DEMO_DIR/cp/env" && kubectl get --raw /readyz >/dev/null 2>&1); then
    $ENV/controlplane.sh down "$DEMO_DIR/cp" >/dev/null 2>&1 || true
    $ENV/controlplane.sh up "$DEMO_DIR/cp" >/dev/null
fi
# shellcheck source=/dev/null
source "$DEMO_DIR/cp/env"

step "Git server (lighttpd + git http-backend) with examples/manifests"
$ENV/gitserver.sh down "$DEMO_DIR/git" >/dev/null 2>&1 || true
rm -rf "$DEMO_DIR/git/repos/podinfo.git"
$ENV/gitserver.sh up "$DEMO_DIR/git" >/dev/null
# shellcheck source=/dev/null
source "$DEMO_DIR/git/env"
$ENV/gitserver.sh create-repo "$DEMO_DIR/git" podinfo examples/manifests >/dev/null
echo "repository: $GIT_HTTP_URL/podinfo.git"

step "GitRepository CRD"
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established --timeout=60s crd/gitrepositories.capstan.dev

step "Controller (with kustomize and helm built from Go modules on first run)"
cargo build --quiet --bin capstan
tools=$($ENV/rendertools.sh build)
stop_controller
# One process: no standby to elect a leader among.
CAPSTAN_KUSTOMIZE_PATH=$tools/kustomize CAPSTAN_HELM_PATH=$tools/helm \
    target/debug/capstan controller --leader-elect=false --cache-dir "$DEMO_DIR/cache" \
    >"$DEMO_DIR/controller.log" 2>&1 &
echo $! >"$DEMO_DIR/controller.pid"
echo "capstan controller running (pid $!, log $DEMO_DIR/controller.log)"

step "GitRepository podinfo"
sed "s|http://git.example.com/podinfo.git|$GIT_HTTP_URL/podinfo.git|" examples/gitrepository.yaml | kubectl apply -f -
kubectl wait --for=condition=Ready --timeout=120s gitrepository.capstan.dev/podinfo

step "What Capstan synced"
kubectl get gitrepositories.capstan.dev -A
echo
kubectl get namespace,configmap,serviceaccount,deployment,service -n podinfo -l capstan.dev/name=podinfo

cat <<EOF

The demo keeps running. Try it:
  source $DEMO_DIR/cp/env
  kubectl describe gitrepository.capstan.dev podinfo
  git clone $GIT_HTTP_URL/podinfo.git /tmp/podinfo   # edit, commit, push: Capstan applies it
Stop it with: examples/demo.sh down
EOF
