#!/usr/bin/env bash
# Deploys token-rate-limiter to the current kubectl context with kustomize and
# waits until the rollout is done.
#
#   scripts/deploy-k8s.sh [<overlay>] [--timeout <duration>]
#
# <overlay>: dev or prod (k8s/overlays/<name>), or the path of a kustomization
# directory. Without one, k8s/ itself: the whole stack with its example Secret,
# as the original gateway's `./scripts/deploy-k8s.sh` deployed everything;
# refused when the Secret already exists (a real deployment: name the overlay).
# --timeout: how long to wait for the rollout (default 300s).
# NAMESPACE: the namespace the overlay deploys to (default model-serving).
#
# Runs `kubectl apply -k <overlay>`, checks that the Secret the pods read
# exists (prod ships none: see README, Deployment), then
# `kubectl rollout status` for the gateway and, when the overlay has it, the
# in-cluster Redis. Exits non-zero when any step fails.
set -euo pipefail

root="$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)"
namespace="${NAMESPACE:-model-serving}"
timeout=300s
gateway=token-rate-limiter
secret=token-rate-limiter-secrets

usage() {
	echo "usage: scripts/deploy-k8s.sh [dev|prod|kustomization dir] [--timeout <duration>]" >&2
	echo "overlays in k8s/overlays:" "$(cd "${root}/k8s/overlays" && echo *)" >&2
	exit 2
}

overlay=""
while [[ $# -gt 0 ]]; do
	case "$1" in
	--timeout)
		[[ $# -ge 2 ]] || usage
		timeout="$2"
		shift 2
		;;
	--timeout=*)
		timeout="${1#--timeout=}"
		shift
		;;
	-h | --help) usage ;;
	-*)
		echo "unknown option: $1" >&2
		usage
		;;
	*)
		[[ -z "${overlay}" ]] || usage
		overlay="$1"
		shift
		;;
	esac
done
if [[ -z "${overlay}" ]]; then
	echo "== no overlay given: deploying k8s/ (the whole stack, with its example Secret); use dev or prod for an overlay"
	dir="${root}/k8s"
elif [[ -d "${root}/k8s/overlays/${overlay}" ]]; then
	dir="${root}/k8s/overlays/${overlay}"
elif [[ -d "${overlay}" ]]; then
	dir="${overlay}"
else
	echo "no such overlay: ${overlay}" >&2
	usage
fi
if [[ ! -f "${dir}/kustomization.yaml" ]]; then
	echo "not a kustomization directory (no kustomization.yaml): ${dir}" >&2
	exit 2
fi

if ! command -v kubectl >/dev/null 2>&1; then
	echo "kubectl not found; install: apt-get install kubernetes-client (or https://kubernetes.io/docs/tasks/tools/)" >&2
	exit 127
fi

context="$(kubectl config current-context 2>/dev/null || echo "(none)")"
# The whole stack carries an example Secret: never over a real one.
if [[ -z "${overlay}" ]] && kubectl -n "${namespace}" get secret "${secret}" >/dev/null 2>&1; then
	echo "Secret ${namespace}/${secret} exists (context ${context}): this looks like a real deployment," >&2
	echo "and k8s/ would replace it with its example. Name the overlay instead: scripts/deploy-k8s.sh prod" >&2
	exit 2
fi
echo "== kubectl apply -k ${dir} (context ${context})"
# Shown as it happens, and kept to see what was applied; a failure still stops here.
applied_log="$(mktemp)"
trap 'rm -f "${applied_log}"' EXIT
if ! kubectl apply -k "${dir}" | tee "${applied_log}"; then
	echo "kubectl apply -k ${dir} failed (the objects listed above were applied)." >&2
	exit 1
fi
applied="$(cat "${applied_log}")"

if ! kubectl -n "${namespace}" get secret "${secret}" >/dev/null 2>&1; then
	echo "Secret ${namespace}/${secret} does not exist: the gateway pods cannot start until it does." >&2
	echo "Create it as README.md (Deployment, step 3) shows, then run this script again." >&2
	exit 1
fi

echo "== waiting for the rollout (timeout ${timeout})"
if [[ "${applied}" == *"statefulset.apps/redis "* ]]; then
	kubectl -n "${namespace}" rollout status statefulset/redis --timeout="${timeout}"
fi
kubectl -n "${namespace}" rollout status "deployment/${gateway}" --timeout="${timeout}"
echo "== deployed: kubectl -n ${namespace} get pods -l app.kubernetes.io/name=${gateway}"
