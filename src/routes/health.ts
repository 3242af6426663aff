import { Elysia } from "elysia";
import { ResilientLimitStore } from "../limits/resilient-store.ts";
import type { Runtime } from "../runtime.ts";
import { VERSION } from "../version.ts";
import { HealthStatus, InfoBody } from "./schemas.ts";

export interface Lifecycle {
	/** False once the gateway is draining for shutdown. */
	accepting: boolean;
}

const METRICS_DOC = {
	description: "Prometheus text exposition format.",
	content: {
		"text/plain": {
			schema: { type: "string" as const },
			example:
				'# HELP token_usage_total Tokens used, as reported by the model server.\n# TYPE token_usage_total counter\ntoken_usage_total{model="llama2-7b",type="prompt"} 1234\n',
		},
	},
};

/** Liveness, readiness, the seed's actuator endpoints and Prometheus metrics. */
export function healthRoutes(runtime: Runtime, lifecycle: Lifecycle) {
	const { limiter, metrics } = runtime.deps;
	const readiness = async () => {
		const { store } = limiter;
		const storeUp = await store.ping().catch(() => false);
		const up = storeUp && lifecycle.accepting;
		// Serving without Redis under the open or local policy: ready, but not as configured.
		const degraded = store instanceof ResilientLimitStore && !store.redisUp && storeUp;
		return {
			up,
			body: {
				status: up ? ("UP" as const) : ("DOWN" as const),
				components: {
					store: degraded
						? {
								status: "DEGRADED",
								kind: store.kind,
								policy: store.failurePolicy,
								detail: `Redis is failing (${store.lastError ?? "unreachable"}); the ${store.failurePolicy} failure policy decides until it is back`,
							}
						: { status: storeUp ? "UP" : "DOWN", kind: store.kind },
					lifecycle: { status: lifecycle.accepting ? "UP" : "DRAINING" },
				},
			},
		};
	};
	const scrape = async () =>
		new Response(await metrics.registry.metrics(), {
			headers: { "content-type": metrics.registry.contentType },
		});
	return new Elysia()
		.get("/health/live", () => ({ status: "UP" as const }), {
			response: { 200: HealthStatus },
			detail: { tags: ["Operations"], summary: "Liveness: the process is serving" },
		})
		.get(
			"/health/ready",
			async ({ status }) => {
				const r = await readiness();
				return r.up ? r.body : status(503, r.body);
			},
			{
				response: { 200: HealthStatus, 503: HealthStatus },
				detail: {
					tags: ["Operations"],
					summary: "Readiness: the store answers and the gateway is not draining",
				},
			},
		)
		.get(
			"/actuator/health",
			async ({ status }) => {
				const r = await readiness();
				return r.up ? r.body : status(503, r.body);
			},
			{
				response: { 200: HealthStatus, 503: HealthStatus },
				detail: { tags: ["Operations"], summary: "Health (seed's Spring actuator path)" },
			},
		)
		.get(
			"/actuator/info",
			() => ({
				app: {
					name: "token-rate-limiter",
					version: VERSION,
					description: "OpenAI-compatible token-rate-limiting gateway for vLLM",
				},
				runtime: { bun: Bun.version },
				store: limiter.store.kind,
				models: [...runtime.config.models.keys()],
			}),
			{
				response: { 200: InfoBody },
				detail: {
					tags: ["Operations"],
					summary: "Build and runtime information (seed's actuator path)",
				},
			},
		)
		.get("/metrics", scrape, {
			detail: {
				tags: ["Operations"],
				summary: "Prometheus metrics",
				responses: { 200: METRICS_DOC },
			},
		})
		.get("/actuator/prometheus", scrape, {
			detail: {
				tags: ["Operations"],
				summary: "Prometheus metrics (seed's actuator path)",
				responses: { 200: METRICS_DOC },
			},
		});
}
