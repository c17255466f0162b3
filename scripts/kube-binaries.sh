#!/usr/bin/env bash
# Provides the Kubernetes control-plane binaries the end-to-end tests drive:
# kube-apiserver, etcd and kubectl. Prints the directory that holds them (stdout);
# progress goes to stderr.
#
# Order of sources:
#   1. $KUBEBUILDER_ASSETS, when set (the controller-runtime envtest convention);
#   2. binaries built earlier on this machine, cached outside the work tree in
#      ${XDG_CACHE_HOME:-$HOME/.cache}/archiver-operator/kube/v$KUBE_VERSION/ ;
#   3. a build with Go from the published Kubernetes and etcd Go modules (no container
#      registry and no binary downloads needed, only the Go module proxy).
#
# The build generates a tiny go.mod that requires k8s.io/kubernetes and pins every
# k8s.io staging module (which the kubernetes go.mod replaces with ./staging paths,
# unusable from outside the repository) to the matching v0.X.Y release. The etcd
# server comes from the same module graph (kubernetes requires go.etcd.io/etcd/server/v3),
# so one `go build` compiles all three and they share compiled packages.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.37.2}
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/archiver-operator/kube
CACHE_DIR=$CACHE_ROOT/v$KUBE_VERSION
BINARIES=(kube-apiserver etcd kubectl)

log() { echo "kube-binaries: $*" >&2; }

have_all() {
    local dir=$1 name
    for name in "${BINARIES[@]}"; do
        [ -x "$dir/$name" ] || return 1
    done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
    if have_all "$KUBEBUILDER_ASSETS"; then
        echo "$KUBEBUILDER_ASSETS"
        exit 0
    fi
    log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks one of: ${BINARIES[*]}"
    exit 1
fi

if have_all "$CACHE_DIR"; then
    echo "$CACHE_DIR"
    exit 0
fi

command -v go >/dev/null || { log "go is not installed; install Go >= 1.26 or set KUBEBUILDER_ASSETS"; exit 1; }

mkdir -p "$CACHE_ROOT"
# One build at a time per machine; a second caller waits (bounded) and then reuses it.
exec 9>"$CACHE_ROOT/.build-v$KUBE_VERSION.lock"
if command -v flock >/dev/null; then
    flock -w 3600 9 || { log "timed out waiting for another build of v$KUBE_VERSION"; exit 1; }
fi
if have_all "$CACHE_DIR"; then
    echo "$CACHE_DIR"
    exit 0
fi

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
minor=${KUBE_VERSION#*.}
staging_version=v0.$minor
work=$(mktemp -d "$CACHE_ROOT/build-v$KUBE_VERSION.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "building kube-apiserver, etcd and kubectl v$KUBE_VERSION with $(go version | cut -d' ' -f3) (several minutes on a cold machine)"
started=$(date +%s)

kube_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
[ -f "$kube_mod" ] || { log "could not download k8s.io/kubernetes@v$KUBE_VERSION from the Go module proxy"; exit 1; }
etcd_version=$(sed -n 's/^\s*go\.etcd\.io\/etcd\/server\/v3 \(v[^ ]*\).*/\1/p' "$kube_mod" | head -1)
[ -n "$etcd_version" ] || { log "k8s.io/kubernetes@v$KUBE_VERSION does not name an etcd server version"; exit 1; }

{
    echo "module archiver-operator/kube-binaries"
    echo
    echo "go $(sed -n 's/^go \(.*\)/\1/p' "$kube_mod")"
    echo
    echo "require ("
    echo "    k8s.io/kubernetes v$KUBE_VERSION"
    echo "    go.etcd.io/etcd/server/v3 $etcd_version"
    echo ")"
    echo
    echo "replace ("
    sed -n 's/^\s*\(k8s\.io\/[^ ]*\) => \.\/staging\/src\/.*/\1/p' "$kube_mod" | while read -r module; do
        echo "    $module => $module $staging_version"
    done
    echo ")"
} >"$work/go.mod"

(
    cd "$work"
    # The version the binaries report (kubectl version, /version), as the
    # Kubernetes build stamps it (hack/lib/version.sh).
    stamp=""
    for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        stamp+=" -X $package.gitVersion=v$KUBE_VERSION -X $package.gitMajor=${KUBE_VERSION%%.*}"
        stamp+=" -X $package.gitMinor=${minor%%.*} -X $package.gitTreeState=clean"
    done
    go build -mod=mod -trimpath -ldflags="-s -w$stamp" -o "$work/bin/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kubectl \
        go.etcd.io/etcd/server/v3
)
# go names the etcd binary after its module path (.../server/v3 -> server).
mv "$work/bin/server" "$work/bin/etcd"
have_all "$work/bin" || { log "build finished without all of: ${BINARIES[*]}"; exit 1; }
cp "$work/go.mod" "$work/bin/go.mod.used"
rm -rf "$CACHE_DIR"
mv "$work/bin" "$CACHE_DIR"
log "built in $(( $(date +%s) - started )) s into $CACHE_DIR (etcd $etcd_version)"
echo "$CACHE_DIR"
