import type { FailurePolicy } from "../config/schema.ts";
import { GatewayError } from "../errors.ts";
import { statuses } from "./gcra.ts";
import { MemoryLimitStore } from "./memory-store.ts";
import type { RedisLimitStore } from "./redis-store.ts";
import type {
	ClockUs,
	LimitStore,
	ReserveRequest,
	ScopedWindow,
	SettleRequest,
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
		void this.heartbeat();
	}

	/** Whether Redis is currently answering. */
	get redisUp(): boolean {
		return this.up;
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
			if (await this.primary.ping()) {
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
		const windows = req.windows.map((w) => ({
			...w,
			limitTokens: Math.max(1, Math.floor(w.limitTokens / n)),
			burstTokens: Math.max(1, Math.floor(w.burstTokens / n)),
		}));
		const slot =
			req.slot === undefined
				? undefined
				: { ...req.slot, limit: Math.max(1, Math.ceil(req.slot.limit / n)) };
		return { ...req, windows, ...(slot === undefined ? {} : { slot }) };
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
		// Made in Redis, unreachable now: the reservation stays charged (never over-admits)
		// and the lease lapses by its TTL.
		this.fallback("settle");
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
		return this.local.peek(this.scaledWindows(windows), slotKey);
	}

	async ping(): Promise<boolean> {
		// Under open and local the gateway keeps serving without Redis.
		if (this.options.policy !== "closed") return true;
		return this.up && (await this.primary.ping());
	}

	async close(): Promise<void> {
		this.closed = true;
		clearInterval(this.heartbeatTimer);
		if (this.probeTimer !== undefined) clearTimeout(this.probeTimer);
		await this.local.close();
		await this.primary.close();
	}
}
