import {
	type CircuitBreakerPolicy,
	CircuitState,
	ConsecutiveBreaker,
	circuitBreaker,
	handleAll,
} from "cockatiel";

/** One vLLM server of a model. */
export interface Replica {
	readonly url: string;
	inFlight: number;
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
				openedAt: undefined,
				breaker: circuitBreaker(handleAll, {
					halfOpenAfter: breakerOptions.halfOpenAfterMs,
					breaker: new ConsecutiveBreaker(breakerOptions.failures),
				}),
			};
			replica.breaker.onStateChange((state) => {
				replica.openedAt = state === CircuitState.Open ? performance.now() : undefined;
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
	private readonly isolated = new Map<Replica, { dispose: () => void }>();

	/**
	 * Probes every replica's `/health` every `intervalMs`: one that fails is taken
	 * out (its breaker held open) until a probe succeeds again.
	 */
	startHealthChecks(intervalMs: number, timeoutMs = 2000): void {
		if (intervalMs <= 0 || this.healthTimer !== undefined) return;
		this.healthTimer = setInterval(() => void this.checkHealth(timeoutMs), intervalMs);
		this.healthTimer.unref();
	}

	stopHealthChecks(): void {
		if (this.healthTimer !== undefined) clearInterval(this.healthTimer);
		this.healthTimer = undefined;
		for (const handle of this.isolated.values()) handle.dispose();
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
				if (healthy && handle !== undefined) {
					handle.dispose();
					this.isolated.delete(r);
					this.onChange(r.url, "back in: /health passed");
				}
			}),
		);
		return [...this.isolated.keys()].map((r) => r.url);
	}

	/** The least busy replica whose breaker lets calls through, other than `except`; none if all are open. */
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
			if (best === undefined || r.inFlight < best.inFlight) best = r;
		}
		this.next = (this.next + 1) % Math.max(1, n);
		return best;
	}
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
