/** One vLLM server of a model. */
export interface Replica {
	readonly url: string;
	inFlight: number;
}

/**
 * The vLLM replicas of one model; requests go to the one with the fewest
 * requests in flight from this gateway (ties rotate).
 */
export class ReplicaPool {
	readonly replicas: Replica[];
	private next = 0;

	constructor(urls: readonly string[]) {
		this.replicas = urls.map((url) => ({ url, inFlight: 0 }));
	}

	pick(): Replica {
		const n = this.replicas.length;
		let best: Replica | undefined;
		for (let k = 0; k < n; k++) {
			const r = this.replicas[(this.next + k) % n];
			if (r !== undefined && (best === undefined || r.inFlight < best.inFlight)) best = r;
		}
		this.next = (this.next + 1) % n;
		if (best === undefined) throw new Error("replica pool is empty");
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
