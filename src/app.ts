import { ValueErrorType } from "@sinclair/typebox/errors";
import { Elysia, ValidationError } from "elysia";
import type { GatewayConfig } from "./config/schema.ts";
import { GatewayError, internalError, invalidRequest, notFound } from "./errors.ts";
import { requestIdOf } from "./request-id.ts";
import { adminRoutes } from "./routes/admin.ts";
import { completionRoutes } from "./routes/completions.ts";
import { docsRoutes } from "./routes/docs.ts";
import { healthRoutes, type Lifecycle } from "./routes/health.ts";
import { modelRoutes } from "./routes/models.ts";
import { selfRoutes } from "./routes/self.ts";
import type { Runtime } from "./runtime.ts";
import { VERSION } from "./version.ts";

/** Composes the HTTP surface. No I/O happens until a request arrives. */
export function createApp(runtime: Runtime, lifecycle: Lifecycle = { accepting: true }) {
	const { logger } = runtime.deps;
	return (
		new Elysia()
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
				if (code === "VALIDATION") return validationError(error).toResponse(id);
				logger.error("unhandled error", {
					code: String(code),
					error: error instanceof Error ? (error.stack ?? error.message) : String(error),
				});
				return internalError().toResponse(id);
			})
			// The completions name their request on every answer themselves, so their
			// responses pass through untouched (a header set here makes Elysia copy each one).
			.use(completionRoutes(runtime))
			// Every other response names its request too, operations endpoints included.
			.onBeforeHandle(({ request, set }) => {
				set.headers["x-request-id"] = requestIdOf(request);
			})
			.use(docsRoutes(VERSION))
			.use(modelRoutes(runtime))
			.use(adminRoutes(runtime))
			.use(selfRoutes(runtime))
			.use(healthRoutes(runtime, lifecycle))
	);
}

export type App = ReturnType<typeof createApp>;

/** Elysia's validation failure (admin bodies, path parameters) as a clean OpenAI 400 naming the field. */
function validationError(error: unknown) {
	const first = error instanceof ValidationError ? error.valueError : undefined;
	if (first === undefined) return invalidRequest("Invalid request.", null, "invalid_value");
	const param = first.path.replace(/^\//, "").replaceAll("/", ".") || null;
	if (first.type === ValueErrorType.ObjectAdditionalProperties) {
		return invalidRequest(
			`Unknown parameter${param === null ? "" : `: '${param}'`}.`,
			param,
			"unknown_parameter",
		);
	}
	if (first.type === ValueErrorType.ObjectMinProperties) {
		return invalidRequest(
			"Give at least one limit: max-tokens-per-minute, max-tokens-per-hour, max-tokens-per-day, max-requests-per-minute or max-concurrent-requests.",
			param,
			"missing_required_parameter",
		);
	}
	if (first.type === ValueErrorType.ObjectRequiredProperty) {
		return invalidRequest(
			`Missing required parameter: '${param ?? ""}'.`,
			param,
			"missing_required_parameter",
		);
	}
	const got = JSON.stringify(first.value)?.slice(0, 60) ?? "nothing";
	const schema = first.schema as {
		type?: string;
		minimum?: number;
		anyOf?: { type?: string; minimum?: number }[];
	};
	const integer =
		schema.type === "integer" ? schema : schema.anyOf?.find((s) => s.type === "integer");
	if (integer?.minimum !== undefined) {
		return invalidRequest(
			`Invalid value${param === null ? "" : ` for '${param}'`}: expected an integer >= ${integer.minimum}, got ${got}.`,
			param,
			"invalid_value",
		);
	}
	return invalidRequest(
		`Invalid value${param === null ? "" : ` for '${param}'`}: ${first.message.toLowerCase()}, got ${got}.`,
		param,
		"invalid_value",
	);
}

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
		// A second gateway on a port already in use must fail to start, not share it.
		reusePort: false,
		idleTimeout: 255,
	};
}
