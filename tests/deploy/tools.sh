#!/usr/bin/env bash
# The Go tools of the offline deployment checks (tests/deploy), built from the Go module proxy into a
# cache outside the clone, pinned:
#   kube-score   github.com/zegl/kube-score/cmd/kube-score at KUBE_SCORE_VERSION (security/reliability scan)
#   podsecurity  ./podsecurity (k8s.io/pod-security-admission at the version its go.mod pins: the
#                Pod Security Admission checks the API server runs)
#   helm         helm.sh/helm/v3/cmd/helm at HELM_VERSION (renders the pinned charts with our values)
#   logql        ./logql/check.mjs with @grafana/lezer-logql from npm at the version its package-lock.json
#                pins (the LogQL grammar of Grafana's query editor: syntax check of the LogQL we ship)
#   sloth        github.com/slok/sloth/cmd/sloth at SLOTH_VERSION (generates SLO recording and alerting
#                rules for Prometheus from an SLO spec)
#   metrics-server-chart
#                the metrics-server Helm chart at METRICS_SERVER_CHART_VERSION (helm-config/charts.env),
#                packaged by the helm above (`helm package`) from its sources in the Go module zip of
#                METRICS_SERVER_CHART_MODULE (the chart lives in the application's repository, charts/;
#                that directory is byte for byte the one the chart's release tag published); the path is a
#                .tgz that `helm install`/`helm template` take
#
#   tests/deploy/tools.sh                      build what is missing
#   tests/deploy/tools.sh --print-path TOOL    print a tool's path (built or not)
#
# Cache: ${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/newsgroups-observability/deploy-tools}
set -euo pipefail

KUBE_SCORE_VERSION=v1.20.0
HELM_VERSION=v3.20.2
SLOTH_VERSION=v0.16.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
charts_env() { # charts_env KEY -> its value in helm-config/charts.env, or fail
	local value
	value=$(awk -F= -v key="$1" '$1 == key { print $2; exit }' "$here/../../helm-config/charts.env")
	[ -n "$value" ] || { echo "tools.sh: $1 is not set in helm-config/charts.env" >&2; exit 1; }
	echo "$value"
}
metrics_server_chart_version=$(charts_env METRICS_SERVER_CHART_VERSION)
metrics_server_chart_module=$(charts_env METRICS_SERVER_CHART_MODULE)
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
	sloth) echo "$root/sloth-$SLOTH_VERSION/sloth" ;;
	metrics-server-chart)
		echo "$root/metrics-server-chart-$metrics_server_chart_version/metrics-server-$metrics_server_chart_version.tgz" ;;
	*) echo "tools.sh: unknown tool '$1' (known: kube-score podsecurity helm logql sloth metrics-server-chart)" >&2
		exit 1 ;;
	esac
}

if [ "${1:-}" = --print-path ]; then
	[ $# -eq 2 ] || { echo "usage: tools.sh --print-path TOOL" >&2; exit 1; }
	path_of "$2"
	exit 0
fi

command -v go >/dev/null || { echo "tools.sh: go is not installed" >&2; exit 1; }
export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
# The chart's sources: charts/metrics-server of the module zip, checked to be the pinned chart version.
package_metrics_server_chart() { # package_metrics_server_chart DIR
	local src chart
	src=$(cd "$1" && go mod download -json "$metrics_server_chart_module" | awk -F'"' '$2 == "Dir" { print $4 }')
	chart=$src/charts/metrics-server
	[ "$(awk '$1 == "version:" { print $2; exit }' "$chart/Chart.yaml")" = "$metrics_server_chart_version" ] || {
		echo "tools.sh: $chart/Chart.yaml is not version $metrics_server_chart_version" >&2
		exit 1
	}
	"$(path_of helm)" package "$chart" --destination "$1" >/dev/null
	mv "$1/metrics-server-$metrics_server_chart_version.tgz" "$1/metrics-server-chart"
}

for tool in kube-score podsecurity helm logql sloth metrics-server-chart; do
	target=$(path_of "$tool")
	if [ -x "$target" ] || { [ "$tool" = metrics-server-chart ] && [ -f "$target" ]; }; then
		echo "tools.sh: $tool: up to date ($target)"
		continue
	fi
	dir=$(dirname "$target")
	mkdir -p "$dir"
	tmp=$(mktemp -d "$dir/.build.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	echo "tools.sh: $tool: building into $dir"
	start=$(date +%s)
	if [ "$tool" = kube-score ]; then
		GOBIN=$tmp go install -trimpath "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
	elif [ "$tool" = helm ]; then
		# helm's Makefile stamps the version the same way; without it `helm version` says v3.x-dev.
		GOBIN=$tmp go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
			"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
	elif [ "$tool" = sloth ]; then
		# Sloth's release build (scripts/build/bin/build-raw.sh) stamps the tag the same way.
		GOBIN=$tmp go install -trimpath -ldflags "-s -w -X github.com/slok/sloth/internal/info.Version=$SLOTH_VERSION" \
			"github.com/slok/sloth/cmd/sloth@$SLOTH_VERSION"
	elif [ "$tool" = metrics-server-chart ]; then
		package_metrics_server_chart "$tmp"
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
	echo "tools.sh: $tool: built in $(($(date +%s) - start)) s"
done
