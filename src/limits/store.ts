import type { SettingsStore } from "../settings.ts";
import type { CalibrationStore } from "./calibration.ts";
import type { WindowSpec, WindowStatus } from "./gcra.ts";

/** Where a window lives: its owner's storage key and its name there. */
export interface WindowKey {
	/**
	 * Storage key of the owner's windows (a user's, a tenant's or the model's);
	 * all keys of one model share the `{model}` hash tag.
	 */
	readonly key: string;
	/** The window within them (`minute`, `hour`, `day`, `rpm`). */
	readonly field: string;
}

/** A window of one scope, addressed by its owner's key and its field. */
export interface ScopedWindow extends WindowSpec, WindowKey {}

/** A concurrency lease asked for together with the reservation. */
export interface SlotRequest {
	/** Storage key of the model's slot set (same hash tag as its windows). */
	readonly key: string;
	readonly limit: number;
	/** The lease lapses this long after it was taken or last renewed. */
	readonly leaseMs: number;
}

export interface ReserveRequest {
	readonly requestId: string;
	readonly windows: readonly ScopedWindow[];
	readonly costTokens: number;
	readonly slot?: SlotRequest;
	/** Further lease sets to take a slot in as well (a user's or a tenant's own concurrency). */
	readonly extraSlots?: readonly SlotRequest[];
	/** Storage key marking the open reservation (same hash tag as the windows). */
	readonly reservationKey: string;
	/**
	 * The model's shared queue (`SharedQueue`): while anyone waits in it, the
	 * request gets no slot (it joins the queue instead).
	 */
	readonly queueKey?: string;
	/** The request was granted its slots by the shared queue: it claims them. */
	readonly claim?: boolean;
}

export interface SettleRequest {
	readonly requestId: string;
	readonly windows: readonly ScopedWindow[];
	readonly reservationKey: string;
	readonly reservedTokens: number;
	readonly actualTokens: number;
	/** The slot set to release the request's lease from, if it holds one. */
	readonly slotKey?: string;
	/** Further lease sets the request holds a slot in. */
	readonly extraSlotKeys?: readonly string[];
}

/** A request joining a model's shared queue. */
export interface QueueEntry {
	/** The request's admission id: its member in the lease sets once granted. */
	readonly id: string;
	readonly user: string;
	readonly tenant: string;
	/** 0 high, 1 normal, 2 low. */
	readonly rank: number;
	/** The caller's own lease sets (a user's or tenant's concurrency), with their limits. */
	readonly ownSlots: readonly { readonly key: string; readonly limit: number }[];
	/** The queue's bound: with this many waiting, the request is refused. */
	readonly maxQueued: number;
}

/** Where one model's shared queue lives, and how its slots are granted. */
export interface QueueTarget {
	/** The queue's key (`trl:{model}:q:m`). */
	readonly queueKey: string;
	/** The model's lease set and its limit. */
	readonly slotKey: string;
	readonly limit: number;
	/** A waiting request rises one priority class per this many ms. */
	readonly agingMs: number;
	/** The longest a request waits (max-queue-wait-ms): the queue's bookkeeping lives at least this long. */
	readonly maxWaitMs: number;
}

/** What a shared-queue call answers: whether the request joined, how many wait, and this replica's grants. */
export interface QueueReply {
	readonly joined: boolean;
	readonly waiting: number;
	/** This replica's entries still waiting (not granted). */
	readonly mine: number;
	/** Entries of this replica granted a slot since it last asked: each is claimed by its request. */
	readonly granted: readonly string[];
}

/**
 * One fair queue per model shared by every replica (Redis): requests that wait
 * for a slot join it, and slots are granted in one fair order. Each replica
 * polls while its requests wait, which keeps its entries alive; a replica that
 * stops polling loses them.
 */
export interface SharedQueue {
	join(target: QueueTarget, owner: string, entry: QueueEntry): Promise<QueueReply>;
	poll(target: QueueTarget, owner: string): Promise<QueueReply>;
	/** The request stopped waiting: its entry goes, and a slot granted to it is given back. */
	leave(
		target: QueueTarget,
		owner: string,
		id: string,
		ownSlotKeys: readonly string[],
	): Promise<QueueReply>;
	/** Requests waiting in the queue at `queueKey`, on every replica. */
	depth(queueKey: string): Promise<number>;
}

/**
 * A limiter decision is data: admitted, limited (retry later), never (cannot
 * fit any time), or busy (no concurrency slot free).
 */
export type StoreDecision =
	| { readonly kind: "admitted"; readonly windows: WindowStatus[] }
	| {
			readonly kind: "limited";
			readonly retryAfterUs: number;
			readonly blockingIndex: number;
			readonly windows: WindowStatus[];
	  }
	| { readonly kind: "never"; readonly blockingIndex: number; readonly windows: WindowStatus[] }
	| {
			readonly kind: "busy";
			readonly windows: WindowStatus[];
			/** With extra lease sets: which one was full (0 = the model's, 1.. = the extras in order). */
			readonly slotIndex?: number;
	  };

export interface StoreSnapshot {
	readonly windows: WindowStatus[];
	readonly slotsInUse: number;
}

/**
 * Where token windows and concurrency leases live. The memory store serves one
 * process; the Redis stores share them across gateway replicas. All follow
 * `gcra.ts` exactly and check in the same order: never, busy, limited.
 * Store failures are thrown errors; a denial is a decision.
 */
export interface LimitStore {
	readonly kind: string;
	/** All-or-nothing: the lease (if asked) and every window, or nothing. */
	reserve(req: ReserveRequest): Promise<StoreDecision>;
	/**
	 * Applies actual usage to an admitted reservation, once per request id, and
	 * releases the lease. Returns false when there was nothing to settle.
	 */
	settle(req: SettleRequest): Promise<boolean>;
	/** Extends a held lease; false when it was no longer held. */
	renewSlot(slotKey: string, requestId: string, leaseMs: number): Promise<boolean>;
	/** Current standing of windows and a slot set, without spending anything. */
	peek(windows: readonly ScopedWindow[], slotKey: string): Promise<StoreSnapshot>;
	/** Forgets the windows (a usage reset): they start full again. */
	resetWindows(windows: readonly ScopedWindow[]): Promise<void>;
	/** The shared queue, on stores shared by replicas (absent: each replica queues on its own). */
	readonly queue?: SharedQueue;
	/** Whether the store can serve requests (readiness). */
	ping(): Promise<boolean>;
	/** Small shared maps (issued API keys, limit overrides), the same on every replica. */
	readonly settings: SettingsStore;
	/** Each model's learned prompt-estimate calibration, the same on every replica. */
	readonly calibration: CalibrationStore;
	close(): Promise<void>;
}

/** Microsecond clock; stores take one so tests can freeze and move time. */
export type ClockUs = () => number;

export const systemClockUs: ClockUs = () =>
	Math.floor((performance.timeOrigin + performance.now()) * 1000);
