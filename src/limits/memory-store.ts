import { reserve, settle, statuses } from "./gcra.ts";
import {
	type ClockUs,
	type LimitStore,
	type ReserveRequest,
	type ScopedWindow,
	type SettleRequest,
	type StoreDecision,
	systemClockUs,
} from "./store.ts";

const SWEEP_INTERVAL_MS = 60_000;
/** An admitted reservation that is never settled is forgotten after this long. */
const RESERVATION_TTL_US = 24 * 3600 * 1_000_000;

/**
 * In-process LimitStore: one gateway replica, state lost on restart. Each call
 * runs to completion on the event loop, which makes it atomic.
 */
export class MemoryLimitStore implements LimitStore {
	readonly kind = "memory";
	private readonly tats = new Map<string, number>();
	private readonly open = new Map<string, number>();
	private readonly sweeper: ReturnType<typeof setInterval>;

	constructor(private readonly clock: ClockUs = systemClockUs) {
		this.sweeper = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS);
		this.sweeper.unref();
	}

	async reserve(req: ReserveRequest): Promise<StoreDecision> {
		const now = this.clock();
		const decision = reserve(this.load(req.windows), req.windows, req.costTokens, now);
		if (decision.kind !== "admitted") return decision;
		this.store(req.windows, decision.tats);
		this.open.set(req.requestId, now + RESERVATION_TTL_US);
		return { kind: "admitted", windows: decision.windows };
	}

	async settle(req: SettleRequest): Promise<boolean> {
		if (!this.open.delete(req.requestId)) return false;
		const now = this.clock();
		this.store(
			req.windows,
			settle(this.load(req.windows), req.windows, req.reservedTokens, req.actualTokens, now),
		);
		return true;
	}

	async peek(windows: readonly ScopedWindow[]) {
		return statuses(this.load(windows), windows, this.clock());
	}

	async ping(): Promise<boolean> {
		return true;
	}

	async close(): Promise<void> {
		clearInterval(this.sweeper);
	}

	/** Number of window keys held (drained windows are swept). */
	get size(): number {
		return this.tats.size;
	}

	/** Drops drained windows and forgotten reservations. */
	sweep(): void {
		const now = this.clock();
		for (const [key, tat] of this.tats) if (tat <= now) this.tats.delete(key);
		for (const [id, expiresUs] of this.open) if (expiresUs <= now) this.open.delete(id);
	}

	private load(windows: readonly ScopedWindow[]): number[] {
		return windows.map((w) => this.tats.get(w.key) ?? 0);
	}

	private store(windows: readonly ScopedWindow[], tats: readonly number[]): void {
		windows.forEach((w, i) => {
			this.tats.set(w.key, tats[i] ?? 0);
		});
	}
}
