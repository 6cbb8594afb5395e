#!/usr/bin/env bash
# The images of the cluster tier, made here without a registry, in buildah's storage in a cache outside
# the clone:
#   base   python:3.11-slim, the base image of the Dockerfile `bentoml containerize` generates, which
#          cannot be pulled here: Debian bookworm's python3 (3.11) and pip from Debian's packages
#          (mmdebstrap), under the name the Dockerfile's FROM resolves to
#   pause  the pod sandbox image: ./pause (a static Go program) in an image of its own
#   otelcol, prometheus
#          the observability stack's images, FROM scratch: the OpenTelemetry Collector and Prometheus
#          binaries `make stack-bin` builds (tests/e2e/stack/build.sh), at the path and with the
#          entrypoint the charts expect (the collector as /otelcol-k8s, the command its values name;
#          Prometheus as /bin/prometheus, the official image's entrypoint), under the names the test-only
#          values overlays use (tests/cluster/overlays/)
#   alertmanager, metrics-server
#          likewise FROM scratch: Alertmanager (`make stack-bin`) as /bin/alertmanager and metrics-server
#          (`make cluster-bin`, tests/cluster/build.sh) as /metrics-server, the official images'
#          entrypoints (their charts pass only arguments)
#
#   tests/cluster/images.sh [IMAGE...]            make what is missing (default: base pause)
#   tests/cluster/images.sh --env                 print the environment `bentoml containerize --backend
#                                                 buildah` builds with (see below)
#   tests/cluster/images.sh --archive IMAGE FILE:NAME  write IMAGE as a docker archive named NAME (what
#                                                 `ctr import` reads)
#
# The build environment: this storage; chroot isolation (no container runtime); layers cached, so an
# unchanged `pip install` step is not run again; and the host's CA certificates mounted read-only over
# the image's for the build steps, because this machine reaches PyPI through a TLS-intercepting proxy
# (the image keeps its own certificates). buildah runs in a mount namespace of its own here: its overlay
# mounts never show on the host.
# Cache: ${CLUSTER_IMAGES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/newsgroups-observability/cluster-images}
set -euo pipefail

BASE_IMAGE=docker.io/library/python:3.11-slim
PAUSE_IMAGE=registry.k8s.io/pause:3.10
# The tags say which release each binary is (tests/e2e/stack/otelcol/builder.yaml, helm-config/charts.env).
OTELCOL_IMAGE=localhost/newsgroups-observability/opentelemetry-collector:0.165.0
PROMETHEUS_IMAGE=localhost/newsgroups-observability/prometheus:v3.14.0
ALERTMANAGER_IMAGE=localhost/newsgroups-observability/alertmanager:v0.34.0
# (metrics-server: tests/cluster/metrics-server/go.mod)
METRICS_SERVER_IMAGE=localhost/newsgroups-observability/metrics-server:v0.8.0
SUITE=bookworm
# Pinned: the service's Python and pip. The rest is what the suite's minbase variant installs.
BASE_PACKAGES=(python3=3.11.2-1+b1 python3-pip=23.0.1+dfsg-1 ca-certificates)
MIRRORS=(
	"deb http://deb.debian.org/debian $SUITE main"
	"deb http://deb.debian.org/debian $SUITE-updates main"
	"deb http://deb.debian.org/debian-security $SUITE-security main"
)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${CLUSTER_IMAGES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/newsgroups-observability/cluster-images}
export CONTAINERS_STORAGE_CONF=$root/storage.conf CONTAINERS_CONF=$root/containers.conf
export BUILDAH_ISOLATION=chroot BUILDAH_LAYERS=true

mkdir -p "$root"
cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$root/storage"
runroot = "$root/run"
EOF
cat >"$CONTAINERS_CONF" <<EOF
[containers]
volumes = ["/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro"]
EOF

if [ "${1:-}" = --env ]; then
	for name in CONTAINERS_STORAGE_CONF CONTAINERS_CONF BUILDAH_ISOLATION BUILDAH_LAYERS; do
		echo "$name=${!name}"
	done
	exit 0
fi

# Every buildah command in a private mount namespace (the overlay driver mounts its layers).
isolated() { unshare --mount --propagation private "$@"; }

if [ "${1:-}" = --archive ]; then
	[ $# -eq 3 ] || { echo "usage: images.sh --archive IMAGE FILE:NAME" >&2; exit 1; }
	rm -f "${3%%:*}"
	isolated buildah push --quiet "$2" "docker-archive:$3" >/dev/null
	exit 0
fi

# An image is made again when what it is made from changes: its annotation holds its inputs' hash.
key_of() { cat "$@" | sha256sum | cut -c1-16; }
current() { # current IMAGE KEY -> true if IMAGE exists with that key
	[ "$(isolated buildah inspect --type image --format '{{index .ImageAnnotations "newsgroups.key"}}' "$1" \
		2>/dev/null)" = "$2" ]
}

make_base() {
	local key tmp includes
	key=$(printf '%s\n' "${BASE_PACKAGES[@]}" "${MIRRORS[@]}" | key_of - "$0")
	if current "$BASE_IMAGE" "$key"; then
		echo "images.sh: base $BASE_IMAGE: up to date"
		return
	fi
	echo "images.sh: base $BASE_IMAGE: making it from Debian's packages"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' RETURN
	includes=$(IFS=,; echo "${BASE_PACKAGES[*]}")
	# minbase: the essential packages and apt; --include adds Python, pip (the Dockerfile runs `pip
	# install uv`) and CA certificates. EXTERNALLY-MANAGED goes, as the official image's pip installs
	# into its Python too; uv is told to trust the system's certificates, as pip does. No apt lists.
	mmdebstrap --quiet --variant=minbase --include="$includes" \
		--customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
		--customize-hook='mkdir -p "$1/etc/uv" && echo "system-certs = true" >"$1/etc/uv/uv.toml"' \
		--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
		"$SUITE" "$tmp/rootfs.tar" "${MIRRORS[@]}"
	isolated bash -euo pipefail -c '
		ctr=$(buildah from scratch)
		buildah add --quiet "$ctr" "$1" /
		buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			--cmd python3 --annotation "newsgroups.key=$2" "$ctr"
		buildah commit --quiet --rm "$ctr" "$3" >/dev/null
	' make-base "$tmp/rootfs.tar" "$key" "$BASE_IMAGE"
}

make_pause() {
	local key tmp
	key=$(key_of "$here"/pause/* "$0")
	if current "$PAUSE_IMAGE" "$key"; then
		echo "images.sh: pause $PAUSE_IMAGE: up to date"
		return
	fi
	echo "images.sh: pause $PAUSE_IMAGE: building it"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' RETURN
	(cd "$here/pause" && CGO_ENABLED=0 GOWORK=off go build -trimpath -ldflags "-s -w" -o "$tmp/pause" .)
	isolated bash -euo pipefail -c '
		ctr=$(buildah from scratch)
		buildah copy --quiet "$ctr" "$1" /pause
		buildah config --entrypoint "[\"/pause\"]" --user 65535:65535 --annotation "newsgroups.key=$2" "$ctr"
		buildah commit --quiet --rm "$ctr" "$3" >/dev/null
	' make-pause "$tmp/pause" "$key" "$PAUSE_IMAGE"
}

# make_binary_image IMAGE BINARY PATH: BINARY at PATH, FROM scratch, PATH the entrypoint.
make_binary_image() {
	local key
	key=$(key_of "$2" "$0")
	if current "$1" "$key"; then
		echo "images.sh: $1: up to date"
		return
	fi
	echo "images.sh: $1: making it from $2"
	isolated bash -euo pipefail -c '
		ctr=$(buildah from scratch)
		buildah copy --quiet "$ctr" "$2" "$3"
		buildah config --entrypoint "[\"$3\"]" --annotation "newsgroups.key=$4" "$ctr"
		buildah commit --quiet --rm "$ctr" "$1" >/dev/null
	' make-binary-image "$1" "$2" "$3" "$key"
}

stack_binary() { # the path of a binary `make stack-bin` builds, or fail
	local path
	path=$(bash "$here/../e2e/stack/build.sh" --print-path "$1")
	[ -x "$path" ] || { echo "images.sh: $1 is not built ($path): run \`make stack-bin\`" >&2; exit 1; }
	echo "$path"
}

cluster_binary() { # the path of a binary `make cluster-bin` builds, or fail
	local path
	path=$(bash "$here/build.sh" --print-path "$1")
	[ -x "$path" ] || { echo "images.sh: $1 is not built ($path): run \`make cluster-bin\`" >&2; exit 1; }
	echo "$path"
}

images=("$@")
[ $# -gt 0 ] || images=(base pause)
start=$(date +%s)
for image in "${images[@]}"; do
	case $image in
	base) make_base ;;
	pause) make_pause ;;
	otelcol) make_binary_image "$OTELCOL_IMAGE" "$(stack_binary otelcol)" /otelcol-k8s ;;
	prometheus) make_binary_image "$PROMETHEUS_IMAGE" "$(stack_binary prometheus)" /bin/prometheus ;;
	alertmanager) make_binary_image "$ALERTMANAGER_IMAGE" "$(stack_binary alertmanager)" /bin/alertmanager ;;
	metrics-server) make_binary_image "$METRICS_SERVER_IMAGE" "$(cluster_binary metrics-server)" /metrics-server ;;
	*) echo "images.sh: unknown image '$image' (base, pause, otelcol, prometheus, alertmanager, metrics-server)" >&2
		exit 1 ;;
	esac
done
echo "images.sh: done in $(($(date +%s) - start)) s"
