import { Elysia } from "elysia";
import type { GatewayConfig } from "./config/schema.ts";
import { GatewayError, internalError, invalidRequest, notFound } from "./errors.ts";
import type { Gateway } from "./gateway.ts";
import { requestIdOf } from "./request-id.ts";
import { adminRoutes } from "./routes/admin.ts";
import { completionRoutes } from "./routes/completions.ts";
import { docsRoutes } from "./routes/docs.ts";
import { healthRoutes, type Lifecycle } from "./routes/health.ts";
import { modelRoutes } from "./routes/models.ts";
import { selfRoutes } from "./routes/self.ts";
import { VERSION } from "./version.ts";

/** Composes the HTTP surface. No I/O happens until a request arrives. */
export function createApp(gateway: Gateway, lifecycle: Lifecycle = { accepting: true }) {
	const { logger } = gateway.deps;
	return (
		new Elysia()
			.use(docsRoutes(VERSION))
			// Every response names its request, errors and operations endpoints included.
			.onRequest(({ request, set }) => {
				set.headers["x-request-id"] = requestIdOf(request);
			})
			.onError(({ code, error, request }) => {
				const id = { "x-request-id": requestIdOf(request) };
				if (error instanceof GatewayError) return error.toResponse(id);
				if (code === "NOT_FOUND") return notFound(new URL(request.url).pathname).toResponse(id);
				if (code === "PARSE") {
					return invalidRequest(
						"The request body could not be parsed.",
						null,
						"invalid_json",
					).toResponse(id);
				}
				if (code === "VALIDATION") {
					const message = error instanceof Error ? error.message.slice(0, 500) : "Invalid request.";
					return invalidRequest(message).toResponse(id);
				}
				logger.error("unhandled error", {
					code: String(code),
					error: error instanceof Error ? (error.stack ?? error.message) : String(error),
				});
				return internalError().toResponse(id);
			})
			.use(completionRoutes(gateway))
			.use(modelRoutes(gateway))
			.use(adminRoutes(gateway))
			.use(selfRoutes(gateway))
			.use(healthRoutes(gateway, lifecycle))
	);
}

export type App = ReturnType<typeof createApp>;

/**
 * Bun server options for the gateway. Bun's own body cap would answer an
 * oversized body with a bare 413 before the gateway sees it, so it is set far
 * above `server.max-body-bytes`: the gateway refuses first, in OpenAI's shape,
 * reading no further than the limit. Idle connections are kept as long as Bun
 * allows, since generations can be quiet for a long time.
 */
export function serveOptions(
	config: GatewayConfig,
	overrides: { hostname?: string; port?: number } = {},
) {
	return {
		hostname: overrides.hostname ?? config.server.host,
		port: overrides.port ?? config.server.port,
		maxRequestBodySize: Math.max(1024 ** 3, config.server.maxBodyBytes * 2),
		idleTimeout: 255,
	};
}
