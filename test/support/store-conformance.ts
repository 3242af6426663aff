/**
 * The LimitStore conformance suite: one table of exact numbers and a set of property tests that
 * every store (memory, Redis, Redis Cluster) must pass identically, on a frozen clock the tests
 * move by hand.
 *
 * Every test, and every fast-check run, works on a fresh model name, so its keys
 * (`trl:{m-<uuid>}:...`, one hash tag per request) never meet keys of another test in a shared
 * Redis. The frozen clock starts at least 10 minutes ahead of the wall clock and never goes back:
 * Redis expires window keys at their TAT in real time (PXAT), so a frozen time behind the wall
 * clock would let keys vanish under the test.
 */
import { afterAll, beforeAll, describe, expect, it } from "bun:test";
import fc from "fast-check";
import type { WindowName } from "../../src/config/schema.ts";
import { reserve as gcraReserve, settle as gcraSettle, statuses } from "../../src/limits/gcra.ts";
import { reservationKey, slotKey, windowKey } from "../../src/limits/limiter.ts";
import type {
	ClockUs,
	LimitStore,
	ReserveRequest,
	ScopedWindow,
	SettleRequest,
	StoreDecision,
	StoreSnapshot,
	WindowKey,
} from "../../src/limits/store.ts";

/** One string naming a window (its owner's key and its field), for the reference model's maps. */
function windowId(w: WindowKey): string {
	return `${w.key}\u0000${w.field}`;
}

export const SECOND = 1_000_000;
export const MINUTE_US = 60 * SECOND;
export const HOUR_US = 60 * MINUTE_US;
export const DAY_US = 24 * HOUR_US;
/** How far ahead of the wall clock a fresh epoch starts. */
const LEAD_US = 10 * MINUTE_US;

// ---------------------------------------------------------------------------------------------
// Frozen clock and fresh keys

/**
 * A clock that only moves when told to, and only forward. Each test takes a fresh `epoch()`: a
 * whole second, at least 10 minutes ahead of the wall clock and after anything used before.
 */
export class FrozenClock {
	private current = 0;

	get now(): number {
		return this.current;
	}

	readonly read: ClockUs = () => this.current;

	epoch(): number {
		const wall = Date.now() * 1000 + LEAD_US;
		const next = Math.ceil(Math.max(wall, this.current + SECOND) / SECOND) * SECOND;
		this.current = next;
		return next;
	}

	set(us: number): void {
		if (!Number.isSafeInteger(us) || us < this.current) {
			throw new Error(`the frozen clock may not go back (from ${this.current} to ${us})`);
		}
		this.current = us;
	}

	advance(us: number): void {
		this.set(this.current + us);
	}
}

/** A model name no other test uses: `m-<uuid>`. */
export function freshModel(): string {
	return `m-${crypto.randomUUID()}`;
}

/** A window at `at`: a limiter key, or a bare key string (its own owner, field `minute`). */
export function win(
	at: WindowKey | string,
	windowUs: number,
	limitTokens: number,
	burstTokens = limitTokens,
): ScopedWindow {
	const place = typeof at === "string" ? { key: at, field: "minute" } : at;
	return { ...place, windowUs, limitTokens, burstTokens };
}

/** A user window of `model`, keyed as the limiter keys it. */
export function userWindow(
	model: string,
	name: WindowName,
	user: string,
	limitTokens: number,
	burstTokens = limitTokens,
): ScopedWindow {
	const windowUs = { minute: MINUTE_US, hour: HOUR_US, day: DAY_US }[name];
	return win(windowKey(model, "user", name, user), windowUs, limitTokens, burstTokens);
}

export interface LeaseSpec {
	readonly limit: number;
	readonly leaseMs: number;
}

export function reserveRequest(
	model: string,
	requestId: string,
	windows: readonly ScopedWindow[],
	costTokens: number,
	lease?: LeaseSpec,
): ReserveRequest {
	return {
		requestId,
		windows,
		costTokens,
		reservationKey: reservationKey(model, requestId),
		...(lease === undefined ? {} : { slot: { key: slotKey(model), ...lease } }),
	};
}

export function settleRequest(
	model: string,
	requestId: string,
	windows: readonly ScopedWindow[],
	reservedTokens: number,
	actualTokens: number,
	releaseSlot = false,
): SettleRequest {
	return {
		requestId,
		windows,
		reservationKey: reservationKey(model, requestId),
		reservedTokens,
		actualTokens,
		...(releaseSlot ? { slotKey: slotKey(model) } : {}),
	};
}

function remaining(windows: readonly { remainingTokens: number }[]): number[] {
	return windows.map((w) => w.remainingTokens);
}

// ---------------------------------------------------------------------------------------------
// The conformance table (tpm 10,000 + tpd 100,000, B = L)

type Step =
	| {
			readonly atUs: number;
			readonly op: "reserve";
			readonly id: string;
			readonly cost: number;
			readonly expect: {
				readonly kind: StoreDecision["kind"];
				readonly remaining: readonly number[];
				readonly retryAfterUs?: number;
				readonly blockingIndex?: number;
			};
	  }
	| {
			readonly atUs: number;
			readonly op: "settle";
			readonly id: string;
			readonly reserved: number;
			readonly actual: number;
			readonly expect: { readonly settled: boolean; readonly remaining: readonly number[] };
	  };

/** Every store must give these exact numbers; they are the pure function's numbers. */
const CONFORMANCE: readonly Step[] = [
	{
		atUs: 0,
		op: "reserve",
		id: "r1",
		cost: 4_000,
		expect: { kind: "admitted", remaining: [6_000, 96_000] },
	},
	{
		atUs: 0,
		op: "reserve",
		id: "r2",
		cost: 7_000,
		expect: {
			kind: "limited",
			retryAfterUs: 6_000_000,
			blockingIndex: 0,
			remaining: [6_000, 96_000],
		},
	},
	{
		atUs: 6_000_000 - 1,
		op: "reserve",
		id: "r2",
		cost: 7_000,
		expect: { kind: "limited", retryAfterUs: 1, blockingIndex: 0, remaining: [6_999, 96_006] },
	},
	{
		atUs: 6_000_000,
		op: "reserve",
		id: "r2",
		cost: 7_000,
		expect: { kind: "admitted", remaining: [0, 89_006] },
	},
	{
		atUs: 6_000_000,
		op: "reserve",
		id: "r3",
		cost: 10_001,
		expect: { kind: "never", blockingIndex: 0, remaining: [0, 89_006] },
	},
	{
		atUs: 6_000_000,
		op: "settle",
		id: "r2",
		reserved: 7_000,
		actual: 1_000,
		expect: { settled: true, remaining: [6_000, 95_006] },
	},
	{
		atUs: 6_000_000,
		op: "settle",
		id: "r2",
		reserved: 7_000,
		actual: 0,
		expect: { settled: false, remaining: [6_000, 95_006] },
	},
	{
		atUs: 6_000_000,
		op: "settle",
		id: "r3",
		reserved: 10_001,
		actual: 0,
		expect: { settled: false, remaining: [6_000, 95_006] },
	},
	{
		atUs: 36_000_000,
		op: "settle",
		id: "r1",
		reserved: 4_000,
		actual: 0,
		// The minute's TAT (t = 30 s) is already behind now: nothing left to refund there.
		expect: { settled: true, remaining: [10_000, 99_041] },
	},
	{
		atUs: 36_000_000,
		op: "reserve",
		id: "r4",
		cost: 10_000,
		expect: { kind: "admitted", remaining: [0, 89_041] },
	},
	{
		atUs: 36_000_000,
		op: "settle",
		id: "r4",
		reserved: 10_000,
		actual: 15_000,
		// Charged past the tolerance: the minute owes 30 s before anything passes.
		expect: { settled: true, remaining: [0, 84_041] },
	},
	{
		atUs: 36_000_000,
		op: "reserve",
		id: "r5",
		cost: 1,
		expect: {
			kind: "limited",
			retryAfterUs: 30_006_000,
			blockingIndex: 0,
			remaining: [0, 84_041],
		},
	},
];

// ---------------------------------------------------------------------------------------------
// Reference model: the pure gcra.ts functions plus the bookkeeping every store must do

/**
 * What a store should do: its own TATs, the pure functions of gcra.ts, the open reservations
 * (what was reserved, by reservation key) and the concurrency leases (expiry per request id).
 */
export class ReferenceModel {
	private readonly tats = new Map<string, number>();
	private readonly open = new Map<string, number>();
	private readonly leases = new Map<string, Map<string, number>>();

	reserve(req: ReserveRequest, now: number): StoreDecision {
		const d = gcraReserve(this.load(req.windows), req.windows, req.costTokens, now);
		if (d.kind === "never") return d;
		if (req.slot !== undefined && this.slotsInUse(req.slot.key, now) >= req.slot.limit) {
			return { kind: "busy", windows: statuses(this.load(req.windows), req.windows, now) };
		}
		if (d.kind !== "admitted") return d;
		req.windows.forEach((w, i) => {
			this.tats.set(windowId(w), d.tats[i] ?? 0);
		});
		this.open.set(req.reservationKey, req.costTokens);
		if (req.slot !== undefined) {
			this.holders(req.slot.key).set(req.requestId, now + req.slot.leaseMs * 1000);
		}
		return { kind: "admitted", windows: d.windows };
	}

	settle(req: SettleRequest, now: number): boolean {
		if (req.slotKey !== undefined) this.holders(req.slotKey).delete(req.requestId);
		const reserved = this.open.get(req.reservationKey);
		if (reserved === undefined) return false;
		this.open.delete(req.reservationKey);
		const next = gcraSettle(this.load(req.windows), req.windows, reserved, req.actualTokens, now);
		req.windows.forEach((w, i) => {
			this.tats.set(windowId(w), next[i] ?? 0);
		});
		return true;
	}

	/**
	 * Whether renewing succeeds: true for a live lease (extended from now), false for one never
	 * taken or already released. A lease that lapsed without being released is not specified
	 * consistently by the stores (see the report); `undefined` says "do not ask".
	 */
	renew(key: string, requestId: string, leaseMs: number, now: number): boolean | undefined {
		const holders = this.holders(key);
		const expiry = holders.get(requestId);
		if (expiry === undefined) return false;
		if (expiry <= now) return undefined;
		holders.set(requestId, now + leaseMs * 1000);
		return true;
	}

	peek(windows: readonly ScopedWindow[], key: string, now: number): StoreSnapshot {
		return {
			windows: statuses(this.load(windows), windows, now),
			slotsInUse: this.slotsInUse(key, now),
		};
	}

	private slotsInUse(key: string, now: number): number {
		let live = 0;
		for (const expiry of this.holders(key).values()) if (expiry > now) live++;
		return live;
	}

	private holders(key: string): Map<string, number> {
		let holders = this.leases.get(key);
		if (holders === undefined) {
			holders = new Map();
			this.leases.set(key, holders);
		}
		return holders;
	}

	private load(windows: readonly ScopedWindow[]): number[] {
		return windows.map((w) => this.tats.get(windowId(w)) ?? 0);
	}
}

// ---------------------------------------------------------------------------------------------
// Arbitraries

/**
 * Windows of three users and one model-wide scope; burst factors 1 and 1.5; one odd W/L; one
 * window so large that its arithmetic leaves the doubles' exact range.
 */
export function poolFor(model: string): ScopedWindow[] {
	return [
		userWindow(model, "minute", "a", 10_000),
		userWindow(model, "hour", "a", 50_000, 75_000),
		userWindow(model, "day", "a", 100_000),
		userWindow(model, "minute", "b", 10_000),
		userWindow(model, "day", "b", 100_000),
		win(windowKey(model, "model", "minute"), MINUTE_US, 15_000),
		win(`trl:{${model}}:odd:m`, 7 * SECOND, 1_300, 1_950), // W/L not an integer
		// τ·L ≈ 9·10^17 > 2^53: statuses need exact arithmetic past doubles (BigInt / Lua's bit loop).
		userWindow(model, "day", "big", 7_000_001, 10_500_000),
		// Counts requests, not tokens: every reserve costs 1 here and settlement leaves it alone.
		{ ...win(`trl:{${model}}:rpm:u:a`, MINUTE_US, 5), perRequest: true },
	];
}
const POOL_SIZE = 9;
const POOL_INDICES = Array.from({ length: POOL_SIZE }, (_, i) => i);

export type Command =
	| { readonly kind: "advance"; readonly us: number }
	| { readonly kind: "reserve"; readonly cost: number; readonly windows: readonly number[] }
	| { readonly kind: "settle"; readonly pick: number; readonly permille: number }
	| { readonly kind: "sweep" };

const advanceArb = fc.record({
	kind: fc.constant("advance" as const),
	us: fc.oneof(
		fc.constant(0),
		fc.integer({ min: 0, max: 2 * SECOND }),
		fc.integer({ min: 0, max: 120 * SECOND }),
	),
});
const windowsArb = fc.oneof(fc.constant(POOL_INDICES), fc.subarray(POOL_INDICES, { minLength: 1 }));
const reserveArb = fc.record({
	kind: fc.constant("reserve" as const),
	cost: fc.integer({ min: 1, max: 12_000 }),
	windows: windowsArb,
});
const settleArb = fc.record({
	kind: fc.constant("settle" as const),
	pick: fc.nat(),
	permille: fc.integer({ min: 0, max: 2_000 }),
});

/**
 * Random advance / reserve / settle sequences over the pool (and sweeps, for the memory store).
 * `size: "max"` makes lengths spread up to `maxLength`; fast-check's default size would stop
 * near 10 commands whatever the maxLength.
 */
export function commandsArb(options: {
	readonly withSweep: boolean;
	readonly maxLength: number;
}): fc.Arbitrary<Command[]> {
	return fc.array(
		options.withSweep
			? fc.oneof(
					advanceArb,
					reserveArb,
					reserveArb,
					settleArb,
					fc.constant({ kind: "sweep" as const }),
				)
			: fc.oneof(advanceArb, reserveArb, reserveArb, settleArb),
		{ minLength: 1, maxLength: options.maxLength, size: "max" },
	);
}

export function pick(pool: readonly ScopedWindow[], indices: readonly number[]): ScopedWindow[] {
	const out: ScopedWindow[] = [];
	for (const i of indices) {
		const w = pool[i];
		if (w === undefined) throw new Error(`no window ${i}`);
		out.push(w);
	}
	return out;
}

export interface Admission {
	readonly id: string;
	readonly windows: readonly ScopedWindow[];
	readonly cost: number;
}

type LeaseCommand =
	| { readonly kind: "advance"; readonly ms: number }
	| {
			readonly kind: "reserve";
			readonly cost: number;
			readonly windows: readonly number[];
			readonly lease: boolean;
	  }
	| {
			readonly kind: "settle";
			readonly pick: number;
			readonly permille: number;
			readonly release: boolean;
	  }
	| { readonly kind: "renew"; readonly pick: number; readonly ghost: boolean };

/**
 * Commands with concurrency leases. Time moves in whole milliseconds: leases are kept to the
 * millisecond in Redis and to the microsecond in memory (see the report).
 */
const leaseCommandsArb = (maxLength: number): fc.Arbitrary<LeaseCommand[]> =>
	fc.array(
		fc.oneof(
			fc.record({
				kind: fc.constant("advance" as const),
				ms: fc.oneof(fc.integer({ min: 0, max: 5_000 }), fc.integer({ min: 0, max: 60_000 })),
			}),
			fc.record({
				kind: fc.constant("reserve" as const),
				cost: fc.integer({ min: 1, max: 6_000 }),
				windows: windowsArb,
				lease: fc.boolean(),
			}),
			fc.record({
				kind: fc.constant("reserve" as const),
				cost: fc.integer({ min: 1, max: 6_000 }),
				windows: windowsArb,
				lease: fc.constant(true),
			}),
			fc.record({
				kind: fc.constant("settle" as const),
				pick: fc.nat(),
				permille: fc.integer({ min: 0, max: 2_000 }),
				release: fc.boolean(),
			}),
			fc.record({ kind: fc.constant("renew" as const), pick: fc.nat(), ghost: fc.boolean() }),
		),
		{ minLength: 1, maxLength, size: "max" },
	);

// ---------------------------------------------------------------------------------------------
// The suite

export interface OpenedStore {
	readonly store: LimitStore;
	/** Runs after `store.close()`. */
	readonly cleanup?: () => Promise<void>;
}

export interface ConformanceOptions {
	/** fast-check runs per property (default 100). */
	readonly numRuns?: number;
	/** Longest command sequence of one run (default 60). */
	readonly maxCommands?: number;
	/** Time limit of each property test (default 60 s). */
	readonly propertyTimeoutMs?: number;
}

/**
 * Registers the conformance table, the concurrency-slot cases and the property tests for one
 * store. `open` is called once (in beforeAll) with the frozen clock the tests move; the store
 * must read time only from it.
 */
export function describeLimitStore(
	name: string,
	open: (clockUs: ClockUs) => Promise<OpenedStore>,
	options: ConformanceOptions = {},
): void {
	const numRuns = options.numRuns ?? 100;
	const maxCommands = options.maxCommands ?? 60;
	const propertyTimeout = options.propertyTimeoutMs ?? 60_000;
	const clock = new FrozenClock();
	let opened: OpenedStore | undefined;

	function store(): LimitStore {
		if (opened === undefined) throw new Error(`${name}: the store did not open`);
		return opened.store;
	}

	describe(name, () => {
		beforeAll(async () => {
			opened = await open(clock.read);
		});
		afterAll(async () => {
			const o = opened;
			opened = undefined;
			if (o === undefined) return;
			await o.store.close();
			await o.cleanup?.();
		});

		describe("conformance table", () => {
			it("gives the pure GCRA's exact numbers for reserve, limit, never, refund and overrun", async () => {
				const s = store();
				const model = freshModel();
				const windows = [
					userWindow(model, "minute", "alice", 10_000),
					userWindow(model, "day", "alice", 100_000),
				];
				const t0 = clock.epoch();
				for (const step of CONFORMANCE) {
					clock.set(t0 + step.atUs);
					const label = `${step.op} ${step.id} at +${step.atUs} µs`;
					if (step.op === "reserve") {
						const d = await s.reserve(reserveRequest(model, step.id, windows, step.cost));
						expect({ label, kind: d.kind }).toEqual({ label, kind: step.expect.kind });
						expect({ label, remaining: remaining(d.windows) }).toEqual({
							label,
							remaining: [...step.expect.remaining],
						});
						type Why = { label: string; retry?: number | undefined; blocking?: number | undefined };
						if (d.kind === "limited") {
							const got: Why = { label, retry: d.retryAfterUs, blocking: d.blockingIndex };
							expect(got).toEqual({
								label,
								retry: step.expect.retryAfterUs,
								blocking: step.expect.blockingIndex,
							});
						}
						if (d.kind === "never") {
							expect("retryAfterUs" in d).toBe(false);
							const got: Why = { label, blocking: d.blockingIndex };
							expect(got).toEqual({ label, blocking: step.expect.blockingIndex });
						}
						if (d.kind === "admitted") expect("tats" in d).toBe(false);
					} else {
						const settled = await s.settle(
							settleRequest(model, step.id, windows, step.reserved, step.actual),
						);
						expect({ label, settled }).toEqual({ label, settled: step.expect.settled });
						const peeked = await s.peek(windows, slotKey(model));
						expect({ label, remaining: remaining(peeked.windows) }).toEqual({
							label,
							remaining: [...step.expect.remaining],
						});
					}
				}
			});

			it("keeps windows of different keys apart", async () => {
				const s = store();
				const model = freshModel();
				clock.epoch();
				const alice = [
					userWindow(model, "minute", "alice", 10_000),
					userWindow(model, "day", "alice", 100_000),
				];
				const bob = [
					userWindow(model, "minute", "bob", 10_000),
					userWindow(model, "day", "bob", 100_000),
				];
				expect((await s.reserve(reserveRequest(model, "a", alice, 10_000))).kind).toBe("admitted");
				const d = await s.reserve(reserveRequest(model, "b", bob, 10_000));
				expect(d.kind).toBe("admitted");
				expect(remaining(d.windows)).toEqual([0, 90_000]);
				// The same user name under another model is another window too.
				const other = freshModel();
				const elsewhere = [userWindow(other, "minute", "alice", 10_000)];
				expect(remaining((await s.peek(elsewhere, slotKey(other))).windows)).toEqual([10_000]);
			});

			it("writes nothing on a limited or never decision", async () => {
				const s = store();
				const model = freshModel();
				clock.epoch();
				const windows = [
					userWindow(model, "minute", "alice", 10_000),
					userWindow(model, "day", "alice", 100_000),
				];
				await s.reserve(reserveRequest(model, "a", windows, 9_000));
				const before = await s.peek(windows, slotKey(model));
				expect((await s.reserve(reserveRequest(model, "b", windows, 2_000))).kind).toBe("limited");
				expect((await s.reserve(reserveRequest(model, "c", windows, 20_000))).kind).toBe("never");
				expect(await s.peek(windows, slotKey(model))).toEqual(before);
				// Neither denied request can be settled: they were never admitted.
				for (const id of ["b", "c"]) {
					expect(await s.settle(settleRequest(model, id, windows, 2_000, 0))).toBe(false);
				}
				expect(await s.peek(windows, slotKey(model))).toEqual(before);
			});
		});

		describe("settle idempotence", () => {
			it("settles a request id once: the second settle returns false and changes nothing", async () => {
				const s = store();
				const model = freshModel();
				clock.epoch();
				const windows = [
					userWindow(model, "minute", "alice", 10_000),
					userWindow(model, "day", "alice", 100_000),
				];
				await s.reserve(reserveRequest(model, "req-1", windows, 4_000));
				clock.advance(2 * SECOND);
				expect(await s.settle(settleRequest(model, "req-1", windows, 4_000, 1_000))).toBe(true);
				const afterFirst = await s.peek(windows, slotKey(model));
				expect(remaining(afterFirst.windows)).toEqual([9_333, 99_002]);
				for (const actual of [0, 1_000, 8_000]) {
					const again = await s.settle(settleRequest(model, "req-1", windows, 4_000, actual));
					expect(again).toBe(false);
					expect(await s.peek(windows, slotKey(model))).toEqual(afterFirst);
				}
			});

			it("returns false for a request id that was never admitted and changes nothing", async () => {
				const s = store();
				const model = freshModel();
				clock.epoch();
				const windows = [
					userWindow(model, "minute", "alice", 10_000),
					userWindow(model, "day", "alice", 100_000),
				];
				await s.reserve(reserveRequest(model, "real", windows, 5_000));
				const before = await s.peek(windows, slotKey(model));
				expect(await s.settle(settleRequest(model, "ghost", windows, 5_000, 0))).toBe(false);
				expect(await s.peek(windows, slotKey(model))).toEqual(before);
			});

			it("charges what was reserved at admission, whatever the settle request claims", async () => {
				const s = store();
				const model = freshModel();
				clock.epoch();
				const windows = [userWindow(model, "minute", "alice", 10_000)];
				await s.reserve(reserveRequest(model, "r", windows, 4_000));
				// The request claims 1,000 reserved; 4,000 were. Refunding to 1,000 leaves 9,000.
				expect(await s.settle(settleRequest(model, "r", windows, 1_000, 1_000))).toBe(true);
				expect(remaining((await s.peek(windows, slotKey(model))).windows)).toEqual([9_000]);
			});
		});

		describe("concurrency slots", () => {
			const LEASE_MS = 30_000;
			const LEASE: LeaseSpec = { limit: 2, leaseMs: LEASE_MS };
			/** Windows wide enough that only the slots decide. */
			const roomy = (model: string) => [userWindow(model, "minute", "u", 1_000_000)];

			it("with slot limit 2, two admits take both slots and a third is busy, charging no window", async () => {
				const s = store();
				const model = freshModel();
				clock.epoch();
				const windows = [
					userWindow(model, "minute", "alice", 10_000),
					userWindow(model, "day", "alice", 100_000),
				];
				expect((await s.peek(windows, slotKey(model))).slotsInUse).toBe(0);
				expect((await s.reserve(reserveRequest(model, "a", windows, 1_000, LEASE))).kind).toBe(
					"admitted",
				);
				expect((await s.peek(windows, slotKey(model))).slotsInUse).toBe(1);
				expect((await s.reserve(reserveRequest(model, "b", windows, 1_000, LEASE))).kind).toBe(
					"admitted",
				);
				const before = await s.peek(windows, slotKey(model));
				expect(before.slotsInUse).toBe(2);
				expect(remaining(before.windows)).toEqual([8_000, 98_000]);

				const busy = await s.reserve(reserveRequest(model, "c", windows, 1_000, LEASE));
				expect(busy).toEqual({ kind: "busy", windows: before.windows });
				expect(await s.peek(windows, slotKey(model))).toEqual(before);
				// A busy request was never admitted: nothing to settle, no slot to free.
				expect(await s.settle(settleRequest(model, "c", windows, 1_000, 0, true))).toBe(false);
				expect(await s.peek(windows, slotKey(model))).toEqual(before);
				// Without a slot request, the same call is decided by the windows alone.
				expect((await s.reserve(reserveRequest(model, "d", windows, 1_000))).kind).toBe("admitted");
			});

			it("settle with slotKey frees the slot; settle without it leaves the lease held", async () => {
				const s = store();
				const model = freshModel();
				clock.epoch();
				const windows = roomy(model);
				const lease: LeaseSpec = { limit: 1, leaseMs: LEASE_MS };
				expect((await s.reserve(reserveRequest(model, "a", windows, 10, lease))).kind).toBe(
					"admitted",
				);
				expect((await s.reserve(reserveRequest(model, "b", windows, 10, lease))).kind).toBe("busy");
				expect(await s.settle(settleRequest(model, "a", windows, 10, 10, false))).toBe(true);
				expect((await s.peek(windows, slotKey(model))).slotsInUse).toBe(1);
				expect((await s.reserve(reserveRequest(model, "b", windows, 10, lease))).kind).toBe("busy");
				// Releasing needs the slot key; a second settle still releases, though it settles nothing.
				expect(await s.settle(settleRequest(model, "a", windows, 10, 10, true))).toBe(false);
				expect((await s.peek(windows, slotKey(model))).slotsInUse).toBe(0);
				expect((await s.reserve(reserveRequest(model, "b", windows, 10, lease))).kind).toBe(
					"admitted",
				);
				expect((await s.reserve(reserveRequest(model, "c", windows, 10, lease))).kind).toBe("busy");
				expect(await s.settle(settleRequest(model, "b", windows, 10, 0, true))).toBe(true);
				expect((await s.reserve(reserveRequest(model, "c", windows, 10, lease))).kind).toBe(
					"admitted",
				);
			});

			it("a lease not renewed lapses exactly leaseMs after it was taken, and the slot is usable again", async () => {
				const s = store();
				const model = freshModel();
				const t0 = clock.epoch();
				const windows = roomy(model);
				const key = slotKey(model);
				expect((await s.reserve(reserveRequest(model, "a", windows, 10, LEASE))).kind).toBe(
					"admitted",
				);
				clock.set(t0 + SECOND);
				expect((await s.reserve(reserveRequest(model, "b", windows, 10, LEASE))).kind).toBe(
					"admitted",
				);
				clock.set(t0 + LEASE_MS * 1000 - 1);
				expect((await s.peek(windows, key)).slotsInUse).toBe(2);
				expect((await s.reserve(reserveRequest(model, "c", windows, 10, LEASE))).kind).toBe("busy");
				clock.set(t0 + LEASE_MS * 1000);
				expect((await s.peek(windows, key)).slotsInUse).toBe(1);
				expect((await s.reserve(reserveRequest(model, "c", windows, 10, LEASE))).kind).toBe(
					"admitted",
				);
				expect((await s.reserve(reserveRequest(model, "d", windows, 10, LEASE))).kind).toBe("busy");
				clock.set(t0 + SECOND + LEASE_MS * 1000);
				expect((await s.peek(windows, key)).slotsInUse).toBe(1);
				// The lapsed request still settles its tokens; releasing its lapsed lease frees nothing more.
				expect(await s.settle(settleRequest(model, "a", windows, 10, 10, true))).toBe(true);
				expect((await s.peek(windows, key)).slotsInUse).toBe(1);
			});

			it("renewSlot extends a held lease from now (true), and is false for an unknown or released request", async () => {
				const s = store();
				const model = freshModel();
				const t0 = clock.epoch();
				const windows = roomy(model);
				const key = slotKey(model);
				const lease: LeaseSpec = { limit: 1, leaseMs: LEASE_MS };
				expect(await s.renewSlot(key, "a", LEASE_MS)).toBe(false); // no slot set yet
				expect((await s.reserve(reserveRequest(model, "a", windows, 10, lease))).kind).toBe(
					"admitted",
				);
				expect(await s.renewSlot(key, "ghost", LEASE_MS)).toBe(false);
				expect(await s.renewSlot(slotKey(freshModel()), "a", LEASE_MS)).toBe(false);
				clock.set(t0 + 20 * SECOND);
				expect(await s.renewSlot(key, "a", LEASE_MS)).toBe(true);
				// Past the first expiry the lease holds: it now runs to t0 + 50 s.
				clock.set(t0 + LEASE_MS * 1000);
				expect((await s.peek(windows, key)).slotsInUse).toBe(1);
				expect((await s.reserve(reserveRequest(model, "b", windows, 10, lease))).kind).toBe("busy");
				clock.set(t0 + 50 * SECOND - 1);
				expect((await s.reserve(reserveRequest(model, "b", windows, 10, lease))).kind).toBe("busy");
				clock.set(t0 + 50 * SECOND);
				expect((await s.peek(windows, key)).slotsInUse).toBe(0);
				expect((await s.reserve(reserveRequest(model, "b", windows, 10, lease))).kind).toBe(
					"admitted",
				);
				// A released lease cannot be renewed.
				expect(await s.settle(settleRequest(model, "b", windows, 10, 10, true))).toBe(true);
				expect(await s.renewSlot(key, "b", LEASE_MS)).toBe(false);
				expect((await s.peek(windows, key)).slotsInUse).toBe(0);
			});

			it("takes a slot in every asked lease set, names the first full one, and releases them all", async () => {
				const s = store();
				const model = freshModel();
				const windows = roomy(model);
				const modelSet = slotKey(model);
				const userSet = `${slotKey(model)}:u:alice`;
				const ask = (id: string) =>
					s.reserve({
						...reserveRequest(model, id, windows, 10, { limit: 5, leaseMs: LEASE_MS }),
						extraSlots: [{ key: userSet, limit: 1, leaseMs: LEASE_MS }],
					});
				expect((await ask("a")).kind).toBe("admitted");
				const busy = await ask("b");
				expect(busy.kind).toBe("busy");
				expect(busy.kind === "busy" ? busy.slotIndex : -1).toBe(1);
				// The refused request took no slot in the model's set either.
				expect((await s.peek(windows, modelSet)).slotsInUse).toBe(1);
				expect(
					await s.settle({
						...settleRequest(model, "a", windows, 10, 10, true),
						extraSlotKeys: [userSet],
					}),
				).toBe(true);
				expect((await s.peek(windows, userSet)).slotsInUse).toBe(0);
				expect((await s.peek(windows, modelSet)).slotsInUse).toBe(0);
				expect((await ask("c")).kind).toBe("admitted");
			});

			it("renewSlot cannot revive a lease that has lapsed, swept or not", async () => {
				const s = store();
				const model = freshModel();
				const t0 = clock.epoch();
				const windows = roomy(model);
				const key = slotKey(model);
				const lease: LeaseSpec = { limit: 1, leaseMs: LEASE_MS };
				expect((await s.reserve(reserveRequest(model, "a", windows, 10, lease))).kind).toBe(
					"admitted",
				);
				clock.set(t0 + LEASE_MS * 1000);
				// Not swept yet (no peek, no full set): still false, and the slot stays free.
				expect(await s.renewSlot(key, "a", LEASE_MS)).toBe(false);
				expect((await s.peek(windows, key)).slotsInUse).toBe(0);
				expect((await s.reserve(reserveRequest(model, "b", windows, 10, lease))).kind).toBe(
					"admitted",
				);
			});

			it("a request that can never fit is never even with every slot taken (never before busy)", async () => {
				const s = store();
				const model = freshModel();
				clock.epoch();
				const windows = [
					userWindow(model, "minute", "alice", 10_000),
					userWindow(model, "day", "alice", 5_000),
				];
				const lease: LeaseSpec = { limit: 1, leaseMs: LEASE_MS };
				expect((await s.reserve(reserveRequest(model, "a", windows, 100, lease))).kind).toBe(
					"admitted",
				);
				const before = await s.peek(windows, slotKey(model));
				const never = await s.reserve(reserveRequest(model, "b", windows, 6_000, lease));
				expect(never).toEqual({ kind: "never", blockingIndex: 1, windows: before.windows });
				expect(await s.peek(windows, slotKey(model))).toEqual(before);
			});

			it("busy comes before limited: with the slots full, a request the windows refuse too is busy", async () => {
				const s = store();
				const model = freshModel();
				clock.epoch();
				const windows = [userWindow(model, "minute", "alice", 10_000)];
				const lease: LeaseSpec = { limit: 1, leaseMs: LEASE_MS };
				expect((await s.reserve(reserveRequest(model, "a", windows, 9_000, lease))).kind).toBe(
					"admitted",
				);
				const before = await s.peek(windows, slotKey(model));
				expect(await s.reserve(reserveRequest(model, "b", windows, 2_000, lease))).toEqual({
					kind: "busy",
					windows: before.windows,
				});
				// With a slot free, the same request is limited, and a limited request takes no slot.
				expect(await s.settle(settleRequest(model, "a", windows, 9_000, 9_000, true))).toBe(true);
				const limited = await s.reserve(reserveRequest(model, "b", windows, 2_000, lease));
				expect(limited.kind).toBe("limited");
				expect((await s.peek(windows, slotKey(model))).slotsInUse).toBe(0);
			});

			it("peek reports slotsInUse of the slot key asked for: live leases of that model only", async () => {
				const s = store();
				const one = freshModel();
				const two = freshModel();
				clock.epoch();
				const lease: LeaseSpec = { limit: 5, leaseMs: LEASE_MS };
				for (const id of ["a", "b", "c"]) {
					expect((await s.reserve(reserveRequest(one, id, roomy(one), 1, lease))).kind).toBe(
						"admitted",
					);
				}
				expect((await s.reserve(reserveRequest(two, "a", roomy(two), 1, lease))).kind).toBe(
					"admitted",
				);
				expect((await s.peek([], slotKey(one))).slotsInUse).toBe(3);
				expect(await s.peek([], slotKey(two))).toEqual({ windows: [], slotsInUse: 1 });
				expect(await s.settle(settleRequest(one, "b", roomy(one), 1, 1, true))).toBe(true);
				expect((await s.peek(roomy(one), slotKey(one))).slotsInUse).toBe(2);
				expect((await s.peek([], slotKey(freshModel()))).slotsInUse).toBe(0);
			});
		});

		describe("properties", () => {
			it(
				"decides every reserve, settle and peek exactly as the pure gcra.ts reference model",
				async () => {
					await fc.assert(
						fc.asyncProperty(
							commandsArb({ withSweep: false, maxLength: maxCommands }),
							async (commands) => {
								const s = store();
								const model = freshModel();
								const pool = poolFor(model);
								const key = slotKey(model);
								clock.epoch();
								const ref = new ReferenceModel();
								const admissions: Admission[] = [];
								let n = 0;
								for (const cmd of commands) {
									n++;
									if (cmd.kind === "advance") {
										clock.advance(cmd.us);
									} else if (cmd.kind === "reserve") {
										const req = reserveRequest(
											model,
											`req-${n}`,
											pick(pool, cmd.windows),
											cmd.cost,
										);
										const got = await s.reserve(req);
										expect(got).toEqual(ref.reserve(req, clock.now));
										if (got.kind === "admitted") {
											admissions.push({ id: req.requestId, windows: req.windows, cost: cmd.cost });
										}
									} else if (cmd.kind === "settle") {
										const a = admissions[cmd.pick % Math.max(1, admissions.length)];
										const target = a ?? { id: `ghost-${n}`, windows: pick(pool, [0]), cost: 10 };
										const actual = Math.floor((target.cost * cmd.permille) / 1_000);
										const req = settleRequest(
											model,
											target.id,
											target.windows,
											target.cost,
											actual,
										);
										expect(await s.settle(req)).toBe(ref.settle(req, clock.now));
									}
									expect(await s.peek(pool, key)).toEqual(ref.peek(pool, key, clock.now));
								}
							},
						),
						{ numRuns },
					);
				},
				propertyTimeout,
			);

			it(
				"decides reserves with concurrency leases, settles, renewals and peeks exactly as the reference model",
				async () => {
					await fc.assert(
						fc.asyncProperty(
							fc.integer({ min: 1, max: 3 }),
							fc.integer({ min: 10, max: 40 }),
							leaseCommandsArb(maxCommands),
							async (limit, leaseSeconds, commands) => {
								const s = store();
								const model = freshModel();
								const pool = poolFor(model);
								const key = slotKey(model);
								const lease: LeaseSpec = { limit, leaseMs: leaseSeconds * 1000 };
								clock.epoch();
								const ref = new ReferenceModel();
								const admissions: (Admission & { readonly leased: boolean })[] = [];
								let n = 0;
								for (const cmd of commands) {
									n++;
									if (cmd.kind === "advance") {
										clock.advance(cmd.ms * 1000);
									} else if (cmd.kind === "reserve") {
										const req = reserveRequest(
											model,
											`req-${n}`,
											pick(pool, cmd.windows),
											cmd.cost,
											cmd.lease ? lease : undefined,
										);
										const got = await s.reserve(req);
										expect(got).toEqual(ref.reserve(req, clock.now));
										if (got.kind === "admitted") {
											admissions.push({
												id: req.requestId,
												windows: req.windows,
												cost: cmd.cost,
												leased: cmd.lease,
											});
										}
									} else if (cmd.kind === "settle") {
										const target = admissions[cmd.pick % Math.max(1, admissions.length)];
										if (target !== undefined) {
											const actual = Math.floor((target.cost * cmd.permille) / 1_000);
											const req = settleRequest(
												model,
												target.id,
												target.windows,
												target.cost,
												actual,
												cmd.release,
											);
											expect(await s.settle(req)).toBe(ref.settle(req, clock.now));
										}
									} else {
										const target = admissions[cmd.pick % Math.max(1, admissions.length)];
										const id = cmd.ghost || target === undefined ? `ghost-${n}` : target.id;
										const want = ref.renew(key, id, lease.leaseMs, clock.now);
										if (want !== undefined) {
											expect(await s.renewSlot(key, id, lease.leaseMs)).toBe(want);
										}
									}
									expect(await s.peek(pool, key)).toEqual(ref.peek(pool, key, clock.now));
								}
							},
						),
						{ numRuns },
					);
				},
				propertyTimeout,
			);

			it(
				"with reserves only, never admits more than B + t·L/W tokens in any span of length t, per window",
				async () => {
					const stepArb = fc.record({
						advanceUs: fc.oneof(
							fc.constant(0),
							fc.integer({ min: 0, max: 5 * SECOND }),
							fc.integer({ min: 0, max: 120 * SECOND }),
						),
						cost: fc.integer({ min: 1, max: 1_200 }),
						subset: fc.subarray([0, 1, 2], { minLength: 1 }),
					});
					await fc.assert(
						fc.asyncProperty(
							fc.array(stepArb, { minLength: 1, maxLength: maxCommands, size: "max" }),
							async (steps) => {
								const s = store();
								const model = freshModel();
								const windows: readonly ScopedWindow[] = [
									userWindow(model, "minute", "u", 1_000),
									userWindow(model, "hour", "u", 5_000),
									// W/L = 46,153.8… µs: rounding matters
									win(`trl:{${model}}:odd:u:u`, MINUTE_US, 1_300, 1_950),
								];
								clock.epoch();
								/** Per window: (time, cost) of every admission that charged it. */
								const charged: { at: number; cost: number }[][] = windows.map(() => []);
								let n = 0;
								for (const step of steps) {
									clock.advance(step.advanceUs);
									const ws = pick(windows, step.subset);
									const d = await s.reserve(reserveRequest(model, `r${n++}`, ws, step.cost));
									if (d.kind !== "admitted") continue;
									for (const i of step.subset) charged[i]?.push({ at: clock.now, cost: step.cost });
								}
								windows.forEach((w, wi) => {
									const events = charged[wi] ?? [];
									const W = BigInt(w.windowUs);
									const L = BigInt(w.limitTokens);
									const B = BigInt(w.burstTokens);
									const exact = w.windowUs % w.limitTokens === 0;
									for (let i = 0; i < events.length; i++) {
										const first = events[i];
										if (first === undefined) continue;
										let sum = 0n;
										for (let j = i; j < events.length; j++) {
											const last = events[j];
											if (last === undefined) continue;
											sum += BigInt(last.cost);
											const t = BigInt(last.at - first.at);
											// S ≤ B + t·L/W, i.e. S·W ≤ B·W + t·L; one token of ceil rounding
											// allowed when W/L is not an integer.
											const bound = B * W + t * L + (exact ? 0n : W - 1n);
											if (sum * W > bound) {
												throw new Error(
													`${windowId(w)}: ${sum} tokens admitted within ${t} µs (B=${B}, L=${L}, W=${W})`,
												);
											}
										}
									}
								});
							},
						),
						{ numRuns },
					);
				},
				propertyTimeout,
			);

			it("admits close to the bound when pushed: the property is not vacuous", async () => {
				const s = store();
				const model = freshModel();
				const w = userWindow(model, "minute", "u", 1_000);
				const t0 = clock.epoch();
				let admittedTokens = 0;
				// 100 tokens asked three times a second for two minutes: B + 120 s · L/W = 3,000.
				for (let sec = 0; sec <= 120; sec++) {
					clock.set(t0 + sec * SECOND);
					for (let k = 0; k < 3; k++) {
						const d = await s.reserve(reserveRequest(model, `r${sec}-${k}`, [w], 100));
						if (d.kind === "admitted") admittedTokens += 100;
					}
				}
				expect(admittedTokens).toBe(3_000);
			});
		});
	});
}
