import type { GatewayConfig } from "./config/schema.ts";
import { Gateway } from "./gateway.ts";
import { LocalConcurrencyLimiter } from "./limits/concurrency.ts";
import { TokenLimiter } from "./limits/limiter.ts";
import { MemoryLimitStore } from "./limits/memory-store.ts";
import type { ClockUs, LimitStore } from "./limits/store.ts";
import { Logger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { TokenCounters } from "./tokens/counter.ts";
import { ReplicaPool } from "./upstream/pool.ts";

export interface BuildOptions {
	readonly clock?: ClockUs;
	readonly store?: LimitStore;
	readonly logger?: Logger;
	readonly metrics?: Metrics;
}

/** Builds every dependency of the gateway from a validated configuration. */
export async function buildGateway(
	config: GatewayConfig,
	options: BuildOptions = {},
): Promise<Gateway> {
	const logger = options.logger ?? new Logger(config.logLevel);
	const metrics = options.metrics ?? new Metrics();
	const store = options.store ?? new MemoryLimitStore(options.clock);
	const limiter = new TokenLimiter(store, new LocalConcurrencyLimiter(), (model, r) => {
		metrics.rateLimitExceeded.labels(model, r.window, r.scope, r.reason).inc();
	});
	const counters = await TokenCounters.load([...config.models.values()].map((m) => m.tokenizer));
	const pools = new Map(
		[...config.models.values()].map((m) => [m.id, new ReplicaPool(m.upstreamUrls)]),
	);
	return new Gateway({ config, limiter, counters, pools, metrics, logger });
}
