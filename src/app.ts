import { openapi } from "@elysiajs/openapi";
import { Elysia } from "elysia";
import { GatewayError, internalError, invalidRequest, notFound } from "./errors.ts";
import type { Gateway } from "./gateway.ts";
import { adminRoutes } from "./routes/admin.ts";
import { completionRoutes } from "./routes/completions.ts";
import { healthRoutes, type Lifecycle } from "./routes/health.ts";
import { modelRoutes } from "./routes/models.ts";

/** Composes the HTTP surface. No I/O happens until a request arrives. */
export function createApp(gateway: Gateway, lifecycle: Lifecycle = { accepting: true }) {
	const { logger } = gateway.deps;
	return new Elysia()
		.use(
			openapi({
				path: "/swagger",
				provider: "swagger-ui",
				documentation: {
					info: {
						title: "token-rate-limiter",
						version: "0.1.0",
						description:
							"OpenAI-compatible gateway in front of vLLM that spends each caller's token budget per model (tokens per minute, hour and day, and concurrent requests). Errors follow OpenAI's shape.",
					},
					tags: [
						{ name: "OpenAI", description: "What the official OpenAI SDKs call." },
						{ name: "Seed API", description: "Paths of the original gateway, kept for its users." },
						{ name: "Admin", description: "Operator views." },
						{ name: "Operations", description: "Health, info and metrics." },
					],
				},
			}),
		)
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
