import type { FailurePolicy } from "../config/schema.ts";
import { GatewayError } from "../errors.ts";
import type { SettingsStore } from "../settings.ts";
import type { CalibrationStore } from "./calibration.ts";
import { statuses } from "./gcra.ts";
import { MemoryLimitStore } from "./memory-store.ts";
import type { RedisLimitStore } from "./redis-store.ts";
import { SlotMigratingError } from "./slot-migrating.ts";
import type {
	ClockUs,
	LimitStore,
	ReserveRequest,
	ScopedWindow,
	SettleRequest,
	SharedQueue,
	StoreDecision,
	StoreSnapshot,
} from "./store.ts";

export type StoreOperation = "reserve" | "settle" | "renew" | "peek";

export interface ResilienceHooks {
	/** Every decision taken by the failure policy instead of Redis. */
	onFallback?(policy: FailurePolicy, operation: StoreOperation): void;
	/** Redis went away or came back: called once per transition. */
	onTransition?(up: boolean, detail: string): void;
}

export interface ResilientStoreOptions {
	readonly policy: FailurePolicy;
	/** Fixed divisor for the local policy; undefined = the live replicas seen in Redis. */
	readonly replicas?: number;
	readonly heartbeatMs: number;
	readonly probeMs?: number;
	readonly instanceId?: string;
	readonly clock?: ClockUs;
	readonly hooks?: ResilienceHooks;
}

function message(err: unknown): string {
	if (!(err instanceof Error)) return String(err);
	return err.message === "" ? err.name : `${err.name}: ${err.message}`;
}

/** Consecutive failed calls after which Redis is treated as down (not just slow). */
const FAILURES_TO_DOWN = 3;
/** Settlements that failed are retried this often while Redis answers. */
const SETTLE_RETRY_MS = 500;
/** At most this many failed settlements wait for a retry; the oldest give way. */
const MAX_PENDING_SETTLES = 100_000;
/** A reservation outlives no settlement retry for longer than its own TTL. */
const PENDING_SETTLE_TTL_MS = 24 * 3600 * 1000;

/**
 * The Redis store behind a failure policy. While Redis answers, every call goes
 * to it. When a call fails or times out, Redis is marked down (logged once) and
 * probed in the background; meanwhile the policy decides:
 * - `open`: admit without limits;
 * - `closed`: refuse with 503 `limiter_unavailable`;
 * - `local`: limit in this process with each limit divided by the live replicas
 *   (learned from the heartbeat set in Redis while it was up, or configured).
 * Reservations are settled where they were made. A client never gets a 500
 * because Redis blinked.
 */
export class ResilientLimitStore implements LimitStore {
	readonly kind: string;
	private up = true;
	private liveReplicas: number;
	private readonly local: MemoryLimitStore;
	/** Reservation keys admitted by the local store or without limits (open). */
	private readonly localReservations = new Set<string>();
	private readonly openReservations = new Set<string>();
	private readonly heartbeatTimer: ReturnType<typeof setInterval>;
	private probeTimer: ReturnType<typeof setTimeout> | undefined;
	private readonly instanceId: string;
	private closed = false;
	private consecutiveFailures = 0;
	private lastFailure: unknown;
	/** Settlements Redis did not take, by reservation key, with when they failed first. */
	private readonly pendingSettles = new Map<string, { req: SettleRequest; sinceMs: number }>();
	private readonly settleRetryTimer: ReturnType<typeof setInterval>;

	constructor(
		private readonly primary: RedisLimitStore,
		private readonly options: ResilientStoreOptions,
	) {
		this.kind = primary.kind;
		this.local = new MemoryLimitStore(options.clock);
		this.liveReplicas = options.replicas ?? 1;
		this.instanceId = options.instanceId ?? crypto.randomUUID();
		this.heartbeatTimer = setInterval(() => void this.heartbeat(), options.heartbeatMs);
		this.heartbeatTimer.unref();
		this.settleRetryTimer = setInterval(() => void this.retrySettles(), SETTLE_RETRY_MS);
		this.settleRetryTimer.unref();
		void this.heartbeat();
	}

	/** Settlements waiting for Redis (refunds and lease releases not yet applied). */
	get pendingSettlements(): number {
		return this.pendingSettles.size;
	}

	/**
	 * Applies settlements that failed earlier. Settling is idempotent per request,
	 * so a retry of one that did land after all changes nothing.
	 */
	private async retrySettles(): Promise<void> {
		if (!this.up || this.closed || this.pendingSettles.size === 0) return;
		const now = Date.now();
		for (const [key, pending] of this.pendingSettles) {
			if (now - pending.sinceMs > PENDING_SETTLE_TTL_MS) {
				this.pendingSettles.delete(key);
				continue;
			}
			try {
				await this.primary.settle(pending.req);
				this.pendingSettles.delete(key);
			} catch (err) {
				this.failed(err);
				if (!this.up) return;
			}
		}
	}

	private deferSettle(req: SettleRequest): void {
		if (this.pendingSettles.size >= MAX_PENDING_SETTLES) {
			const oldest = this.pendingSettles.keys().next();
			if (oldest.done !== true) this.pendingSettles.delete(oldest.value);
		}
		this.pendingSettles.set(req.reservationKey, { req, sinceMs: Date.now() });
	}

	/** Whether Redis is currently answering. */
	get redisUp(): boolean {
		return this.up;
	}

	/** Why Redis was taken for down, while it is. */
	get lastError(): string | undefined {
		return this.up ? undefined : message(this.lastFailure);
	}

	/** The failure policy that answers while Redis is away. */
	get failurePolicy(): FailurePolicy {
		return this.options.policy;
	}

	/** The divisor the local policy uses. */
	get replicas(): number {
		return this.options.replicas ?? this.liveReplicas;
	}

	private async heartbeat(): Promise<void> {
		if (!this.up || this.closed) return;
		try {
			const live = await this.primary.heartbeat(this.instanceId, this.options.heartbeatMs * 3);
			this.liveReplicas = Math.max(1, this.succeeded(live));
		} catch (err) {
			this.failed(err);
		}
	}

	/**
	 * A failed call: the policy answers it. Redis is treated as down (every call
	 * goes to the policy until a probe succeeds) once it is disconnected or several
	 * calls in a row failed; a single slow call only costs that call.
	 */
	private failed(err: unknown): void {
		// A slot migrating between cluster nodes is transient and local to one model.
		if (err instanceof SlotMigratingError) return;
		// The requests of one batch fail with the one error of its call: a call counts once.
		if (err === this.lastFailure) return;
		this.lastFailure = err;
		this.consecutiveFailures++;
		if (this.consecutiveFailures >= FAILURES_TO_DOWN || !this.primary.connected) this.markDown(err);
	}

	private succeeded<T>(value: T): T {
		this.consecutiveFailures = 0;
		return value;
	}

	private markDown(err: unknown): void {
		if (!this.up || this.closed) return;
		this.up = false;
		this.options.hooks?.onTransition?.(
			false,
			`Redis unavailable (${message(err)}); failure policy ${this.options.policy} until it is back`,
		);
		this.scheduleProbe();
	}

	private scheduleProbe(): void {
		if (this.closed) return;
		this.probeTimer = setTimeout(async () => {
			// A write: a full Redis (noeviction) answers PING but cannot serve.
			if (await this.primary.writable()) {
				this.up = true;
				this.consecutiveFailures = 0;
				this.options.hooks?.onTransition?.(true, "Redis is back; limits are shared again");
				void this.heartbeat();
			} else {
				this.scheduleProbe();
			}
		}, this.options.probeMs ?? 1000);
		this.probeTimer.unref();
	}

	private fallback(operation: StoreOperation): void {
		this.options.hooks?.onFallback?.(this.options.policy, operation);
	}

	private unavailable(): GatewayError {
		return new GatewayError(
			503,
			"server_error",
			"limiter_unavailable",
			"The rate limiter's store is unavailable and the gateway is configured to refuse requests until it returns. Please retry shortly.",
			null,
			{ "retry-after": "1" },
		);
	}

	/** The request with every limit divided among the live replicas. */
	private scaled(req: ReserveRequest): ReserveRequest {
		const n = this.replicas;
		// Rounded down (at least 1): the replicas together do not exceed the shared limit.
		const share = <T extends { limit: number }>(slot: T): T => ({
			...slot,
			limit: Math.max(1, Math.floor(slot.limit / n)),
		});
		return {
			...req,
			windows: this.scaledWindows(req.windows),
			...(req.slot === undefined ? {} : { slot: share(req.slot) }),
			...(req.extraSlots === undefined ? {} : { extraSlots: req.extraSlots.map(share) }),
		};
	}

	private scaledWindows(windows: readonly ScopedWindow[]): ScopedWindow[] {
		const n = this.replicas;
		return windows.map((w) => ({
			...w,
			limitTokens: Math.max(1, Math.floor(w.limitTokens / n)),
			burstTokens: Math.max(1, Math.floor(w.burstTokens / n)),
		}));
	}

	private async reserveByPolicy(req: ReserveRequest): Promise<StoreDecision> {
		this.fallback("reserve");
		switch (this.options.policy) {
			case "closed":
				throw this.unavailable();
			case "open":
				this.openReservations.add(req.reservationKey);
				return { kind: "admitted", windows: statuses([], req.windows, 0) };
			case "local": {
				const decision = await this.local.reserve(this.scaled(req));
				if (decision.kind === "admitted") this.localReservations.add(req.reservationKey);
				return decision;
			}
		}
	}

	async reserve(req: ReserveRequest): Promise<StoreDecision> {
		if (this.up) {
			try {
				return this.succeeded(await this.primary.reserve(req));
			} catch (err) {
				this.failed(err);
			}
		}
		return this.reserveByPolicy(req);
	}

	async settle(req: SettleRequest): Promise<boolean> {
		if (this.openReservations.delete(req.reservationKey)) return true;
		if (this.localReservations.delete(req.reservationKey)) {
			return this.local.settle({ ...req, windows: this.scaledWindows(req.windows) });
		}
		if (this.up) {
			try {
				return this.succeeded(await this.primary.settle(req));
			} catch (err) {
				this.failed(err);
			}
		}
		// Made in Redis, not reachable now: until a retry lands, the reservation stays
		// charged (never over-admits) and the lease is held at most to its TTL.
		this.fallback("settle");
		this.deferSettle(req);
		return false;
	}

	async renewSlot(slotKey: string, requestId: string, leaseMs: number): Promise<boolean> {
		if (await this.local.renewSlot(slotKey, requestId, leaseMs)) return true;
		if (!this.up) return false;
		try {
			return this.succeeded(await this.primary.renewSlot(slotKey, requestId, leaseMs));
		} catch (err) {
			this.failed(err);
			this.fallback("renew");
			return false;
		}
	}

	async peek(windows: readonly ScopedWindow[], slotKey: string): Promise<StoreSnapshot> {
		if (this.up) {
			try {
				return this.succeeded(await this.primary.peek(windows, slotKey));
			} catch (err) {
				this.failed(err);
			}
		}
		this.fallback("peek");
		// Under closed there are no local figures to show: say the store is away.
		if (this.options.policy === "closed")
			throw this.settingsUnavailable(new Error("Redis is unavailable"));
		return this.local.peek(this.scaledWindows(windows), slotKey);
	}

	async resetWindows(windows: readonly ScopedWindow[]): Promise<void> {
		await this.local.resetWindows(this.scaledWindows(windows));
		try {
			await this.primary.resetWindows(windows);
		} catch (err) {
			this.failed(err);
			throw this.settingsUnavailable(err);
		}
	}

	/** Shared settings need Redis: while it is away, writes are refused with 503 and reads fail. */
	readonly settings: SettingsStore = {
		load: (map) => this.guard(this.primary.settings.load(map)),
		put: (map, field, value) => this.guard(this.primary.settings.put(map, field, value)),
		remove: (map, field) => this.guard(this.primary.settings.remove(map, field)),
		version: () => this.guard(this.primary.settings.version()),
	};

	/**
	 * The shared queue while Redis answers. While it is away every call fails
	 * at once, and the limiter lets the failure policy decide for the requests
	 * waiting on this replica.
	 */
	readonly queue: SharedQueue = {
		join: (target, owner, entry) =>
			this.queued(() => this.primary.queue.join(target, owner, entry)),
		poll: (target, owner) => this.queued(() => this.primary.queue.poll(target, owner)),
		leave: (target, owner, id, keys) =>
			this.queued(() => this.primary.queue.leave(target, owner, id, keys)),
		depth: (key) => this.queued(() => this.primary.queue.depth(key)),
	};

	private async queued<T>(call: () => Promise<T>): Promise<T> {
		if (!this.up) throw new Error("Redis is unavailable");
		try {
			return this.succeeded(await call());
		} catch (err) {
			this.failed(err);
			throw err;
		}
	}

	/** Calibration is shared through Redis; while it is away, pins and resets are refused (503). */
	readonly calibration: CalibrationStore = {
		fold: (key, batch) => this.guard(this.primary.calibration.fold(key, batch)),
		read: (key) => this.guard(this.primary.calibration.read(key)),
		pin: (key, ratio) => this.guard(this.primary.calibration.pin(key, ratio)),
		reset: (key) => this.guard(this.primary.calibration.reset(key)),
	};

	private async guard<T>(call: Promise<T>): Promise<T> {
		try {
			return await call;
		} catch (err) {
			this.failed(err);
			throw this.settingsUnavailable(err);
		}
	}

	private settingsUnavailable(err: unknown): GatewayError {
		return new GatewayError(
			503,
			"server_error",
			"store_unavailable",
			`The shared store (Redis) did not answer: ${message(err)}. Please retry shortly.`,
			null,
			{ "retry-after": "1" },
		);
	}

	async ping(): Promise<boolean> {
		// Under open and local the gateway keeps serving without Redis.
		if (this.options.policy !== "closed") return true;
		return this.up && (await this.primary.ping());
	}

	async close(): Promise<void> {
		this.closed = true;
		clearInterval(this.heartbeatTimer);
		clearInterval(this.settleRetryTimer);
		if (this.probeTimer !== undefined) clearTimeout(this.probeTimer);
		// The others stop counting this replica now rather than when its heartbeat lapses.
		if (this.up) await this.primary.leave(this.instanceId).catch(() => {});
		await this.local.close();
		await this.primary.close();
	}
}
