import {
	type CircuitBreakerPolicy,
	CircuitState,
	ConsecutiveBreaker,
	circuitBreaker,
	handleAll,
} from "cockatiel";

/** A replica's own load, as its vLLM `/metrics` reported it. */
export interface ReplicaLoad {
	/** vllm:num_requests_waiting: requests queued in the server, from every gateway. */
	readonly waiting: number;
	/** vllm:num_requests_running. */
	readonly running: number;
	/** vllm:kv_cache_usage_perc (gpu_cache_usage_perc before vLLM v1), 0-1, when reported. */
	readonly kvCacheUsage: number | undefined;
	/** When it was read (ms, performance clock). */
	readonly at: number;
}

/** One vLLM server of a model. */
export interface Replica {
	readonly url: string;
	inFlight: number;
	/** The server's last reported load (load polling on), while fresh. */
	load: ReplicaLoad | undefined;
	/** When it last answered a request or accepted a connection check (ms, performance clock; 0: never). */
	answeredAt: number;
	/** Calls sent to it that have had no answer yet (cut if it is taken out). */
	readonly awaiting: Set<{ cutUnreachable(): void }>;
	/** When the breaker last opened (ms, performance clock); undefined while closed. */
	openedAt: number | undefined;
	/** Opens after consecutive failures; half-open probes let one call through. */
	readonly breaker: CircuitBreakerPolicy;
}

export interface BreakerOptions {
	/** Consecutive failures (connection errors, timeouts, 5xx) that open the breaker. */
	readonly failures: number;
	/** How long an open breaker waits before a half-open probe. */
	readonly halfOpenAfterMs: number;
}

export const DEFAULT_BREAKER: BreakerOptions = { failures: 5, halfOpenAfterMs: 5000 };

/**
 * The vLLM replicas of one model; requests go to the one with the fewest
 * requests in flight from this gateway (ties rotate), skipping replicas whose
 * circuit breaker (cockatiel) is open.
 */
export class ReplicaPool {
	readonly replicas: Replica[];
	private next = 0;

	constructor(
		urls: readonly string[],
		readonly breakerOptions: BreakerOptions = DEFAULT_BREAKER,
		/** Told once per change: a breaker opened or closed, a replica taken out or back in. */
		private readonly onChange: (url: string, change: string, detail?: string) => void = () => {},
	) {
		this.replicas = urls.map((url) => {
			const replica: Replica = {
				url,
				inFlight: 0,
				load: undefined,
				answeredAt: 0,
				awaiting: new Set(),
				openedAt: undefined,
				breaker: circuitBreaker(handleAll, {
					halfOpenAfter: breakerOptions.halfOpenAfterMs,
					breaker: new ConsecutiveBreaker(breakerOptions.failures),
				}),
			};
			replica.breaker.onStateChange((state) => {
				replica.openedAt = state === CircuitState.Open ? performance.now() : undefined;
				// Letting go of held-out replicas when the pool stops is not news.
				if (this.stopping) return;
				if (state === CircuitState.Open) {
					const last = replica.breaker.lastFailure;
					const detail = last !== undefined && "error" in last ? String(last.error) : undefined;
					onChange(url, "breaker open", detail);
				}
				if (state === CircuitState.Closed) onChange(url, "breaker closed");
			});
			return replica;
		});
	}

	private healthTimer: ReturnType<typeof setInterval> | undefined;
	private healthIntervalMs = 0;
	private readonly isolated = new Map<Replica, { dispose: () => void }>();

	/**
	 * Probes every replica's `/health` every `intervalMs`: one that fails is taken
	 * out (its breaker held open) until a probe succeeds again.
	 */
	startHealthChecks(intervalMs: number, timeoutMs = 2000): void {
		if (this.healthTimer !== undefined && intervalMs !== this.healthIntervalMs) {
			// A reload changed the interval: start over with the new one.
			clearInterval(this.healthTimer);
			this.healthTimer = undefined;
		}
		this.healthIntervalMs = intervalMs;
		if (intervalMs <= 0 || this.healthTimer !== undefined) return;
		this.healthTimer = setInterval(() => void this.checkHealth(timeoutMs), intervalMs);
		this.healthTimer.unref();
	}

	private loadTimer: ReturnType<typeof setInterval> | undefined;
	private loadIntervalMs = 0;

	/**
	 * Reads every replica's vLLM `/metrics` every `intervalMs`: its queue
	 * (`vllm:num_requests_waiting`) counts in choosing a replica, so requests go
	 * where the server's own queue is shortest, whichever gateway filled it.
	 */
	startLoadPolling(intervalMs: number, timeoutMs = Math.min(1000, intervalMs)): void {
		if (this.loadTimer !== undefined && intervalMs !== this.loadIntervalMs) {
			// A reload changed the interval (0: off): start over, forgetting stale readings.
			clearInterval(this.loadTimer);
			this.loadTimer = undefined;
			for (const r of this.replicas) r.load = undefined;
		}
		this.loadIntervalMs = Math.max(0, intervalMs);
		if (intervalMs <= 0 || this.loadTimer !== undefined) return;
		this.loadTimer = setInterval(() => void this.pollLoad(timeoutMs), intervalMs);
		this.loadTimer.unref();
		void this.pollLoad(timeoutMs);
	}

	/** One round of load reads; a replica that does not answer has no known load. */
	async pollLoad(timeoutMs = 1000): Promise<void> {
		await Promise.all(
			this.replicas.map(async (r) => {
				r.load = await readLoad(r.url, timeoutMs);
			}),
		);
	}

	/** The replica's queue at the server, when a fresh reading says (within three poll intervals). */
	waiting(replica: Replica): number | undefined {
		const load = replica.load;
		if (load === undefined || this.loadIntervalMs <= 0) return undefined;
		return performance.now() - load.at <= 3 * this.loadIntervalMs ? load.waiting : undefined;
	}

	/** Set while the health checks stop: their releases are not breaker changes to report. */
	private stopping = false;

	stopHealthChecks(): void {
		if (this.healthTimer !== undefined) clearInterval(this.healthTimer);
		this.healthTimer = undefined;
		if (this.loadTimer !== undefined) clearInterval(this.loadTimer);
		this.loadTimer = undefined;
		this.stopping = true;
		try {
			for (const handle of this.isolated.values()) handle.dispose();
		} finally {
			this.stopping = false;
		}
		this.isolated.clear();
	}

	/** Whether the replica failed its last `/health` probe (and is held out). */
	isTakenOut(replica: Replica): boolean {
		return this.isolated.has(replica);
	}

	/** One round of health probes; returns the replicas now taken out. */
	async checkHealth(timeoutMs = 2000): Promise<string[]> {
		await Promise.all(
			this.replicas.map(async (r) => {
				const { healthy } = await probeHealth(r.url, timeoutMs);
				const handle = this.isolated.get(r);
				if (!healthy && handle === undefined) {
					this.isolated.set(r, r.breaker.isolate());
					this.onChange(r.url, "taken out: /health failed");
				}
				// A replica that no longer even accepts a connection will not answer the requests
				// still waiting for it (a busy vLLM does accept one: those are left to run).
				if (!healthy && r.awaiting.size > 0 && !(await connects(r.url, timeoutMs))) {
					for (const call of [...r.awaiting]) call.cutUnreachable();
				}
				if (healthy && handle !== undefined) {
					handle.dispose();
					this.isolated.delete(r);
					this.onChange(r.url, "back in: /health passed");
				}
			}),
		);
		return [...this.isolated.keys()].map((r) => r.url);
	}

	/**
	 * The least busy replica whose breaker lets calls through, other than
	 * `except`; none if all are open. Busy: this gateway's requests in flight
	 * there, plus the server's own queue when load polling reads it.
	 */
	pick(except?: Replica): Replica | undefined {
		const n = this.replicas.length;
		let best: Replica | undefined;
		for (let k = 0; k < n; k++) {
			const r = this.replicas[(this.next + k) % n];
			if (r === undefined || r === except) continue;
			if (r.breaker.state === CircuitState.Isolated) continue;
			// An open breaker half-opens on the next call once its wait is over: offer it then.
			if (
				r.breaker.state === CircuitState.Open &&
				performance.now() - (r.openedAt ?? 0) < this.breakerOptions.halfOpenAfterMs
			) {
				continue;
			}
			if (best === undefined || this.busy(r) < this.busy(best)) best = r;
		}
		this.next = (this.next + 1) % Math.max(1, n);
		return best;
	}

	private busy(r: Replica): number {
		return r.inFlight + (this.waiting(r) ?? 0);
	}
}

/** Sum of a metric's samples in Prometheus text (every label set), or undefined if absent. */
function sampleSum(
	text: string,
	names: readonly string[],
	combine: "sum" | "max",
): number | undefined {
	let out: number | undefined;
	for (const line of text.split("\n")) {
		if (line.length === 0 || line.startsWith("#")) continue;
		const name = names.find(
			(n) => line.startsWith(n) && (line[n.length] === "{" || line[n.length] === " "),
		);
		if (name === undefined) continue;
		const rest =
			line[name.length] === "{"
				? line.slice(line.indexOf("}", name.length) + 1)
				: line.slice(name.length);
		const value = Number(rest.trim().split(/\s+/)[0]);
		if (!Number.isFinite(value)) continue;
		out = out === undefined ? value : combine === "sum" ? out + value : Math.max(out, value);
	}
	return out;
}

/** A replica's load from its vLLM `/metrics`; undefined when it cannot be read. */
export function parseVllmLoad(text: string, at: number): ReplicaLoad | undefined {
	const waiting = sampleSum(text, ["vllm:num_requests_waiting"], "sum");
	if (waiting === undefined) return undefined;
	return {
		waiting,
		running: sampleSum(text, ["vllm:num_requests_running"], "sum") ?? 0,
		kvCacheUsage: sampleSum(text, ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"], "max"),
		at,
	};
}

async function readLoad(url: string, timeoutMs: number): Promise<ReplicaLoad | undefined> {
	try {
		const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(timeoutMs) });
		if (!res.ok) {
			await res.body?.cancel().catch(() => {});
			return undefined;
		}
		return parseVllmLoad(await res.text(), performance.now());
	} catch {
		return undefined;
	}
}

/** A replica that did not accept a connection in time: the request never reached it. */
export class ConnectTimeoutError extends Error {
	constructor(url: string, timeoutMs: number) {
		super(`no connection to ${url} within ${timeoutMs} ms`);
		this.name = "ConnectTimeoutError";
	}
}

/**
 * Whether the replica accepts a TCP connection within `timeoutMs` (fetch has no
 * connect timeout of its own: a replica whose address stopped answering would
 * hold a request until its total timeout).
 */
export async function connects(
	url: string,
	timeoutMs: number,
	signal?: AbortSignal,
): Promise<boolean> {
	const u = new URL(url);
	const port = Number(u.port || (u.protocol === "https:" ? 443 : 80));
	const hostname = u.hostname.replace(/^\[|\]$/g, "");
	let timer: ReturnType<typeof setTimeout> | undefined;
	const attempt = Bun.connect({
		hostname,
		port,
		socket: {
			data() {},
			open(socket) {
				socket.end();
			},
		},
	}).then(
		() => true,
		() => false,
	);
	const late = new Promise<boolean>((resolve) => {
		timer = setTimeout(() => resolve(false), timeoutMs);
		signal?.addEventListener("abort", () => resolve(false), { once: true });
	});
	const ok = await Promise.race([attempt, late]);
	clearTimeout(timer);
	return ok;
}

/** Result of probing one replica's `/health`. */
export interface ReplicaHealth {
	readonly url: string;
	readonly healthy: boolean;
	readonly status: number | null;
	readonly latencyMs: number;
	readonly error?: string;
}

export async function probeHealth(url: string, timeoutMs = 2000): Promise<ReplicaHealth> {
	const started = performance.now();
	try {
		const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(timeoutMs) });
		await res.arrayBuffer();
		return {
			url,
			healthy: res.ok,
			status: res.status,
			latencyMs: Math.round(performance.now() - started),
		};
	} catch (err) {
		return {
			url,
			healthy: false,
			status: null,
			latencyMs: Math.round(performance.now() - started),
			error: err instanceof Error ? err.message : String(err),
		};
	}
}
