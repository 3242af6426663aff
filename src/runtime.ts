import { CircuitState } from "cockatiel";
import type { Authenticator } from "./auth/authenticator.ts";
import type { KeyRegistry } from "./auth/key-registry.ts";
import type { Principal } from "./auth/principal.ts";
import type { PipelineContext } from "./completion/context.ts";
import type { Flight } from "./completion/exchange.ts";
import { type Stage, StageSampler, type StageSink } from "./completion/stages.ts";
import type { GatewayConfig, ModelConfig } from "./config/schema.ts";
import type { Spender, TokenLimiter } from "./limits/limiter.ts";
import type { Overrides } from "./limits/overrides.ts";
import type { LimitPolicy } from "./limits/policy.ts";
import type { Logger } from "./log.ts";
import type { Metrics, UpstreamView } from "./metrics.ts";
import type { SettingsWatcher } from "./settings.ts";
import type { CalibrationView, Calibrator } from "./tokens/calibration.ts";
import { TokenCounters } from "./tokens/counter.ts";
import { DEFAULT_BREAKER, ReplicaPool } from "./upstream/pool.ts";

const UNCALIBRATED: CalibrationView = {
	enabled: false,
	direction: "up",
	template: "openai",
	ratio: 1,
	source: "none",
	learnedRatio: 1,
	samples: 0,
	pinned: null,
	configRatio: null,
};

/** One request in this many has its stages timed (gateway_stage_seconds). */
export const STAGE_SAMPLE_EVERY = 64;

export interface RuntimeDeps {
	readonly config: GatewayConfig;
	readonly auth: Authenticator;
	readonly keys: KeyRegistry;
	readonly overrides: Overrides;
	/** Whose windows and concurrency limits a request spends. */
	readonly policy: LimitPolicy;
	readonly watcher: SettingsWatcher;
	readonly limiter: TokenLimiter;
	readonly counters: TokenCounters;
	/** Learns and applies each model's prompt-estimate calibration. */
	readonly calibrator: Calibrator;
	readonly pools: ReadonlyMap<string, ReplicaPool>;
	readonly metrics: Metrics;
	readonly logger: Logger;
}

/**
 * The gateway's runtime: the live configuration (models, limits, replica pools,
 * tokenizers) and the book of admitted requests. Reload replaces the
 * configuration for new requests; drain lets the admitted ones finish. The
 * request path itself is the pipeline in src/completion/.
 */
export class Runtime implements PipelineContext {
	/** What a configuration reload replaces: models, their limits, upstreams and tokenizers. */
	private live: {
		config: GatewayConfig;
		pools: ReadonlyMap<string, ReplicaPool>;
		counters: TokenCounters;
	};

	/** Admitted requests not yet settled. */
	private readonly flights = new Set<Flight>();
	private idleWaiters: (() => void)[] = [];
	private isDraining = false;
	readonly stages: StageSampler;
	readonly stageSink: StageSink;

	constructor(
		readonly deps: RuntimeDeps,
		options: { stageSampleEvery?: number } = {},
	) {
		this.live = { config: deps.config, pools: deps.pools, counters: deps.counters };
		deps.metrics.setLimits(deps.config.models.values());
		deps.metrics.watchUpstreams(() => upstreamViews(this.live.pools));
		this.stages = new StageSampler(options.stageSampleEvery ?? STAGE_SAMPLE_EVERY);
		const stageSeconds = deps.metrics.stageSeconds;
		const byStage = new Map<Stage, { observe(v: number): void }>();
		this.stageSink = (stage, seconds) => {
			let h = byStage.get(stage);
			if (h === undefined) {
				h = stageSeconds.bind({ stage });
				byStage.set(stage, h);
			}
			h.observe(seconds);
		};
	}

	// --- What the pipeline reads ------------------------------------------------

	/** The configuration in force (it changes on reload). */
	get config(): GatewayConfig {
		return this.live.config;
	}

	get pools(): ReadonlyMap<string, ReplicaPool> {
		return this.live.pools;
	}

	/** Every model's tokenizer and chat framing in force. */
	get counters(): TokenCounters {
		return this.live.counters;
	}

	get metrics(): Metrics {
		return this.deps.metrics;
	}

	get logger(): Logger {
		return this.deps.logger;
	}

	get limiter(): TokenLimiter {
		return this.deps.limiter;
	}

	get calibrator(): Calibrator {
		return this.deps.calibrator;
	}

	get draining(): boolean {
		return this.isDraining;
	}

	authenticate(request: Request): Promise<Principal> {
		return this.deps.auth.authenticate(request);
	}

	/** Whose windows a caller's request to `model` spends: the one policy's answer. */
	spenderFor(model: ModelConfig, principal: Principal): Spender {
		return this.deps.policy.spenderFor(model, principal);
	}

	/** A model's calibration (a model just added by a reload starts uncalibrated). */
	calibration(model: string): CalibrationView {
		return this.deps.calibrator.view(model) ?? UNCALIBRATED;
	}

	// --- The book of admitted requests --------------------------------------------

	takeOff(flight: Flight): void {
		this.flights.add(flight);
	}

	async landing(flight: Flight, settlement: Promise<void>): Promise<void> {
		try {
			await settlement;
		} finally {
			this.flights.delete(flight);
			if (this.flights.size === 0 && this.idleWaiters.length > 0) {
				const waiters = this.idleWaiters;
				this.idleWaiters = [];
				for (const resolve of waiters) resolve();
			}
		}
	}

	/** Requests admitted and not yet settled. */
	get inFlight(): number {
		return this.flights.size;
	}

	/**
	 * Resolves once every admitted request has been settled (its reservation
	 * finished in the store, its slot released, its log line written): at once
	 * when none is in flight.
	 */
	settled(): Promise<void> {
		if (this.flights.size === 0) return Promise.resolve();
		return new Promise((resolve) => this.idleWaiters.push(resolve));
	}

	// --- Lifecycle ------------------------------------------------------------------

	/**
	 * Graceful shutdown: refuse new requests (503, so a load balancer retries
	 * elsewhere), let in-flight ones finish for up to `drainMs`, then cut the rest;
	 * each is settled (what was generated is charged) and its slot released.
	 */
	async drain(drainMs: number): Promise<void> {
		this.isDraining = true;
		// Requests waiting for a slot are answered 503 shutting_down at once.
		this.deps.limiter.closeQueues();
		const { logger } = this.deps;
		logger.info("draining", { inFlight: this.flights.size, drainMs });
		if (!(await this.settledWithin(drainMs))) {
			logger.warn("drain time over; cutting in-flight requests", { inFlight: this.flights.size });
			for (const flight of this.flights) flight.call.drain();
			await this.settledWithin(5000);
		}
	}

	/** Whether every admitted request was settled within `ms`. */
	private async settledWithin(ms: number): Promise<boolean> {
		if (this.flights.size === 0) return true;
		let timer: ReturnType<typeof setTimeout> | undefined;
		const timeUp = new Promise<false>((resolve) => {
			timer = setTimeout(() => resolve(false), ms);
		});
		const done = await Promise.race([this.settled().then(() => true as const), timeUp]);
		clearTimeout(timer);
		return done;
	}

	/**
	 * Puts a validated configuration in force for new requests: models, limits,
	 * upstreams, tokenizers. Requests in flight finish on what they started with.
	 * Returns the changed settings that only a restart applies.
	 */
	async reload(next: GatewayConfig): Promise<string[]> {
		const counters = await TokenCounters.load(next.models.values(), this.live.counters);
		const pools = new Map<string, ReplicaPool>();
		for (const m of next.models.values()) {
			const old = this.live.pools.get(m.id);
			const same =
				old !== undefined && old.replicas.map((r) => r.url).join(",") === m.upstreamUrls.join(",");
			if (same && old !== undefined) {
				// Kept, with the reloaded probe and polling intervals.
				old.startHealthChecks(next.healthCheckMs);
				old.startLoadPolling(next.loadPollMs);
				pools.set(m.id, old);
			} else {
				pools.set(m.id, startPool(m, next, this.deps.logger));
			}
		}
		for (const [id, old] of this.live.pools) if (pools.get(id) !== old) old.stopHealthChecks();
		const prev = this.live.config;
		const restart: string[] = [];
		if (next.server.port !== prev.server.port || next.server.host !== prev.server.host)
			restart.push("server.host/port");
		if (next.store !== prev.store || JSON.stringify(next.redis) !== JSON.stringify(prev.redis)) {
			restart.push("store and spring.data.redis / redis");
		}
		if (
			JSON.stringify([...next.auth.modes, next.auth.apiKeys, next.auth.jwt]) !==
			JSON.stringify([...prev.auth.modes, prev.auth.apiKeys, prev.auth.jwt])
		) {
			restart.push("auth");
		}
		if (next.metrics.perUserLabels !== prev.metrics.perUserLabels) {
			restart.push("metrics.per-user-labels");
		}
		this.live = { config: next, pools, counters };
		this.deps.calibrator.configure(
			[...next.models.values()].map((m) => {
				const { key, template } = counters.identity(m.id);
				return { ...m, tokenizer: { key }, template };
			}),
		);
		this.deps.metrics.setLimits(next.models.values());
		return restart;
	}
}

/**
 * A model's replica pool with its probes and polling started; each change of a
 * replica (breaker, /health) is logged once: a warning when it goes, info when
 * it comes back.
 */
export function startPool(model: ModelConfig, config: GatewayConfig, logger: Logger): ReplicaPool {
	const pool = new ReplicaPool(model.upstreamUrls, DEFAULT_BREAKER, (url, change, detail) =>
		logger.log(
			change === "breaker closed" || change.startsWith("back in") ? "info" : "warn",
			"upstream replica",
			{ model: model.id, url, change, ...(detail === undefined ? {} : { detail }) },
		),
	);
	pool.startHealthChecks(config.healthCheckMs);
	pool.startLoadPolling(config.loadPollMs);
	return pool;
}

/** Each replica's state, for the upstream gauges. */
function* upstreamViews(pools: ReadonlyMap<string, ReplicaPool>): Iterable<UpstreamView> {
	for (const [model, pool] of pools) {
		for (const r of pool.replicas) {
			const state = r.breaker.state;
			yield {
				model,
				replica: r.url,
				breaker: state === CircuitState.Closed ? 0 : state === CircuitState.HalfOpen ? 1 : 2,
				up: !pool.isTakenOut(r),
				inFlight: r.inFlight,
				waiting: pool.waiting(r),
				kvCacheUsage: pool.waiting(r) === undefined ? undefined : r.load?.kvCacheUsage,
			};
		}
	}
}
