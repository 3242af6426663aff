import { Elysia } from "elysia";
import { GatewayError, internalError, invalidRequest, notFound } from "./errors.ts";
import type { Gateway } from "./gateway.ts";
import { adminRoutes } from "./routes/admin.ts";
import { completionRoutes } from "./routes/completions.ts";
import { docsRoutes } from "./routes/docs.ts";
import { healthRoutes, type Lifecycle } from "./routes/health.ts";
import { modelRoutes } from "./routes/models.ts";
import { VERSION } from "./version.ts";

/** Composes the HTTP surface. No I/O happens until a request arrives. */
export function createApp(gateway: Gateway, lifecycle: Lifecycle = { accepting: true }) {
	const { logger } = gateway.deps;
	return new Elysia()
		.use(docsRoutes(VERSION))
		.onError(({ code, error, request }) => {
			if (error instanceof GatewayError) return error.toResponse();
			if (code === "NOT_FOUND") return notFound(new URL(request.url).pathname).toResponse();
			if (code === "PARSE")
				return invalidRequest(
					"The request body could not be parsed.",
					null,
					"invalid_json",
				).toResponse();
			if (code === "VALIDATION") {
				return invalidRequest(
					error instanceof Error ? error.message.slice(0, 500) : "Invalid request.",
				).toResponse();
			}
			logger.error("unhandled error", {
				code: String(code),
				error: error instanceof Error ? (error.stack ?? error.message) : String(error),
			});
			return internalError().toResponse();
		})
		.use(completionRoutes(gateway))
		.use(modelRoutes(gateway))
		.use(adminRoutes(gateway))
		.use(healthRoutes(gateway, lifecycle));
}

export type App = ReturnType<typeof createApp>;
