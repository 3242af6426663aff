import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/**
 * One prom-client Registry and the instruments the gateway reports, under the
 * seed's metric names.
 */
export class Metrics {
	readonly registry = new Registry();

	readonly tokenUsage = new Counter({
		name: "token_usage_total",
		help: "Tokens used, as reported by the model server (or counted when it reports none).",
		labelNames: ["model", "type"] as const,
		registers: [this.registry],
	});

	readonly rateLimitExceeded = new Counter({
		name: "token_rate_limit_exceeded_total",
		help: "Requests refused by a limit.",
		labelNames: ["model", "window", "scope", "reason"] as const,
		registers: [this.registry],
	});

	readonly requestDuration = new Histogram({
		name: "model_request_duration_seconds",
		help: "Time from request to the last byte of the response, by model, status class and streaming.",
		labelNames: ["model", "status", "stream"] as const,
		// LLM calls run from tens of milliseconds (cached, short) to minutes (long generations).
		buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
		registers: [this.registry],
	});

	readonly concurrentRequests = new Gauge({
		name: "token_concurrent_requests",
		help: "Requests in flight through this gateway, by model.",
		labelNames: ["model"] as const,
		registers: [this.registry],
	});

	readonly usageFallback = new Counter({
		name: "token_usage_fallback_total",
		help: "Responses settled by counting the generated text because the model server reported no usage.",
		labelNames: ["model", "reason"] as const,
		registers: [this.registry],
	});

	readonly limiterFallback = new Counter({
		name: "token_limiter_fallback_total",
		help: "Limiter decisions taken by the failure policy because Redis did not answer.",
		labelNames: ["policy", "operation"] as const,
		registers: [this.registry],
	});

	readonly limiterStoreUp = new Gauge({
		name: "token_limiter_store_up",
		help: "1 while the shared limit store (Redis) answers, 0 while the failure policy is in force.",
		registers: [this.registry],
	});

	constructor(defaultMetrics = true) {
		if (defaultMetrics) collectDefaultMetrics({ register: this.registry });
	}
}
