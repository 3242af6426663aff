#!/usr/bin/env bash
# Runs one of the k6 scripts in perf/k6 against a gateway.
#
#   scripts/load-test.sh <base-url> [smoke|load|stress|streaming|rate-limit|<file.ts>] [k6 run options...]
#
#   scripts/load-test.sh http://localhost:8080                       # smoke test
#   API_KEY=$KEY scripts/load-test.sh https://gateway.example load -e TARGET_RPS=2000 -e HOLD=10m
#
# The script's settings (TARGET_RPS, USERS, MODEL, P95_MS, ...; README, Load
# testing with k6) are passed as `-e NAME=value`. API_KEY is read by k6 from the
# environment, so the key does not show in the process list. k6 exits 99 when
# a threshold failed, and this script with it.
set -euo pipefail

root="$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)"

usage() {
	echo "usage: scripts/load-test.sh <base-url> [smoke|load|stress|streaming|rate-limit|<file.ts>] [k6 run options...]" >&2
	exit 2
}

[[ $# -ge 1 ]] || usage
case "$1" in
http://* | https://*) base_url="${1%/}" ;;
*)
	echo "not an http(s) URL: $1" >&2
	usage
	;;
esac
shift

name="smoke"
if [[ $# -ge 1 && "$1" != -* ]]; then
	name="$1"
	shift
fi
if [[ "${name}" != lib && -f "${root}/perf/k6/${name}.ts" ]]; then
	script="${root}/perf/k6/${name}.ts"
elif [[ "${name}" == *.ts && -f "${name}" ]]; then
	script="${name}"
else
	echo "no such k6 script: ${name} (perf/k6 has: $(cd "${root}/perf/k6" && echo smoke load stress streaming rate-limit))" >&2
	exit 2
fi

if ! command -v k6 >/dev/null 2>&1; then
	echo "k6 not found; install it: https://grafana.com/docs/k6/latest/set-up/install-k6/ (or run the grafana/k6 image)" >&2
	exit 127
fi

# k6 runs TypeScript natively from 0.57; 0.52 to 0.56 need the experimental mode.
version="$(k6 version)"
version="${version#k6 v}"
version="${version%% *}"
IFS=. read -r major minor _ <<<"${version}"
compat=()
if [[ ! "${major}" =~ ^[0-9]+$ || ! "${minor}" =~ ^[0-9]+$ ]]; then
	echo "could not read the k6 version from \`k6 version\`; assuming it runs TypeScript" >&2
elif [[ "${major}" -eq 0 && "${minor}" -lt 52 ]]; then
	echo "k6 ${version} cannot run TypeScript: install 0.57 or later" >&2
	exit 1
elif [[ "${major}" -eq 0 && "${minor}" -lt 57 ]]; then
	compat=(--compatibility-mode=experimental_enhanced)
fi

echo "== k6 run ${script#"${root}"/} against ${base_url}"
exec k6 run "${compat[@]}" -e "BASE_URL=${base_url}" "$@" "${script}"
