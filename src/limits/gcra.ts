/**
 * Pure multi-window GCRA (generic cell rate algorithm) over token costs.
 *
 * One window: limit L tokens per window W (µs), burst capacity B; emission
 * interval T = W/L, tolerance τ = ceil(B·W/L). State is one TAT (theoretical
 * arrival time, integer µs) per window; 0 means "never used". A cost c moves the
 * TAT by inc = ceil(c·W/L). A request is admitted when, for every window,
 * max(TAT, now) + inc ≤ now + τ — all windows or none.
 *
 * This module is the reference the stores (memory and Redis/Lua) must match. It
 * imports nothing and takes time as a parameter.
 */

/** One window of one scope, as the limiter sees it. */
export interface WindowSpec {
	/**
	 * Counts requests, not tokens: each admitted request costs 1 whatever its
	 * tokens, and settlement leaves the window as it is.
	 */
	readonly perRequest?: boolean;
	readonly windowUs: number;
	readonly limitTokens: number;
	readonly burstTokens: number;
}

/** Where a caller stands in one window at a point in time. */
export interface WindowStatus {
	readonly limitTokens: number;
	readonly burstTokens: number;
	/** Tokens that could be spent now in this window. */
	readonly remainingTokens: number;
	/** Tokens still counted against the window (not yet drained). */
	readonly usedTokens: number;
	/** Time until the window is fully replenished. */
	readonly resetUs: number;
}

export type ReserveDecision =
	| { readonly kind: "admitted"; readonly tats: number[]; readonly windows: WindowStatus[] }
	| {
			readonly kind: "limited";
			/** Wait after which the same request passes if nothing else is spent. */
			readonly retryAfterUs: number;
			/** Index of the window that needs the longest wait. */
			readonly blockingIndex: number;
			readonly windows: WindowStatus[];
	  }
	| {
			readonly kind: "never";
			/** Index of the first window whose whole capacity is below the cost. */
			readonly blockingIndex: number;
			readonly windows: WindowStatus[];
	  };

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** ceil(a·b/d) for non-negative integers, exact even when a·b exceeds 2^53. */
export function mulDivCeil(a: number, b: number, d: number): number {
	const product = a * b;
	if (product <= MAX_SAFE) {
		const q = floorDiv(product, d);
		return q * d === product ? q : q + 1;
	}
	const big = BigInt(a) * BigInt(b);
	const q = big / BigInt(d);
	return Number(big % BigInt(d) === 0n ? q : q + 1n);
}

/** floor(a·b/d) for non-negative integers, exact even when a·b exceeds 2^53. */
export function mulDivFloor(a: number, b: number, d: number): number {
	const product = a * b;
	if (product <= MAX_SAFE) return floorDiv(product, d);
	return Number((BigInt(a) * BigInt(b)) / BigInt(d));
}

/** ceil(n/d) for safe non-negative integers. */
function ceilDiv(n: number, d: number): number {
	const q = floorDiv(n, d);
	return q * d === n ? q : q + 1;
}

/** floor(n/d) for safe integers, correcting the float quotient's rounding. */
function floorDiv(n: number, d: number): number {
	let q = Math.floor(n / d);
	if (q * d > n) q -= 1;
	else if ((q + 1) * d <= n) q += 1;
	return q;
}

/**
 * What one window's arithmetic needs, worked out once per window: its
 * tolerance, and its emission interval W/L as a reduced fraction p/q. For the
 * round limits operators configure, p and q are small, so converting between
 * tokens and time is one exact multiplication and division in floating point
 * rather than the general a·b/d in BigInt.
 */
interface Rates {
	readonly toleranceUs: number;
	/** W / gcd(W, L): microseconds per q tokens. */
	readonly p: number;
	/** L / gcd(W, L). */
	readonly q: number;
}

const rates = new WeakMap<WindowSpec, Rates>();

function gcd(a: number, b: number): number {
	while (b !== 0) [a, b] = [b, a % b];
	return a;
}

function ratesOf(w: WindowSpec): Rates {
	let r = rates.get(w);
	if (r === undefined) {
		const g = gcd(w.windowUs, w.limitTokens);
		r = {
			toleranceUs: mulDivCeil(w.burstTokens, w.windowUs, w.limitTokens),
			p: w.windowUs / g,
			q: w.limitTokens / g,
		};
		rates.set(w, r);
	}
	return r;
}

/** ceil(us·L/W): tokens that `us` of a window's time stands for, rounded up. */
function tokensCeil(us: number, w: WindowSpec, r: Rates): number {
	const n = us * r.q;
	return n <= MAX_SAFE ? ceilDiv(n, r.p) : mulDivCeil(us, w.limitTokens, w.windowUs);
}

/** floor(us·L/W): tokens that `us` of a window's time stands for, rounded down. */
function tokensFloor(us: number, w: WindowSpec, r: Rates): number {
	const n = us * r.q;
	return n <= MAX_SAFE ? floorDiv(n, r.p) : mulDivFloor(us, w.limitTokens, w.windowUs);
}

/** TAT increment for a cost in one window: ceil(c·W/L). */
export function incrementUs(costTokens: number, w: WindowSpec): number {
	const r = ratesOf(w);
	const n = costTokens * r.p;
	return n <= MAX_SAFE ? ceilDiv(n, r.q) : mulDivCeil(costTokens, w.windowUs, w.limitTokens);
}

/** Tolerance τ of one window: how far ahead of now its TAT may run. */
export function toleranceUs(w: WindowSpec): number {
	return ratesOf(w).toleranceUs;
}

/** A window's standing at `nowUs` given its TAT. */
export function windowStatus(tatUs: number, w: WindowSpec, nowUs: number): WindowStatus {
	const r = ratesOf(w);
	const base = Math.max(tatUs, nowUs);
	const backlogUs = base - nowUs;
	const slackUs = Math.max(0, r.toleranceUs - backlogUs);
	return {
		limitTokens: w.limitTokens,
		burstTokens: w.burstTokens,
		remainingTokens: Math.min(w.burstTokens, tokensFloor(slackUs, w, r)),
		usedTokens: Math.min(w.burstTokens, tokensCeil(backlogUs, w, r)),
		resetUs: backlogUs,
	};
}

/**
 * All-or-nothing reservation of `costTokens` in every window. On admission the
 * new TATs are returned; otherwise nothing changes and the decision says why.
 */
export function reserve(
	tatsUs: readonly number[],
	windows: readonly WindowSpec[],
	costTokens: number,
	nowUs: number,
): ReserveDecision {
	const next: number[] = new Array(windows.length);
	let worstWaitUs = 0;
	let blockingIndex = -1;
	let neverIndex = -1;
	for (let i = 0; i < windows.length; i++) {
		const w = windows[i] as WindowSpec;
		const inc = incrementUs(w.perRequest === true ? 1 : costTokens, w);
		const tau = toleranceUs(w);
		if (inc > tau && neverIndex < 0) neverIndex = i;
		const newTat = Math.max(tatsUs[i] ?? 0, nowUs) + inc;
		const waitUs = newTat - (nowUs + tau);
		if (waitUs > worstWaitUs) {
			worstWaitUs = waitUs;
			blockingIndex = i;
		}
		next[i] = newTat;
	}
	if (neverIndex >= 0) {
		return { kind: "never", blockingIndex: neverIndex, windows: statuses(tatsUs, windows, nowUs) };
	}
	if (blockingIndex >= 0) {
		return {
			kind: "limited",
			retryAfterUs: worstWaitUs,
			blockingIndex,
			windows: statuses(tatsUs, windows, nowUs),
		};
	}
	return { kind: "admitted", tats: next, windows: statuses(next, windows, nowUs) };
}

/**
 * Settles a reservation against actual usage: the TATs move by the difference
 * between what `actualTokens` and `reservedTokens` cost. More than reserved is
 * charged unconditionally; less is refunded but never to before `nowUs`.
 */
export function settle(
	tatsUs: readonly number[],
	windows: readonly WindowSpec[],
	reservedTokens: number,
	actualTokens: number,
	nowUs: number,
): number[] {
	return windows.map((w, i) => {
		const tat = tatsUs[i] ?? 0;
		if (w.perRequest === true) return tat;
		const deltaUs = incrementUs(actualTokens, w) - incrementUs(reservedTokens, w);
		if (deltaUs > 0) return Math.max(tat, nowUs) + deltaUs;
		if (deltaUs < 0 && tat > nowUs) return Math.max(tat + deltaUs, nowUs);
		return tat;
	});
}

export function statuses(
	tatsUs: readonly number[],
	windows: readonly WindowSpec[],
	nowUs: number,
): WindowStatus[] {
	return windows.map((w, i) => windowStatus(tatsUs[i] ?? 0, w, nowUs));
}
