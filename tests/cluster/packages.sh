#!/usr/bin/env bash
# The Debian packages of the cluster tier (Debian 12 bookworm), installed at pinned versions unless
# already there:
#   node     containerd, runc, CNI plugins (bridge, host-local, loopback, portmap), iptables (kube-proxy),
#            conntrack
#   images   buildah (the builder `bentoml containerize --backend buildah` runs), mmdebstrap (the Python
#            base image, made from Debian's packages)
#
#   tests/cluster/packages.sh          install what is missing or at another version
#   tests/cluster/packages.sh --check  exit 1, naming them, if any is missing or at another version
#
# Installing them starts no service: the cluster's containerd runs inside the test's namespaces only.
set -euo pipefail

PACKAGES=(
	containerd=1.6.20~ds1-1+deb12u3
	runc=1.1.5+ds1-1+deb12u1
	containernetworking-plugins=1.1.1+ds1-3+b5
	iptables=1.8.9-2
	conntrack=1:1.4.7-1+b2
	buildah=1.28.2+ds1-3+deb12u1+b3
	mmdebstrap=1.3.5-7
)

missing=()
for pinned in "${PACKAGES[@]}"; do
	name=${pinned%%=*}
	installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$name" 2>/dev/null || true)
	[ "$installed" = "ii  ${pinned#*=}" ] || missing+=("$pinned")
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "packages.sh: up to date"
	exit 0
fi
if [ "${1:-}" = --check ]; then
	echo "packages.sh: missing or at another version: ${missing[*]} (run tests/cluster/packages.sh)" >&2
	exit 1
fi
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
start=$(date +%s)
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "packages.sh: installed ${missing[*]} in $(($(date +%s) - start)) s"
