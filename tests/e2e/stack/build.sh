#!/usr/bin/env bash
# Build the real permissive backends of the e2e stack from source, through the
# Go module proxy: Prometheus at the version pinned in helm-config/charts.env
# (the appVersion of the pinned chart), Alertmanager at the version pinned there
# (the appVersion of that chart's alertmanager subchart), the OpenTelemetry
# Collector with the components of otelcol/builder.yaml, at that file's release,
# and versitygw at VERSITYGW_VERSION below: an S3 server (Apache-2.0) standing in
# for MinIO as the model store.
#
#   tests/e2e/stack/build.sh [COMPONENT...]        build what is missing (default: all)
#   tests/e2e/stack/build.sh --print-dir COMPONENT print the component's bin directory
#   tests/e2e/stack/build.sh --print-path BINARY   print a binary's path (built or not)
#   tests/e2e/stack/build.sh --check [COMPONENT...] exit 0 if all those binaries exist
#   tests/e2e/stack/build.sh --list                print "component binary path" lines
#
# Components and binaries: prometheus (prometheus, promtool), alertmanager
# (alertmanager, amtool), otelcol (otelcol), versitygw (versitygw).
# Loki, Promtail, Tempo, Grafana and MinIO are AGPL-3.0: never built or run here.
#
# Binaries go to a cache outside the clone, keyed by version:
#   ${STACK_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/newsgroups-observability/stack-bin}/<component>-<version>/<binary>
# (otelcol: otelcol-<version>-<hash of builder.yaml>, so a change of components rebuilds).
# A binary that is already there is not rebuilt, so a second run is instant.
# Each binary is linked to a temporary name and renamed into place, so an
# interrupted build never leaves a partial binary behind.
#
# Prometheus is a tiny Go module in prometheus/ (go.mod + go.sum, made by
# gen-gomod.sh) that requires the upstream module at the pinned version and
# repeats its remote replace/exclude lines and its full require list, so the
# dependency versions are exactly the upstream release's. Alertmanager's go.mod
# has no replace or exclude lines, so it needs no such module: its own module
# zip from the proxy is built as the main module, with its own go.mod and go.sum
# (the versions `go install module/cmd/...@version` would build), from a copy
# that adds a one-page stand-in for the generated web UI (ui/app/dist, which
# the zip lacks and `go:embed` requires; every API works). Builds use
# CGO_ENABLED=0 -trimpath, the upstream build tags (minus Prometheus'
# `builtinassets`: no web UI, every API works) and the upstream -X version
# ldflags, so `--version` reports the release. The default GOCACHE/GOMODCACHE
# are used (under $HOME); GOTOOLCHAIN defaults to `auto` (a go.mod `go` line newer
# than the installed Go fetches that toolchain through the proxy).
#
# Environment: STACK_BIN_DIR (see above), STACK_BUILD_NICE (niceness of the go
# commands, default 10), GOFLAGS/GOPROXY/GOCACHE/... as usual for go.
# Cold cost on 2 cores: see the times this script prints (tens of minutes, GBs).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
charts_env=$repo/helm-config/charts.env
ALL_COMPONENTS="prometheus alertmanager otelcol versitygw"
# versitygw's release and the time its tag was published (the module proxy's .info), which its version
# ldflags record; its go.mod has no replace or exclude lines, so `go install module@version` builds it
# with the release's own dependency versions.
VERSITYGW_VERSION=v1.8.0
VERSITYGW_TIME=2026-09-04T20:21:34Z

die() { echo "build.sh: $*" >&2; exit 1; }

[ -f "$charts_env" ] || die "missing $charts_env"
# KEY=value lines only (the file is also read by make); ignore anything else.
while IFS='=' read -r key value; do
	case $key in '' | \#*) continue ;; esac
	[[ $key =~ ^[A-Z][A-Z0-9_]*$ ]] || continue
	printf -v "CHARTS_$key" '%s' "$value"
done <"$charts_env"

cfg() { # cfg VAR -> value from charts.env, or die
	local v="CHARTS_$1"
	[ -n "${!v:-}" ] || die "$1 is not set in $charts_env"
	printf '%s' "${!v}"
}

bin_root=${STACK_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/newsgroups-observability/stack-bin}

# component -> settings. Sets: module version commit binaries (name=package ...)
# tags ldflags expect (the module version go.mod must require; a trailing *
# means "starts with"), and for a component built from its own module zip
# (no go.mod here), webui: the file that stands in for its generated web UI.
component() {
	local c=$1 v commit
	webui=""
	case $c in
	prometheus)
		v=$(cfg PROMETHEUS_VERSION) commit=$(cfg PROMETHEUS_COMMIT)
		module=github.com/prometheus/prometheus
		binaries="prometheus=$module/cmd/prometheus promtool=$module/cmd/promtool"
		# Prometheus 3.x.y is published as module version v0.3xx.y.
		local maj=${v%%.*} rest=${v#*.}
		expect="v0.$((maj * 100 + ${rest%%.*})).${rest#*.}"
		tags=netgo # upstream: netgo builtinassets (.promu.yml)
		local p=github.com/prometheus/common/version
		ldflags="-X $p.Version=$v -X $p.Revision=$commit -X $p.Branch=HEAD"
		ldflags+=" -X $p.BuildUser=newsgroups-observability-e2e"
		;;
	alertmanager)
		v=$(cfg ALERTMANAGER_VERSION) commit=$(cfg ALERTMANAGER_COMMIT)
		module=github.com/prometheus/alertmanager
		binaries="alertmanager=$module/cmd/alertmanager amtool=$module/cmd/amtool"
		expect=v$v
		# go:embed app/dist (ui/web.go; made by npm and elm upstream), which serves HTML from .gz files only
		webui=ui/app/dist/index.html.gz
		tags=netgo # upstream: netgo (.promu.yml)
		local p=github.com/prometheus/common/version
		ldflags="-X $p.Version=$v -X $p.Revision=$commit -X $p.Branch=HEAD"
		ldflags+=" -X $p.BuildUser=newsgroups-observability-e2e"
		;;
	otelcol)
		# The builder is released with the collector core: the same version builds it.
		v=$(awk '$1 == "version:" { print $2; exit }' "$here/otelcol/builder.yaml")
		[ -n "$v" ] || die "no dist.version in $here/otelcol/builder.yaml"
		module=go.opentelemetry.io/collector/cmd/builder
		binaries="otelcol=$module"
		expect=v$v
		v+=-$(grep -v "^#" "$here/otelcol/builder.yaml" | sha256sum | cut -c1-12) # comments aside
		;;
	versitygw)
		v=${VERSITYGW_VERSION#v}
		module=github.com/versity/versitygw/cmd/versitygw
		binaries="versitygw=$module"
		expect=$VERSITYGW_VERSION
		# As upstream's Makefile stamps them (Build: the commit, which the module proxy does not say).
		ldflags="-X main.Version=$VERSITYGW_VERSION -X main.Build=module -X main.BuildTime=$VERSITYGW_TIME"
		;;
	*) die "unknown component '$c' (known: $ALL_COMPONENTS)" ;;
	esac
	version=$v
	dir=$bin_root/$c-$v
}

component_of_binary() {
	local c b
	for c in $ALL_COMPONENTS; do
		component "$c"
		for b in $binaries; do [ "${b%%=*}" = "$1" ] && { echo "$c"; return; }; done
	done
	die "unknown binary '$1'"
}

missing_binaries() { # names of this component's binaries that are not built
	local b out=""
	for b in $binaries; do [ -x "$dir/${b%%=*}" ] || out+=" ${b%%=*}"; done
	echo "${out# }"
}

case ${1:-} in
--print-dir)
	[ $# -eq 2 ] || die "usage: build.sh --print-dir COMPONENT"
	component "$2"
	echo "$dir"
	exit 0
	;;
--print-path)
	[ $# -eq 2 ] || die "usage: build.sh --print-path BINARY"
	component "$(component_of_binary "$2")"
	echo "$dir/$2"
	exit 0
	;;
--list)
	for c in $ALL_COMPONENTS; do
		component "$c"
		for b in $binaries; do echo "$c ${b%%=*} $dir/${b%%=*}"; done
	done
	exit 0
	;;
--check)
	shift
	rc=0
	for c in ${@:-$ALL_COMPONENTS}; do
		component "$c"
		m=$(missing_binaries)
		[ -z "$m" ] || { echo "build.sh: not built: $c $version ($m) in $dir" >&2; rc=1; }
	done
	exit $rc
	;;
-h | --help)
	sed -n '2,43p' "$0"
	exit 0
	;;
-*) die "unknown option $1 (see --help)" ;;
esac

# The component module must pin the module version that charts.env implies.
pinned_module_version() { # -> $have
	if [ "$c" = otelcol ]; then have=$expect; return; fi # builder.yaml pins its own modules
	if [ "$c" = versitygw ]; then have=$expect; return; fi # go install at the pinned version
	if [ -n "$webui" ]; then have=$expect; return; fi    # built from its own module zip
	local gomod=$here/$c/go.mod
	local b pk=""
	for b in $binaries; do pk+=" ${b#*=}"; done
	[ -f "$gomod" ] || die "$c: missing $gomod: generate it with
  $here/gen-gomod.sh $c $module@<module version matching '$expect'>$pk"
	have=$(awk -v m="$module" '$1 == "require" && $2 == m { print $3; exit }' "$gomod")
	# shellcheck disable=SC2053 # $expect may be a glob on purpose
	[[ -n $have && $have == $expect ]] ||
		die "$c: charts.env says $version, so $gomod must require $module $expect, but it requires '${have:-nothing}'; regenerate it with gen-gomod.sh"
}

components=${*:-$ALL_COMPONENTS}
# Validate every requested component before any (long) build starts.
for c in $components; do
	component "$c"
	[ -z "$(missing_binaries)" ] || pinned_module_version
done

command -v go >/dev/null || die "go is not installed (needs Go >= 1.24 for go.mod tool directives)"
export CGO_ENABLED=0 GOWORK=off
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
nice=(nice -n "${STACK_BUILD_NICE:-10}")
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s; }

build_module() { # go build each missing binary of a component module ($c in $here/$c)
	pkgs=()
	for b in $binaries; do [[ " $missing " == *" ${b%%=*} "* ]] && pkgs+=("${b#*=}"); done
	# 1. fetch and verify the module sources (only the packages the build needs)
	if ! (cd "$here/$c" && "${nice[@]}" go list -mod=readonly -deps "${pkgs[@]}" >/dev/null); then
		die "$c: FAILED to download the modules of ${pkgs[*]} (see the go error above)"
	fi
	fetched=$(now)
	# 2. compile and link each binary to a temp name, then rename into place
	for b in $binaries; do
		name=${b%%=*} pkg=${b#*=}
		[[ " $missing " == *" $name "* ]] || continue
		tmp=$(mktemp "$dir/.$name.tmp.XXXXXX")
		trap 'rm -f "$tmp"' EXIT
		if ! (cd "$here/$c" && "${nice[@]}" go build -mod=readonly -trimpath -tags "$tags" \
			-ldflags "-s -w $ldflags" -o "$tmp" "$pkg"); then
			rm -f "$tmp"
			die "$c: FAILED to build $name from $pkg (see the go error above)"
		fi
		chmod 0755 "$tmp"
		mv -f "$tmp" "$dir/$name"
		trap - EXIT
	done
}

build_source() { # the module zip at $expect, built as the main module, with a stand-in web UI
	local tmp src b name pkg
	tmp=$(mktemp -d "$dir/.build.tmp.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	# 1. fetch and verify the module zip (checked against the checksum database), then the packages'
	# dependencies at the versions of its own go.mod and go.sum
	src=$(cd "$tmp" && "${nice[@]}" go mod download -json "$module@$expect" | awk -F'"' '$2 == "Dir" { print $4 }') &&
		[ -f "$src/go.mod" ] || die "$c: FAILED to download $module@$expect (see the go error above)"
	cp -R "$src" "$tmp/src"
	chmod -R u+w "$tmp/src"
	mkdir -p "$(dirname "$tmp/src/$webui")"
	printf '<!doctype html>\n<title>%s %s</title>\n<p>%s\n' "$c" "$version" \
		"The web UI is not built here (tests/e2e/stack/build.sh); the HTTP API works." >"$tmp/src/${webui%.gz}"
	[ "$webui" = "${webui%.gz}" ] || gzip -9n "$tmp/src/${webui%.gz}"
	pkgs=()
	for b in $binaries; do [[ " $missing " == *" ${b%%=*} "* ]] && pkgs+=("${b#*=}"); done
	if ! (cd "$tmp/src" && "${nice[@]}" go list -mod=readonly -deps "${pkgs[@]}" >/dev/null); then
		die "$c: FAILED to download the modules of ${pkgs[*]} (see the go error above)"
	fi
	fetched=$(now)
	# 2. compile and link each binary to a temp name, then rename into place
	for b in $binaries; do
		name=${b%%=*} pkg=${b#*=}
		[[ " $missing " == *" $name "* ]] || continue
		if ! (cd "$tmp/src" && "${nice[@]}" go build -mod=readonly -trimpath -tags "$tags" \
			-ldflags "-s -w $ldflags" -o "$tmp/$name" "$pkg"); then
			die "$c: FAILED to build $name from $pkg (see the go error above)"
		fi
		chmod 0755 "$tmp/$name"
		mv -f "$tmp/$name" "$dir/$name"
	done
	rm -rf "$tmp"
	trap - EXIT
}

build_otelcol() { # the builder at the collector's release generates the sources, then compiles them
	local tmp
	tmp=$(mktemp -d "$dir/.build.tmp.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	if ! GOBIN=$tmp/bin "${nice[@]}" go install -trimpath "$module@$expect"; then
		die "otelcol: FAILED to install $module@$expect (see the go error above)"
	fi
	cp "$here/otelcol/builder.yaml" "$tmp/"
	fetched=$(now)
	# GOFLAGS=-mod=mod: the generated module resolves its dependencies through the proxy; -e (known to
	# `go mod tidy` only): a test-only import the proxy does not serve is left aside (builder.yaml).
	if ! (cd "$tmp" && GOFLAGS="-mod=mod -e" "${nice[@]}" bin/builder --config builder.yaml); then
		die "otelcol: FAILED to build the collector from $here/otelcol/builder.yaml (see above)"
	fi
	chmod 0755 "$tmp/build/otelcol"
	mv -f "$tmp/build/otelcol" "$dir/otelcol"
	rm -rf "$tmp"
	trap - EXIT
}

build_install() { # `go install module@version`, into a temporary GOBIN, then renamed into place
	local tmp
	tmp=$(mktemp -d "$dir/.build.tmp.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	fetched=$(now) # `go install` downloads and compiles in one step
	if ! GOBIN=$tmp "${nice[@]}" go install -trimpath -ldflags "-s -w $ldflags" "$module@$expect"; then
		die "$c: FAILED to install $module@$expect (see the go error above)"
	fi
	mv -f "$tmp/$c" "$dir/$c"
	rm -rf "$tmp"
	trap - EXIT
}

total_start=$(now)
built_any=0
for c in $components; do
	component "$c"
	missing=$(missing_binaries)
	if [ -z "$missing" ]; then
		echo "build.sh: $c $version: up to date ($dir)"
		continue
	fi

	mkdir -p "$dir"
	# One builder per component at a time; a second one waits, then finds it built.
	exec {lock}>"$dir/.build.lock"
	if command -v flock >/dev/null; then flock "$lock"; fi
	missing=$(missing_binaries)
	[ -n "$missing" ] || { echo "build.sh: $c $version: built by another run"; exec {lock}>&-; continue; }

	pinned_module_version
	rm -rf "$dir"/.*.tmp.* # leftovers of an interrupted build
	echo "build.sh: $c $version: building $missing ($module $have, go $(go env GOVERSION))"
	start=$(now)
	if [ "$c" = otelcol ]; then
		build_otelcol
	elif [ "$c" = versitygw ]; then
		build_install
	elif [ -n "$webui" ]; then
		build_source
	else
		build_module
	fi
	end=$(now)
	exec {lock}>&-
	built_any=1
	echo "build.sh: $c $version: built $missing in $((end - start))s (modules $((fetched - start))s, compile $((end - fetched))s) -> $dir"
done
if [ $built_any = 1 ]; then
	echo "build.sh: done in $(($(now) - total_start))s"
fi
