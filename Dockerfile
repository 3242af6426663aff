# token-rate-limiter: the gateway compiled to one self-contained binary
# (`bun run build`: bun build --compile, with the token counter's rank data and the Swagger
# UI assets embedded) on a small Debian base.
#
#   docker build -t token-rate-limiter:0.1.0 .
#   docker run -p 8080:8080 -v "$PWD/config/prod.yaml:/etc/token-rate-limiter/application.yaml:ro" \
#     token-rate-limiter:0.1.0
#
# Configuration: the file at $TRL_CONFIG (default below), or `--config <file>`
# as arguments; ${NAME} placeholders in it come from the environment.

ARG BUN_VERSION=1.4.5

# --- build ------------------------------------------------------------------
FROM oven/bun:${BUN_VERSION} AS build
WORKDIR /src
# Dependencies first, so a source change reuses this layer. Production only:
# the compiled binary embeds what the gateway imports, and devDependencies
# (tests, lint, benchmarks) are not among them.
COPY package.json bun.lock ./
RUN bun install --frozen-lockfile --production
COPY tsconfig.json ./
COPY src ./src
# The token counter (built from wasm/src, committed) and the built-in encodings' ranks,
# embedded in the binary.
COPY wasm/counter.wasm ./wasm/counter.wasm
COPY wasm/ranks ./wasm/ranks
RUN bun run build

# --- runtime ----------------------------------------------------------------
# debian:bookworm-slim rather than distroless: the HEALTHCHECK needs something
# to run, and bash (always present in Debian) can make the HTTP request itself
# through /dev/tcp (docker/healthcheck.sh), so no curl, no package installs.
# The binary needs only glibc. No init process: the gateway handles SIGTERM
# (drain) itself and starts no children.
FROM debian:bookworm-slim
# A fixed numeric non-root user (65532, as distroless's "nonroot"), so
# Kubernetes' runAsNonRoot can verify it.
RUN groupadd --gid 65532 nonroot \
	&& useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin nonroot
# Owned by root and read-only for the gateway's user.
COPY --from=build --chmod=0555 /src/dist/token-rate-limiter /usr/local/bin/token-rate-limiter
COPY --chmod=0555 docker/healthcheck.sh /usr/local/bin/healthcheck
ENV TRL_CONFIG=/etc/token-rate-limiter/application.yaml
# The JavaScript heap grows with the RAM the runtime thinks it has (the whole
# node's, not the container's limit). Sized as for 256 MiB, the gateway peaks
# near 170 MB under full load instead of 260-290 MB, at no measured CPU cost
# (perf/RESULTS.md, "Memory"). Raise it with the container's memory limit.
ENV BUN_JSC_forceRAMSize=268435456
USER 65532:65532
EXPOSE 8080
# Liveness of the process (/health/live). Set HEALTHCHECK_PORT when server.port
# is not 8080. Kubernetes ignores this and uses the Deployment's probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
	CMD ["/usr/local/bin/healthcheck"]
ENTRYPOINT ["/usr/local/bin/token-rate-limiter"]
