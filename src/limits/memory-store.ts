import { MemorySettings } from "../settings.ts";
import { MemoryCalibration } from "./calibration.ts";
import { reserve, settle, statuses } from "./gcra.ts";
import {
	type ClockUs,
	type LimitStore,
	type ReserveRequest,
	type ScopedWindow,
	type SettleRequest,
	type StoreDecision,
	type StoreSnapshot,
	systemClockUs,
} from "./store.ts";

const SWEEP_INTERVAL_MS = 60_000;
/** An admitted reservation that is never settled is forgotten after this long. */
const RESERVATION_TTL_US = 24 * 3600 * 1_000_000;

const msOf = (us: number) => Math.floor(us / 1000);

/**
 * In-process LimitStore: one gateway replica, state lost on restart. Each call
 * runs to completion on the event loop, which makes it atomic.
 */
export class MemoryLimitStore implements LimitStore {
	readonly kind = "memory";
	readonly settings = new MemorySettings();
	readonly calibration = new MemoryCalibration();
	/** Owner key → window field → TAT (µs), as Redis keeps them in one hash per owner. */
	private readonly tats = new Map<string, Map<string, number>>();
	private readonly open = new Map<string, { reservedTokens: number; expiresUs: number }>();
	/** Slot set key → request id → lease expiry in whole ms (as the Redis scripts keep it). */
	private readonly slots = new Map<string, Map<string, number>>();
	private readonly sweeper: ReturnType<typeof setInterval>;

	constructor(private readonly clock: ClockUs = systemClockUs) {
		this.sweeper = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS);
		this.sweeper.unref();
	}

	async reserve(req: ReserveRequest): Promise<StoreDecision> {
		const now = this.clock();
		const decision = reserve(this.load(req.windows), req.windows, req.costTokens, now);
		if (decision.kind === "never") return decision;
		// Lease sets in order: the model's, then the extras; the first full one makes it busy.
		const sets = [req.slot, ...(req.extraSlots ?? [])];
		const taken: [Map<string, number>, string, number][] = [];
		for (let j = 0; j < sets.length; j++) {
			const set = sets[j];
			if (set === undefined || set.limit <= 0) continue;
			// Lapsed leases are only looked for when the set seems full.
			let holders = this.slots.get(set.key) ?? new Map<string, number>();
			if (holders.size >= set.limit) holders = this.liveSlots(set.key, now);
			if (holders.size >= set.limit) {
				const windows = statuses(this.load(req.windows), req.windows, now);
				return req.extraSlots === undefined || req.extraSlots.length === 0
					? { kind: "busy", windows }
					: { kind: "busy", windows, slotIndex: j };
			}
			taken.push([holders, set.key, set.leaseMs]);
		}
		if (decision.kind !== "admitted") return decision;
		this.store(req.windows, decision.tats);
		this.open.set(req.reservationKey, {
			reservedTokens: req.costTokens,
			expiresUs: now + RESERVATION_TTL_US,
		});
		for (const [holders, key, leaseMs] of taken) {
			holders.set(req.requestId, msOf(now) + leaseMs);
			this.slots.set(key, holders);
		}
		return { kind: "admitted", windows: decision.windows };
	}

	async settle(req: SettleRequest): Promise<boolean> {
		for (const key of [req.slotKey, ...(req.extraSlotKeys ?? [])]) {
			if (key !== undefined) this.slots.get(key)?.delete(req.requestId);
		}
		const open = this.open.get(req.reservationKey);
		if (open === undefined) return false;
		this.open.delete(req.reservationKey);
		this.store(
			req.windows,
			settle(
				this.load(req.windows),
				req.windows,
				open.reservedTokens,
				req.actualTokens,
				this.clock(),
			),
		);
		return true;
	}

	async renewSlot(slotKey: string, requestId: string, leaseMs: number): Promise<boolean> {
		const nowMs = msOf(this.clock());
		const holders = this.slots.get(slotKey);
		const expiresMs = holders?.get(requestId);
		// A lapsed lease is gone even if nothing has swept it yet.
		if (holders === undefined || expiresMs === undefined || expiresMs <= nowMs) return false;
		holders.set(requestId, nowMs + leaseMs);
		return true;
	}

	async peek(windows: readonly ScopedWindow[], slotKey: string): Promise<StoreSnapshot> {
		const now = this.clock();
		return {
			windows: statuses(this.load(windows), windows, now),
			slotsInUse: this.liveSlots(slotKey, now).size,
		};
	}

	async resetWindows(windows: readonly ScopedWindow[]): Promise<void> {
		for (const w of windows) this.tats.get(w.key)?.delete(w.field);
	}

	async ping(): Promise<boolean> {
		return true;
	}

	async close(): Promise<void> {
		clearInterval(this.sweeper);
	}

	/** Number of window keys held (drained windows are swept). */
	get size(): number {
		let n = 0;
		for (const fields of this.tats.values()) n += fields.size;
		return n;
	}

	/** Drops drained windows, lapsed leases and forgotten reservations. */
	sweep(): void {
		const now = this.clock();
		for (const [key, fields] of this.tats) {
			for (const [field, tat] of fields) if (tat <= now) fields.delete(field);
			if (fields.size === 0) this.tats.delete(key);
		}
		for (const [id, r] of this.open) if (r.expiresUs <= now) this.open.delete(id);
		for (const key of this.slots.keys()) this.liveSlots(key, now);
	}

	private liveSlots(key: string, now: number): Map<string, number> {
		const nowMs = msOf(now);
		const holders = this.slots.get(key) ?? new Map<string, number>();
		for (const [id, expiresMs] of holders) if (expiresMs <= nowMs) holders.delete(id);
		if (holders.size === 0) this.slots.delete(key);
		return holders;
	}

	private load(windows: readonly ScopedWindow[]): number[] {
		return windows.map((w) => this.tats.get(w.key)?.get(w.field) ?? 0);
	}

	private store(windows: readonly ScopedWindow[], tats: readonly number[]): void {
		windows.forEach((w, i) => {
			let fields = this.tats.get(w.key);
			if (fields === undefined) {
				fields = new Map();
				this.tats.set(w.key, fields);
			}
			fields.set(w.field, tats[i] ?? 0);
		});
	}
}
