#!/usr/bin/env bash
# The Capstan demo, as a user would see it: a local node (control plane, containerd, kubelet), the
# operator's image built from the Dockerfile and installed with `helm install`, a local git server
# holding examples/manifests, and a GitRepository (wait: true) whose Deployment really runs (a
# busybox httpd image built here). Safe to run again. Needs root (the node).
#   examples/demo.sh        start (or refresh) the demo and show what was synced
#   examples/demo.sh down   stop everything the demo started, restore the host, and check that
#                           nothing is left (tests/env/node.sh check-clean)
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${CAPSTAN_DEMO_DIR:-$HOME/.cache/capstan/demo}
ENV=tests/env
WEB_IMAGE=localhost/capstan-demo-web:1

if [[ ${1:-} == down ]]; then
    $ENV/gitserver.sh down "$DEMO_DIR/git"
    $ENV/node.sh down "$DEMO_DIR/node"
    [[ ! -f $DEMO_DIR/node/host-state ]] || $ENV/node.sh check-clean "$DEMO_DIR/node" "$DEMO_DIR"
    exit 0
fi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Node: control plane, containerd, kubelet, scheduler, kube-proxy (built from Go modules on first run)"
mkdir -p "$DEMO_DIR"
# shellcheck source=/dev/null
if ! $ENV/node.sh env "$DEMO_DIR/node" >/dev/null 2>&1 || ! (source "$DEMO_DIR/node/env" && kubectl get --raw /readyz >/dev/null 2>&1); then
    $ENV/node.sh down "$DEMO_DIR/node" >/dev/null 2>&1 || true
    $ENV/node.sh up "$DEMO_DIR/node" >/dev/null
fi
# shellcheck source=/dev/null
source "$DEMO_DIR/node/env"
kubectl get nodes

step "Images: the operator from the Dockerfile (buildah, no network), and the demo's web server"
cargo build --quiet --bin capstan
CAPSTAN_IMAGE=localhost/capstan:demo $ENV/image.sh build --binary "${CARGO_TARGET_DIR:-target}/debug/capstan" \
    --output "$DEMO_DIR/image/capstan-image.tar"
$ENV/node.sh import "$DEMO_DIR/node" "$DEMO_DIR/image/capstan-image.tar" 2>/dev/null
# A one-layer image: Debian's static busybox serving one page (no registry, no image builder).
command -v busybox >/dev/null 2>&1 && grep -qx httpd <<<"$(busybox --list 2>/dev/null)" ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox-static >&2
web=$DEMO_DIR/web
rm -rf "$web" && mkdir -p "$web/root/bin" "$web/root/www"
cp "$(command -v busybox)" "$web/root/bin/busybox"
echo '<h1>Synced by Capstan</h1>' >"$web/root/www/index.html"
tar --owner=0 --group=0 --numeric-owner -C "$web/root" -cf "$web/layer.tar" .
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/busybox","httpd","-f","-p","9898","-h","/www"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$(sha256sum "$web/layer.tar" | cut -d' ' -f1)" >"$web/config.json"
printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$WEB_IMAGE" >"$web/manifest.json"
tar -C "$web" -cf "$web/image.tar" manifest.json config.json layer.tar
$ENV/node.sh import "$DEMO_DIR/node" "$web/image.tar" 2>/dev/null
echo "images: localhost/capstan:demo, $WEB_IMAGE"

step "Git server (lighttpd + git http-backend) with examples/manifests, reachable from Pods"
$ENV/gitserver.sh down "$DEMO_DIR/git" >/dev/null 2>&1 || true
rm -rf "$DEMO_DIR/git/repos/podinfo.git"
GITSERVER_POD_ADDRESS=$CAPSTAN_NODE_IP $ENV/gitserver.sh up "$DEMO_DIR/git" >/dev/null
# shellcheck source=/dev/null
source "$DEMO_DIR/git/env"
$ENV/gitserver.sh create-repo "$DEMO_DIR/git" podinfo examples/manifests >/dev/null
echo "repository: $GIT_HTTP_URL/podinfo.git (Pods fetch $GIT_HTTP_POD_URL/podinfo.git)"

step "helm install capstan (deploy/helm/capstan)"
helm=$($ENV/rendertools.sh build)/helm
installed=0
"$helm" status capstan --namespace capstan-system >/dev/null 2>&1 && installed=1
"$helm" upgrade --install capstan deploy/helm/capstan --namespace capstan-system --create-namespace \
    --set image.repository=localhost/capstan --set image.tag=demo --set image.pullPolicy=Never
# Again: the image under the same tag may be new.
((installed == 0)) || kubectl rollout restart deployment/capstan -n capstan-system >/dev/null
kubectl rollout status deployment/capstan -n capstan-system --timeout=180s

step "GitRepository podinfo (wait: true: Ready once its Pods are)"
sed "s|http://git.example.com/podinfo.git|$GIT_HTTP_POD_URL/podinfo.git|" examples/gitrepository.yaml | kubectl apply -f -
kubectl wait --for=condition=Ready --timeout=180s gitrepository.capstan.dev/podinfo

step "What Capstan synced"
kubectl get gitrepositories.capstan.dev -A
echo
kubectl get pods,deployment,service -n podinfo -o wide
echo
echo "the Service answers: $(curl -sf --max-time 5 "http://$(kubectl get service podinfo -n podinfo -o 'jsonpath={.spec.clusterIP}')/")"

cat <<EOF

The demo keeps running. Try it:
  source $DEMO_DIR/node/env
  kubectl get pods -A                                 # the operator and the demo's Pods
  kubectl describe gitrepository.capstan.dev podinfo
  git clone $GIT_HTTP_URL/podinfo.git /tmp/podinfo    # edit, commit, push: Capstan applies it
  target/debug/capstan get                            # GitRepositories, as Capstan sees them
Stop it with: examples/demo.sh down
EOF
