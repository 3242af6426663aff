import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { type ModelConfig, windowLabel } from "./config/schema.ts";
import { BoundHistogram, type Observer, Tally } from "./metrics-bound.ts";

/** What the upstream gauges read at scrape time: each model's replicas. */
export interface UpstreamView {
	readonly model: string;
	readonly replica: string;
	/** 0 closed, 1 half-open, 2 open. */
	readonly breaker: 0 | 1 | 2;
	/** False while `/health` fails (the replica is taken out). */
	readonly up: boolean;
	readonly inFlight: number;
	/** The server's queue and KV-cache use, when load polling has a fresh reading. */
	readonly waiting: number | undefined;
	readonly kvCacheUsage: number | undefined;
}

/** One model's per-request instruments (see `Metrics.forModel`). */
export interface ModelInstruments {
	readonly concurrent: { inc(): void; dec(): void };
	readonly reserved: { inc(n: number): void };
	readonly settled: { inc(n: number): void };
	readonly prompt: { inc(n: number): void };
	readonly completion: { inc(n: number): void };
	readonly timeToFirstToken: { observe(v: number): void };
	readonly estimateError: { observe(v: number): void };
	/** The request duration histogram of a status (its class is the label) and stream flag. */
	duration(status: number, stream: boolean): Observer;
}

export interface MetricsOptions {
	/** Process metrics (CPU, memory, event loop lag, GC) from prom-client. */
	readonly defaultMetrics?: boolean;
	/**
	 * Adds `token_user_usage_total` and `token_user_rate_limit_exceeded_total`
	 * with a `user` label. One series per user and model: off unless asked for.
	 */
	readonly perUserLabels?: boolean;
}

/**
 * One prom-client Registry and the instruments the gateway reports: the seed's
 * four metrics under their names and labels, and what operators of a token
 * gateway need beyond them.
 */
export class Metrics {
	readonly registry = new Registry();
	readonly perUserLabels: boolean;
	/** Per-user series; undefined unless `perUserLabels`. */
	readonly userUsage: Counter<"model" | "user" | "type"> | undefined;
	readonly userRateLimited: Counter<"model" | "user"> | undefined;

	// --- The seed's metrics ---------------------------------------------------

	readonly tokenUsage = new Counter({
		name: "token_usage_total",
		help: "Tokens used, as reported by the model server (or counted when it reports none).",
		labelNames: ["model", "type"] as const,
		registers: [this.registry],
		collect: () => this.flushTallies(),
	});

	readonly rateLimitExceeded = new Counter({
		name: "token_rate_limit_exceeded_total",
		help: "Requests refused by a limit, by the window (minute, hour, day, rpm, concurrent), scope (user, tenant, model, concurrency) and reason.",
		labelNames: ["model", "window", "scope", "reason"] as const,
		registers: [this.registry],
	});

	readonly requestDuration = new BoundHistogram({
		name: "model_request_duration_seconds",
		help: "Time from request to the last byte of the response of admitted requests, by model, status class and streaming.",
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
		collect: () => this.flushTallies(),
	});

	readonly queueDepth = new Gauge({
		name: "token_queue_depth",
		help: "Requests waiting on this replica for a concurrency slot of the model.",
		labelNames: ["model"] as const,
		registers: [this.registry],
	});

	readonly queueWait = new Histogram({
		name: "token_queue_wait_seconds",
		help: "How long requests waited for a concurrency slot, by how the wait ended: admitted, refused (a window, at the grant), timeout, disconnected, shutdown, error.",
		labelNames: ["model", "outcome"] as const,
		// From a slot's handoff (milliseconds) to max-queue-wait-ms (30 s by default).
		buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
		registers: [this.registry],
	});

	// --- Budget accounting ----------------------------------------------------

	readonly tokensReserved = new Counter({
		name: "token_reserved_total",
		help: "Tokens reserved at admission (prompt estimate plus the completion allowance).",
		labelNames: ["model"] as const,
		registers: [this.registry],
		collect: () => this.flushTallies(),
	});

	readonly tokensSettled = new Counter({
		name: "token_settled_total",
		help: "Tokens finally charged when requests ended; reserved minus settled was refunded.",
		labelNames: ["model"] as const,
		registers: [this.registry],
		collect: () => this.flushTallies(),
	});

	readonly estimateError = new BoundHistogram({
		name: "token_estimate_error_ratio",
		help: "Relative error of the pre-flight prompt estimate: model server's prompt_tokens / estimate - 1 (negative: the estimate was high).",
		labelNames: ["model"] as const,
		// Symmetric around 0; a tokenizer of another family is typically off by 15-50 %.
		buckets: [-0.5, -0.25, -0.1, -0.05, -0.02, 0, 0.02, 0.05, 0.1, 0.25, 0.5, 1],
		registers: [this.registry],
	});

	readonly calibrationRatio = new Gauge({
		name: "token_estimate_calibration_ratio",
		help: "Calibration of each model's prompt estimate: the model server's tokens per counted token, learned from its prompt_tokens (self-calibration; with direction up an estimate is never lowered below the plain count), pinned by an operator, or fixed in the configuration; 1 means none.",
		labelNames: ["model"] as const,
		registers: [this.registry],
	});

	readonly stageSeconds = new BoundHistogram({
		name: "gateway_stage_seconds",
		help: "CPU time of each stage of the completion pipeline (read, plan, admit, forward, respond, settle) for a sample of requests (one in 64): the stage's own work, waits for the network and the store left out.",
		labelNames: ["stage"] as const,
		// Stages cost microseconds; a long prompt's estimate or a slow log write can take milliseconds.
		buckets: [
			0.000001, 0.000002, 0.000004, 0.000008, 0.000016, 0.000032, 0.000064, 0.000128, 0.000256,
			0.001, 0.004, 0.016,
		],
		registers: [this.registry],
	});

	readonly refused = new Counter({
		name: "token_requests_refused_total",
		help: "Completion requests answered before anything was reserved, by the error's code: bad input, authentication, a limit, no model server to send to (upstream_unavailable, upstream_overloaded), shutting_down, the limit store away. Model is the configured id, or unknown.",
		labelNames: ["model", "status", "code"] as const,
		registers: [this.registry],
	});

	readonly upstreamShed = new Counter({
		name: "upstream_shed_total",
		help: "Requests refused (503 upstream_overloaded) because even the least loaded replica's queue reached vllm.shed-waiting-above.",
		labelNames: ["model"] as const,
		registers: [this.registry],
	});

	readonly exactCounts = new Counter({
		name: "token_exact_count_total",
		help: "Long prompts sent to the model server's /tokenize before admission (exact-count), by outcome: counted, or failed (the estimate was used).",
		labelNames: ["model", "outcome"] as const,
		registers: [this.registry],
	});

	readonly exactCountDuration = new Histogram({
		name: "token_exact_count_duration_seconds",
		help: "Time the model server's /tokenize took for a long prompt (added to the request's latency).",
		labelNames: ["model"] as const,
		// A tokenizer call: milliseconds normally, up to the configured timeout.
		buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
		registers: [this.registry],
	});

	readonly usageFallback = new Counter({
		name: "token_usage_fallback_total",
		help: "Responses settled by counting the generated text because the model server reported no usage.",
		labelNames: ["model", "reason"] as const,
		registers: [this.registry],
	});

	readonly limit = new Gauge({
		name: "token_limit",
		help: "Configured limit per model, scope (user, tenant, model) and window (minute, hour, day in tokens; rpm in requests; concurrent in requests).",
		labelNames: ["model", "scope", "window"] as const,
		registers: [this.registry],
	});

	readonly limitRemaining = new Gauge({
		name: "token_limit_remaining_ratio",
		help: "Remaining fraction (0-1) of the tightest window of each scope at this replica's last admission decision for the model; low values mean callers are close to their limits.",
		labelNames: ["model", "scope"] as const,
		registers: [this.registry],
		collect: () => {
			for (const [model, scopes] of this.pressure) {
				for (const [scope, remaining] of scopes)
					this.limitRemaining.set({ model, scope }, remaining);
			}
			this.pressure.clear();
		},
	});

	// --- Latency ----------------------------------------------------------------

	readonly timeToFirstToken = new BoundHistogram({
		name: "model_time_to_first_token_seconds",
		help: "Streaming requests: time from the request to the first event relayed to the client.",
		labelNames: ["model"] as const,
		// Prefill takes milliseconds for short prompts and seconds for long ones or a queued server.
		buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
		registers: [this.registry],
	});

	// --- The limit store ---------------------------------------------------------

	readonly storeDuration = new BoundHistogram({
		name: "token_limiter_store_duration_seconds",
		help: "Latency of limit store calls (one Redis script each): reserve at admission, settle at the end.",
		labelNames: ["operation"] as const,
		// Loopback Redis answers in ~0.1 ms; the default Redis timeout is 100 ms.
		buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
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
		help: "1 while the limit store answers (always, for the in-process memory store), 0 while Redis is away and the failure policy is in force.",
		registers: [this.registry],
	});

	// --- Upstreams (read at scrape time) -------------------------------------------

	private upstreams: () => Iterable<UpstreamView> = () => [];

	constructor(options: MetricsOptions = {}) {
		this.perUserLabels = options.perUserLabels === true;
		if (options.defaultMetrics !== false) {
			collectDefaultMetrics({ register: this.registry });
			// Gauges named like counters: Prometheus's naming rules (promtool check metrics) reject them.
			for (const name of [
				"nodejs_active_handles_total",
				"nodejs_active_requests_total",
				"nodejs_active_resources_total",
			]) {
				this.registry.removeSingleMetric(name);
			}
		}
		const view = () => this.upstreams();
		const perReplica: [string, string, (u: UpstreamView) => number | undefined][] = [
			[
				"upstream_breaker_state",
				"Circuit breaker of each model server replica: 0 closed, 1 half-open, 2 open.",
				(u) => u.breaker,
			],
			[
				"upstream_replica_up",
				"1 while a model server replica passes its /health probe, 0 while it is taken out.",
				(u) => (u.up ? 1 : 0),
			],
			[
				"upstream_in_flight_requests",
				"Requests this gateway has in flight at each model server replica.",
				(u) => u.inFlight,
			],
			[
				"upstream_waiting_requests",
				"Requests waiting in each model server replica's own queue (vllm:num_requests_waiting, with vllm.load-poll-ms).",
				(u) => u.waiting,
			],
			[
				"upstream_kv_cache_usage_ratio",
				"KV-cache use of each model server replica, 0-1 (vllm:kv_cache_usage_perc, with vllm.load-poll-ms).",
				(u) => u.kvCacheUsage,
			],
		];
		for (const [name, help, read] of perReplica) {
			new Gauge({
				name,
				help,
				labelNames: ["model", "replica"] as const,
				registers: [this.registry],
				collect() {
					this.reset();
					for (const u of view()) {
						const value = read(u);
						if (value !== undefined) this.set({ model: u.model, replica: u.replica }, value);
					}
				},
			});
		}
		if (this.perUserLabels) {
			this.userUsage = new Counter({
				name: "token_user_usage_total",
				help: "Tokens used per user (opt-in: metrics.per-user-labels; one series per user and model).",
				labelNames: ["model", "user", "type"] as const,
				registers: [this.registry],
			});
			this.userRateLimited = new Counter({
				name: "token_user_rate_limit_exceeded_total",
				help: "Requests refused by a limit, per user (opt-in: metrics.per-user-labels).",
				labelNames: ["model", "user"] as const,
				registers: [this.registry],
			});
		}
	}

	private readonly byModel = new Map<string, ModelInstruments>();
	/** The models of the configuration in force. */
	private configured = new Set<string>();
	/** Counter and gauge increments of the request path, handed to prom-client when scraped. */
	private readonly tallies: Tally[] = [];
	/** Each model's latest limit pressure per scope, published when scraped. */
	private readonly pressure = new Map<string, Map<string, number>>();
	private readonly storeCalls = new Map<string, Observer>();

	private tally(target: { inc(value: number): void }): Tally {
		const t = new Tally(target);
		this.tallies.push(t);
		return t;
	}

	private flushTallies(): void {
		for (const t of this.tallies) t.flush();
	}

	/** The remaining fraction of the tightest window of a scope at the latest decision. */
	reportPressure(model: string, scope: string, remaining: number): void {
		let scopes = this.pressure.get(model);
		if (scopes === undefined) {
			scopes = new Map();
			this.pressure.set(model, scopes);
		}
		scopes.set(scope, remaining);
	}

	/** How long a limit store call took. */
	observeStoreCall(operation: string, seconds: number): void {
		let o = this.storeCalls.get(operation);
		if (o === undefined) {
			o = this.storeDuration.bind({ operation });
			this.storeCalls.set(operation, o);
		}
		o.observe(seconds);
	}

	/**
	 * The per-request instruments of one model, their label sets resolved once:
	 * observing and counting on the request path is plain arithmetic, handed to
	 * prom-client when the registry is scraped.
	 */
	forModel(model: string): ModelInstruments {
		let m = this.byModel.get(model);
		if (m === undefined) {
			const durations = new Map<string, Observer>();
			m = {
				concurrent: this.tally(this.concurrentRequests.labels(model)),
				reserved: this.tally(this.tokensReserved.labels(model)),
				settled: this.tally(this.tokensSettled.labels(model)),
				prompt: this.tally(this.tokenUsage.labels(model, "prompt")),
				completion: this.tally(this.tokenUsage.labels(model, "completion")),
				timeToFirstToken: this.timeToFirstToken.bind({ model }),
				estimateError: this.estimateError.bind({ model }),
				duration: (status, stream) => {
					const statusClass = `${Math.floor(status / 100)}xx`;
					const key = `${statusClass}${stream ? "s" : ""}`;
					let d = durations.get(key);
					if (d === undefined) {
						d = this.requestDuration.bind({ model, status: statusClass, stream: String(stream) });
						durations.set(key, d);
					}
					return d;
				},
			};
			this.byModel.set(model, m);
		}
		return m;
	}

	/** Where the upstream gauges read replica state from (the gateway's live pools). */
	watchUpstreams(source: () => Iterable<UpstreamView>): void {
		this.upstreams = source;
	}

	/** Publishes the configured limits of every model (at boot and on reload). */
	setLimits(models: Iterable<ModelConfig>): void {
		this.limit.reset();
		const list = [...models];
		// A model a reload removed leaves no limit pressure behind (its concurrency gauge
		// stays, falling to 0 as its last requests finish; counters keep their history).
		const ids = new Set(list.map((m) => m.id));
		for (const id of this.configured) {
			if (ids.has(id)) continue;
			for (const scope of ["user", "tenant", "model"]) this.limitRemaining.remove(id, scope);
			this.pressure.delete(id);
		}
		this.configured = ids;
		for (const m of list) {
			const scopes = [
				["user", m.userWindows],
				["tenant", m.tenantWindows],
				["model", m.modelWindows],
			] as const;
			for (const [scope, windows] of scopes) {
				for (const w of windows) {
					this.limit.set({ model: m.id, scope, window: windowLabel(w) }, w.limitTokens);
				}
			}
			if (m.maxConcurrentRequests !== undefined) {
				this.limit.set(
					{ model: m.id, scope: "model", window: "concurrent" },
					m.maxConcurrentRequests,
				);
			}
		}
	}
}
