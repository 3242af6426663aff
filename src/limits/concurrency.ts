/**
 * Per-model concurrency slots. A slot is held by a request id from admission
 * until the response is finished, failed or cancelled; release is idempotent.
 */
export interface ConcurrencyLimiter {
	tryAcquire(model: string, limit: number, requestId: string): Promise<boolean>;
	release(model: string, requestId: string): Promise<void>;
	inUse(model: string): Promise<number>;
}

/** Slots of one process (memory store). */
export class LocalConcurrencyLimiter implements ConcurrencyLimiter {
	private readonly holders = new Map<string, Set<string>>();

	async tryAcquire(model: string, limit: number, requestId: string): Promise<boolean> {
		let set = this.holders.get(model);
		if (set === undefined) {
			set = new Set();
			this.holders.set(model, set);
		}
		if (set.size >= limit) return false;
		set.add(requestId);
		return true;
	}

	async release(model: string, requestId: string): Promise<void> {
		this.holders.get(model)?.delete(requestId);
	}

	async inUse(model: string): Promise<number> {
		return this.holders.get(model)?.size ?? 0;
	}
}
