#!/usr/bin/env bash
# Checks this machine for what working on token-rate-limiter needs and says
# exactly what is missing and how to install it (Debian/Ubuntu package names).
# It installs nothing.
#
#   scripts/setup-dev-env.sh
#
# One line per tool: status (ok | missing | mismatch), need, name, detail:
#   required  to run the gateway (bun run start, bun run demo)
#   tests     for the test suite (bun test)
#   optional  for the Compose stack, load tests and benchmarks
# The last line sums up. Exit status 1 when a required or tests tool is
# missing, else 0 (a Bun version other than the pinned one is only reported).
set -euo pipefail

root="$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)"

# The pinned Bun version is the Dockerfile's (the image is built with it).
bun_pinned=""
while IFS= read -r line; do
	if [[ "${line}" == "ARG BUN_VERSION="* ]]; then
		bun_pinned="${line#ARG BUN_VERSION=}"
		break
	fi
done <"${root}/Dockerfile"

missing_needed=0
missing_optional=0
mismatches=0

# report STATUS NEED NAME DETAIL
report() {
	printf '%-9s%-10s%-16s%s\n' "$1" "$2" "$3" "$4"
	if [[ "$1" == "missing" ]]; then
		if [[ "$2" == "optional" ]]; then
			missing_optional=$((missing_optional + 1))
		else
			missing_needed=$((missing_needed + 1))
		fi
	elif [[ "$1" == "mismatch" ]]; then
		mismatches=$((mismatches + 1))
	fi
}

# check_command NEED NAME PURPOSE INSTALL: a command on PATH.
check_command() {
	local path
	if path="$(command -v "$2")"; then
		report ok "$1" "$2" "${path}"
	else
		report missing "$1" "$2" "$3; install: $4"
	fi
}

# Bun, at the pinned version.
if bun_path="$(command -v bun)"; then
	bun_version="$(bun --version 2>/dev/null || echo unknown)"
	if [[ -z "${bun_pinned}" || "${bun_version}" == "${bun_pinned}" ]]; then
		report ok required bun "${bun_version} at ${bun_path}"
	else
		report mismatch required bun "${bun_version} at ${bun_path}, the project pins ${bun_pinned}; install: npm install -g bun@${bun_pinned}"
	fi
else
	report missing required bun "runs the gateway and the tests; install: npm install -g bun@${bun_pinned:-latest} (or https://bun.sh)"
fi

# The project's npm dependencies.
# elysia is the gateway's; fast-check and openai are the tests' (devDependencies).
if [[ -d "${root}/node_modules/elysia" && -d "${root}/node_modules/fast-check" && -d "${root}/node_modules/openai" ]]; then
	report ok required dependencies "${root}/node_modules"
else
	report missing required dependencies "the npm packages of package.json; install: bun install"
fi

check_command tests redis-server "the Redis store tests start real Redis servers and a Cluster" "apt-get install redis-server"
check_command tests redis-cli "creates the test Redis Cluster" "apt-get install redis-tools"
check_command tests promtool "checks the alert rules and the Compose stack's Prometheus configuration" "apt-get install prometheus"
check_command tests shellcheck "checks the shell scripts" "apt-get install shellcheck"
check_command tests kubectl "renders the Kubernetes manifests (kubectl kustomize)" "apt-get install kubernetes-client"

# Playwright drives Debian's Chromium at this exact path in the Swagger UI test.
if [[ -x /usr/bin/chromium ]]; then
	report ok tests chromium /usr/bin/chromium
else
	report missing tests chromium "the Swagger UI browser test runs /usr/bin/chromium; install: apt-get install chromium"
fi

if ! docker_path="$(command -v docker)"; then
	report missing optional docker "builds the image and runs the Compose stack; install: https://docs.docker.com/engine/install/"
elif docker info >/dev/null 2>&1; then
	report ok optional docker "${docker_path} (engine answering)"
else
	report missing optional docker "the docker CLI is at ${docker_path}, but no Docker Engine answers (docker info failed); the image and the Compose stack need one; install: https://docs.docker.com/engine/install/"
fi
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
	report ok optional docker-compose "docker compose (plugin)"
elif path="$(command -v docker-compose)"; then
	report ok optional docker-compose "${path}"
else
	report missing optional docker-compose "runs docker-compose.yml; install: apt-get install docker-compose-plugin (Docker's apt repository) or docker-compose"
fi
check_command optional k6 "runs the load tests in perf/k6 (scripts/load-test.sh)" "https://grafana.com/docs/k6/latest/set-up/install-k6/"
check_command optional wrk "drives bun run bench" "apt-get install wrk"
check_command optional openssl "makes API keys (openssl rand)" "apt-get install openssl"

summary="summary: ${missing_needed} required or tests tool(s) missing, ${missing_optional} optional missing"
if [[ "${mismatches}" -gt 0 ]]; then
	summary="${summary}, ${mismatches} version mismatch(es)"
fi
echo "${summary}"
if [[ "${missing_needed}" -gt 0 ]]; then
	exit 1
fi
