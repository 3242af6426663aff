import type { WindowSpec, WindowStatus } from "./gcra.ts";

/** A window of one scope, addressed by its storage key. */
export interface ScopedWindow extends WindowSpec {
	/** Storage key; all keys of one model share the `{model}` hash tag. */
	readonly key: string;
}

export interface ReserveRequest {
	readonly requestId: string;
	readonly windows: readonly ScopedWindow[];
	readonly costTokens: number;
}

export interface SettleRequest {
	readonly requestId: string;
	readonly windows: readonly ScopedWindow[];
	readonly reservedTokens: number;
	readonly actualTokens: number;
}

/** A limiter decision is data: admitted, limited (retry later) or never (cannot fit). */
export type StoreDecision =
	| { readonly kind: "admitted"; readonly windows: WindowStatus[] }
	| {
			readonly kind: "limited";
			readonly retryAfterUs: number;
			readonly blockingIndex: number;
			readonly windows: WindowStatus[];
	  }
	| { readonly kind: "never"; readonly blockingIndex: number; readonly windows: WindowStatus[] };

/**
 * Where token windows live. The memory store serves one process; the Redis store
 * shares windows across gateway replicas. Both follow `gcra.ts` exactly.
 * Store failures are thrown errors; a denial is a decision.
 */
export interface LimitStore {
	readonly kind: string;
	/** All-or-nothing reservation over every window of the request. */
	reserve(req: ReserveRequest): Promise<StoreDecision>;
	/**
	 * Applies actual usage to an admitted reservation, once per request id.
	 * Returns false when there was nothing to settle (already settled or never admitted).
	 */
	settle(req: SettleRequest): Promise<boolean>;
	/** Current standing of the windows, without spending anything. */
	peek(windows: readonly ScopedWindow[]): Promise<WindowStatus[]>;
	/** Whether the store can serve requests (readiness). */
	ping(): Promise<boolean>;
	close(): Promise<void>;
}

/** Microsecond clock; stores take one so tests can freeze and move time. */
export type ClockUs = () => number;

export const systemClockUs: ClockUs = () =>
	Math.floor((performance.timeOrigin + performance.now()) * 1000);
