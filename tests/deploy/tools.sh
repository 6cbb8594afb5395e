#!/usr/bin/env bash
# The Go tools of the offline deployment checks (tests/deploy), built from the Go module proxy into a
# cache outside the clone, pinned:
#   kube-score   github.com/zegl/kube-score/cmd/kube-score at KUBE_SCORE_VERSION (security/reliability scan)
#   podsecurity  ./podsecurity (k8s.io/pod-security-admission at the version its go.mod pins: the
#                Pod Security Admission checks the API server runs)
#   helm         helm.sh/helm/v3/cmd/helm at HELM_VERSION (renders the pinned charts with our values)
#   logql        ./logql/check.mjs with @grafana/lezer-logql from npm at the version its package-lock.json
#                pins (the LogQL grammar of Grafana's query editor: syntax check of the LogQL we ship)
#
#   tests/deploy/tools.sh                      build what is missing
#   tests/deploy/tools.sh --print-path TOOL    print a tool's path (built or not)
#
# Cache: ${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/newsgroups-observability/deploy-tools}
set -euo pipefail

KUBE_SCORE_VERSION=v1.20.0
HELM_VERSION=v3.20.2

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/newsgroups-observability/deploy-tools}
# podsecurity is keyed by the hash of its sources, so an edit rebuilds it.
podsecurity_key=$(cat "$here"/podsecurity/go.mod "$here"/podsecurity/go.sum "$here"/podsecurity/main.go |
	sha256sum | cut -c1-12)
logql_key=$(cat "$here"/logql/package.json "$here"/logql/package-lock.json "$here"/logql/check.mjs |
	sha256sum | cut -c1-12)

path_of() {
	case $1 in
	kube-score) echo "$root/kube-score-$KUBE_SCORE_VERSION/kube-score" ;;
	podsecurity) echo "$root/podsecurity-$podsecurity_key/podsecurity" ;;
	helm) echo "$root/helm-$HELM_VERSION/helm" ;;
	logql) echo "$root/logql-$logql_key/logql" ;;
	*) echo "tools.sh: unknown tool '$1' (known: kube-score podsecurity helm logql)" >&2; exit 1 ;;
	esac
}

if [ "${1:-}" = --print-path ]; then
	[ $# -eq 2 ] || { echo "usage: tools.sh --print-path TOOL" >&2; exit 1; }
	path_of "$2"
	exit 0
fi

command -v go >/dev/null || { echo "tools.sh: go is not installed" >&2; exit 1; }
export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
for tool in kube-score podsecurity helm logql; do
	target=$(path_of "$tool")
	if [ -x "$target" ]; then
		echo "tools.sh: $tool: up to date ($target)"
		continue
	fi
	dir=$(dirname "$target")
	mkdir -p "$dir"
	tmp=$(mktemp -d "$dir/.build.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	echo "tools.sh: $tool: building into $dir"
	if [ "$tool" = kube-score ]; then
		GOBIN=$tmp go install -trimpath "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
	elif [ "$tool" = helm ]; then
		# helm's Makefile stamps the version the same way; without it `helm version` says v3.x-dev.
		GOBIN=$tmp go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
			"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
	elif [ "$tool" = logql ]; then
		# The package and its lock beside the wrapper, which is written last (its presence means done).
		cp "$here"/logql/{package.json,package-lock.json,check.mjs} "$dir/"
		npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
		printf '#!/bin/sh\nexec node "$(dirname "$0")/check.mjs" "$@"\n' >"$tmp/logql"
		chmod 0755 "$tmp/logql"
	else
		(cd "$here/podsecurity" && go build -mod=readonly -trimpath -o "$tmp/podsecurity" .)
	fi
	mv -f "$tmp/$tool" "$target"
	rm -rf "$tmp"
	trap - EXIT
done
