#!/bin/bash
# The image's HEALTHCHECK: GET /health/live on the gateway's port and succeed on
# a 200. Written for bash's /dev/tcp so the image needs no curl or wget.
# HEALTHCHECK_PORT: the gateway's port when it is not 8080; else SERVER_PORT or
# PORT, which the gateway itself listens on when set.
set -euo pipefail
port="${HEALTHCHECK_PORT:-${SERVER_PORT:-${PORT:-8080}}}"
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 2 status <&3
[[ "${status}" == "HTTP/1.1 200"* ]]
