#!/usr/bin/env bash
# The binaries of the cluster tier (tests/cluster), built from the Go module proxy into a cache outside
# the clone, keyed by version:
#   kubernetes  kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl, and
#               etcd, from the module in ./kubernetes (k8s.io/kubernetes and go.etcd.io/etcd/server/v3 at
#               the versions its go.mod requires), in one `go build` so shared packages compile once
#   coredns     github.com/coredns/coredns at COREDNS_VERSION
#   metrics-server
#               sigs.k8s.io/metrics-server/cmd/metrics-server from the module in ./metrics-server (at the
#               version its go.mod requires, with upstream's dependency versions), stamped with that version
#               and METRICS_SERVER_COMMIT, its release commit, as upstream's Makefile does
#
#   tests/cluster/build.sh [PART...]            build what is missing (parts: kubernetes coredns
#                                               metrics-server; default: all)
#   tests/cluster/build.sh --print-path BINARY  print a binary's path (built or not)
#
# Cache: ${CLUSTER_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/newsgroups-observability/cluster-bin}
set -euo pipefail

COREDNS_VERSION=v1.14.7
METRICS_SERVER_COMMIT=d66279c6426c6581d9656fe3d42bc52db7c29597 # the tag v0.8.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${CLUSTER_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/newsgroups-observability/cluster-bin}
required() { awk -v m="$1" '$1 == m { print $2; exit }' "$here/${2:-kubernetes}/go.mod"; }
kubernetes_version=$(required k8s.io/kubernetes)
etcd_version=$(required go.etcd.io/etcd/server/v3)
kubernetes_dir=$root/kubernetes-$kubernetes_version+etcd-$etcd_version
metrics_server_version=$(required sigs.k8s.io/metrics-server metrics-server)
kubernetes_binaries="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd"

path_of() {
	case $1 in
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl | etcd)
		echo "$kubernetes_dir/$1" ;;
	coredns) echo "$root/coredns-$COREDNS_VERSION/coredns" ;;
	metrics-server) echo "$root/metrics-server-$metrics_server_version/metrics-server" ;;
	*) echo "build.sh: unknown binary '$1' (known: $kubernetes_binaries coredns metrics-server)" >&2; exit 1 ;;
	esac
}

if [ "${1:-}" = --print-path ]; then
	[ $# -eq 2 ] || { echo "usage: build.sh --print-path BINARY" >&2; exit 1; }
	path_of "$2"
	exit 0
fi

command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
nice=(nice -n "${CLUSTER_BUILD_NICE:-10}")

# Without these the servers report v0.0.0-master+$Format:%H$, which kubectl cannot parse and which
# becomes Helm's .Capabilities.KubeVersion.
version_ldflags() {
	local minor=${kubernetes_version#v1.} flags="" package
	minor=${minor%%.*}
	for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $package.gitVersion=$kubernetes_version -X $package.gitMajor=1"
		flags+=" -X $package.gitMinor=$minor -X $package.gitTreeState=clean"
	done
	echo "$flags"
}

build_kubernetes() {
	local tmp=$1 packages=()
	for binary in $kubernetes_binaries; do
		[ "$binary" = etcd ] || packages+=("k8s.io/kubernetes/cmd/$binary")
	done
	# -o DIR/ names each binary after its package; etcd's package is server/v3, so it comes out `server`.
	(cd "$here/kubernetes" && "${nice[@]}" go build -mod=readonly -trimpath \
		-ldflags "-s -w $(version_ldflags)" -o "$tmp/" "${packages[@]}" go.etcd.io/etcd/server/v3)
	mv "$tmp/server" "$tmp/etcd"
}

build_coredns() {
	GOBIN=$1 "${nice[@]}" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
}

# Upstream's Makefile stamps client-go's version package; `metrics-server --version` prints gitVersion.
build_metrics-server() {
	local package=k8s.io/client-go/pkg/version
	(cd "$here/metrics-server" && "${nice[@]}" go build -mod=readonly -trimpath \
		-ldflags "-s -w -X $package.gitVersion=$metrics_server_version -X $package.gitCommit=$METRICS_SERVER_COMMIT" \
		-o "$1/metrics-server" sigs.k8s.io/metrics-server/cmd/metrics-server)
}

built() { # built BINARY... -> true if every one is in the cache
	local binary
	for binary; do [ -x "$(path_of "$binary")" ] || return 1; done
}

parts=("$@")
[ $# -gt 0 ] || parts=(kubernetes coredns metrics-server)
for part in "${parts[@]}"; do
	case $part in
	kubernetes | coredns | metrics-server) ;;
	*) echo "build.sh: unknown part '$part' (kubernetes coredns metrics-server)" >&2; exit 1 ;;
	esac
done
for part in "${parts[@]}"; do
	if [ "$part" = kubernetes ]; then binaries=$kubernetes_binaries; else binaries=$part; fi
	dir=$(dirname "$(path_of "${binaries%% *}")")
	# shellcheck disable=SC2086 # a word list
	if built $binaries; then
		echo "build.sh: $part: up to date ($dir)"
		continue
	fi
	mkdir -p "$dir"
	tmp=$(mktemp -d "$dir/.build.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	echo "build.sh: $part: building $binaries into $dir"
	start=$(date +%s)
	"build_$part" "$tmp"
	for binary in $binaries; do mv -f "$tmp/$binary" "$dir/$binary"; done
	rm -rf "$tmp"
	trap - EXIT
	echo "build.sh: $part: built in $(($(date +%s) - start)) s"
done
