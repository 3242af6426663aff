import { describe, expect, it } from "bun:test";
import fc from "fast-check";
import { reserve as gcraReserve, settle as gcraSettle, statuses } from "./gcra.ts";
import { MemoryLimitStore } from "./memory-store.ts";
import type { ScopedWindow, StoreDecision } from "./store.ts";

/** Epoch-scale "t = 0" in microseconds. */
const T0 = 1_800_000_000_000_000;
const SECOND = 1_000_000;
const MINUTE_US = 60 * SECOND;
const HOUR_US = 60 * MINUTE_US;
const DAY_US = 24 * HOUR_US;

/** A store on a clock the test moves by hand. */
function frozenStore(start = T0): { store: MemoryLimitStore; clock: { now: number } } {
	const clock = { now: start };
	return { store: new MemoryLimitStore(() => clock.now), clock };
}

function win(key: string, windowUs: number, limitTokens: number, burstTokens = limitTokens) {
	const w: ScopedWindow = { key, windowUs, limitTokens, burstTokens };
	return w;
}

const TPM = win("{llama2-7b}:user:alice:minute", MINUTE_US, 10_000);
const TPD = win("{llama2-7b}:user:alice:day", DAY_US, 100_000);
const SEED_WINDOWS: readonly ScopedWindow[] = [TPM, TPD];

function remaining(d: StoreDecision): number[] {
	return d.windows.map((w) => w.remainingTokens);
}

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

/**
 * The conformance table (tpm 10,000 + tpd 100,000, B = L). Every store must give
 * these exact numbers; they are the pure function's numbers.
 */
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

describe("MemoryLimitStore conformance table", () => {
	it("gives the pure GCRA's exact numbers for reserve, limit, never, refund and overrun", async () => {
		const { store, clock } = frozenStore();
		try {
			for (const step of CONFORMANCE) {
				clock.now = T0 + step.atUs;
				const label = `${step.op} ${step.id} at +${step.atUs} µs`;
				if (step.op === "reserve") {
					const d = await store.reserve({
						requestId: step.id,
						windows: SEED_WINDOWS,
						costTokens: step.cost,
					});
					expect({ label, kind: d.kind }).toEqual({ label, kind: step.expect.kind });
					expect({ label, remaining: remaining(d) }).toEqual({
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
					const settled = await store.settle({
						requestId: step.id,
						windows: SEED_WINDOWS,
						reservedTokens: step.reserved,
						actualTokens: step.actual,
					});
					expect({ label, settled }).toEqual({ label, settled: step.expect.settled });
					const peeked = (await store.peek(SEED_WINDOWS)).map((s) => s.remainingTokens);
					expect({ label, remaining: peeked }).toEqual({
						label,
						remaining: [...step.expect.remaining],
					});
				}
			}
		} finally {
			await store.close();
		}
	});

	it("keeps windows of different keys apart", async () => {
		const { store } = frozenStore();
		try {
			const bob = [
				win("{llama2-7b}:user:bob:minute", MINUTE_US, 10_000),
				win("{llama2-7b}:user:bob:day", DAY_US, 100_000),
			];
			expect(
				(await store.reserve({ requestId: "a", windows: SEED_WINDOWS, costTokens: 10_000 })).kind,
			).toBe("admitted");
			const d = await store.reserve({ requestId: "b", windows: bob, costTokens: 10_000 });
			expect(d.kind).toBe("admitted");
			expect(remaining(d)).toEqual([0, 90_000]);
			expect(store.size).toBe(4);
		} finally {
			await store.close();
		}
	});

	it("writes nothing on a limited or never decision", async () => {
		const { store } = frozenStore();
		try {
			await store.reserve({ requestId: "a", windows: SEED_WINDOWS, costTokens: 9_000 });
			const before = await store.peek(SEED_WINDOWS);
			expect(
				(await store.reserve({ requestId: "b", windows: SEED_WINDOWS, costTokens: 2_000 })).kind,
			).toBe("limited");
			expect(
				(await store.reserve({ requestId: "c", windows: SEED_WINDOWS, costTokens: 20_000 })).kind,
			).toBe("never");
			expect(await store.peek(SEED_WINDOWS)).toEqual(before);
			// Neither denied request can be settled: they were never admitted.
			for (const id of ["b", "c"]) {
				expect(
					await store.settle({
						requestId: id,
						windows: SEED_WINDOWS,
						reservedTokens: 2_000,
						actualTokens: 0,
					}),
				).toBe(false);
			}
			expect(await store.peek(SEED_WINDOWS)).toEqual(before);
		} finally {
			await store.close();
		}
	});
});

describe("MemoryLimitStore settle idempotence", () => {
	it("settles a request id once: the second settle returns false and changes nothing", async () => {
		const { store, clock } = frozenStore();
		try {
			await store.reserve({ requestId: "req-1", windows: SEED_WINDOWS, costTokens: 4_000 });
			clock.now += 2 * SECOND;
			const first = await store.settle({
				requestId: "req-1",
				windows: SEED_WINDOWS,
				reservedTokens: 4_000,
				actualTokens: 1_000,
			});
			expect(first).toBe(true);
			const afterFirst = await store.peek(SEED_WINDOWS);
			expect(afterFirst.map((s) => s.remainingTokens)).toEqual([9_333, 99_002]);
			for (const actual of [0, 1_000, 8_000]) {
				const again = await store.settle({
					requestId: "req-1",
					windows: SEED_WINDOWS,
					reservedTokens: 4_000,
					actualTokens: actual,
				});
				expect(again).toBe(false);
				expect(await store.peek(SEED_WINDOWS)).toEqual(afterFirst);
			}
		} finally {
			await store.close();
		}
	});

	it("returns false for a request id that was never admitted and changes nothing", async () => {
		const { store } = frozenStore();
		try {
			await store.reserve({ requestId: "real", windows: SEED_WINDOWS, costTokens: 5_000 });
			const before = await store.peek(SEED_WINDOWS);
			const ghost = await store.settle({
				requestId: "ghost",
				windows: SEED_WINDOWS,
				reservedTokens: 5_000,
				actualTokens: 0,
			});
			expect(ghost).toBe(false);
			expect(await store.peek(SEED_WINDOWS)).toEqual(before);
		} finally {
			await store.close();
		}
	});

	it("forgets an unsettled reservation after 24 h (swept), and not a microsecond before", async () => {
		const { store, clock } = frozenStore();
		try {
			await store.reserve({ requestId: "kept", windows: [TPM], costTokens: 1 });
			await store.reserve({ requestId: "lost", windows: [TPM], costTokens: 1 });
			clock.now = T0 + DAY_US - 1;
			store.sweep();
			const req = { windows: [TPM], reservedTokens: 1, actualTokens: 1 };
			expect(await store.settle({ requestId: "kept", ...req })).toBe(true);
			clock.now = T0 + DAY_US;
			store.sweep();
			expect(await store.settle({ requestId: "lost", ...req })).toBe(false);
		} finally {
			await store.close();
		}
	});
});

// ---------------------------------------------------------------------------
// Property tests against a reference model built directly on gcra.ts.

/** Windows of two users and one model-wide scope; burst factors 1 and 1.5. */
const POOL: readonly ScopedWindow[] = [
	win("{m}:user:a:minute", MINUTE_US, 10_000),
	win("{m}:user:a:hour", HOUR_US, 50_000, 75_000),
	win("{m}:user:a:day", DAY_US, 100_000),
	win("{m}:user:b:minute", MINUTE_US, 10_000),
	win("{m}:user:b:day", DAY_US, 100_000),
	win("{m}:model:minute", MINUTE_US, 15_000),
	win("{m}:model:odd", 7 * SECOND, 1_300, 1_950), // W/L not an integer
];

type Command =
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
const reserveArb = fc.record({
	kind: fc.constant("reserve" as const),
	cost: fc.integer({ min: 1, max: 12_000 }),
	windows: fc.oneof(
		fc.constant(POOL.map((_, i) => i)),
		fc.subarray(
			POOL.map((_, i) => i),
			{ minLength: 1 },
		),
	),
});
const settleArb = fc.record({
	kind: fc.constant("settle" as const),
	pick: fc.nat(),
	permille: fc.integer({ min: 0, max: 2_000 }),
});
const commandsArb = (withSweep: boolean): fc.Arbitrary<Command[]> =>
	fc.array(
		withSweep
			? fc.oneof(
					advanceArb,
					reserveArb,
					reserveArb,
					settleArb,
					fc.constant({ kind: "sweep" as const }),
				)
			: fc.oneof(advanceArb, reserveArb, reserveArb, settleArb),
		{ minLength: 1, maxLength: 60 },
	);

function pick(indices: readonly number[]): ScopedWindow[] {
	const out: ScopedWindow[] = [];
	for (const i of indices) {
		const w = POOL[i];
		if (w === undefined) throw new Error(`no window ${i}`);
		out.push(w);
	}
	return out;
}

/** What a store should do: its own TATs, the pure functions, nothing else. */
class ReferenceModel {
	readonly tats = new Map<string, number>();
	readonly open = new Set<string>();

	reserve(id: string, windows: readonly ScopedWindow[], cost: number, now: number): StoreDecision {
		const d = gcraReserve(this.load(windows), windows, cost, now);
		if (d.kind !== "admitted") return d;
		windows.forEach((w, i) => {
			this.tats.set(w.key, d.tats[i] ?? 0);
		});
		this.open.add(id);
		return { kind: "admitted", windows: d.windows };
	}

	settle(
		id: string,
		windows: readonly ScopedWindow[],
		reserved: number,
		actual: number,
		now: number,
	): boolean {
		if (!this.open.delete(id)) return false;
		const next = gcraSettle(this.load(windows), windows, reserved, actual, now);
		windows.forEach((w, i) => {
			this.tats.set(w.key, next[i] ?? 0);
		});
		return true;
	}

	peek(windows: readonly ScopedWindow[], now: number) {
		return statuses(this.load(windows), windows, now);
	}

	private load(windows: readonly ScopedWindow[]): number[] {
		return windows.map((w) => this.tats.get(w.key) ?? 0);
	}
}

interface Admission {
	readonly id: string;
	readonly windows: readonly ScopedWindow[];
	readonly cost: number;
}

describe("MemoryLimitStore properties", () => {
	it("decides every reserve and settle exactly as the pure gcra.ts reference model", async () => {
		await fc.assert(
			fc.asyncProperty(commandsArb(false), async (commands) => {
				const { store, clock } = frozenStore();
				const model = new ReferenceModel();
				const admissions: Admission[] = [];
				try {
					let n = 0;
					for (const cmd of commands) {
						n++;
						if (cmd.kind === "advance") {
							clock.now += cmd.us;
						} else if (cmd.kind === "reserve") {
							const windows = pick(cmd.windows);
							const id = `req-${n}`;
							const got = await store.reserve({ requestId: id, windows, costTokens: cmd.cost });
							const want = model.reserve(id, windows, cmd.cost, clock.now);
							expect(got).toEqual(want);
							if (got.kind === "admitted") admissions.push({ id, windows, cost: cmd.cost });
						} else if (cmd.kind === "settle") {
							const a = admissions[cmd.pick % Math.max(1, admissions.length)];
							const target: Admission = a ?? { id: `ghost-${n}`, windows: pick([0]), cost: 10 };
							const actual = Math.floor((target.cost * cmd.permille) / 1_000);
							const req = {
								requestId: target.id,
								windows: target.windows,
								reservedTokens: target.cost,
								actualTokens: actual,
							};
							const got = await store.settle(req);
							const want = model.settle(target.id, target.windows, target.cost, actual, clock.now);
							expect(got).toBe(want);
						}
						expect(await store.peek(POOL)).toEqual(model.peek(POOL, clock.now));
					}
				} finally {
					await store.close();
				}
			}),
			{ numRuns: 200 },
		);
	});

	it("with reserves only, never admits more than B + t·L/W tokens in any span of length t, per window", async () => {
		const windows: readonly ScopedWindow[] = [
			win("{m}:u:minute", MINUTE_US, 1_000),
			win("{m}:u:hour", HOUR_US, 5_000),
			win("{m}:u:odd", MINUTE_US, 1_300, 1_950), // W/L = 46,153.8… µs: rounding matters
		];
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
			fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 80 }), async (steps) => {
				const { store, clock } = frozenStore();
				/** Per window: (time, cost) of every admission that charged it. */
				const charged: { at: number; cost: number }[][] = windows.map(() => []);
				try {
					let n = 0;
					for (const step of steps) {
						clock.now += step.advanceUs;
						const ws = step.subset.map((i) => windows[i]).filter((w) => w !== undefined);
						const d = await store.reserve({
							requestId: `r${n++}`,
							windows: ws,
							costTokens: step.cost,
						});
						if (d.kind !== "admitted") continue;
						for (const i of step.subset) charged[i]?.push({ at: clock.now, cost: step.cost });
					}
				} finally {
					await store.close();
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
									`${w.key}: ${sum} tokens admitted within ${t} µs (B=${B}, L=${L}, W=${W})`,
								);
							}
						}
					}
				});
			}),
			{ numRuns: 200 },
		);
	});

	it("admits close to the bound when pushed: the property is not vacuous", async () => {
		const { store, clock } = frozenStore();
		const w = win("{m}:u:minute", MINUTE_US, 1_000);
		let admittedTokens = 0;
		try {
			// 100 tokens asked every second for two minutes: B + 120 s · L/W = 3,000.
			for (let s = 0; s <= 120; s++) {
				clock.now = T0 + s * SECOND;
				for (let k = 0; k < 3; k++) {
					const d = await store.reserve({ requestId: `r${s}-${k}`, windows: [w], costTokens: 100 });
					if (d.kind === "admitted") admittedTokens += 100;
				}
			}
		} finally {
			await store.close();
		}
		expect(admittedTokens).toBe(3_000);
	});
});

describe("MemoryLimitStore sweep", () => {
	it("drops drained windows (size falls to 0 once time passes every TAT) and keeps the rest", async () => {
		const { store, clock } = frozenStore();
		try {
			const windows = [TPM, TPD, win("{llama2-7b}:model:minute", MINUTE_US, 20_000)];
			await store.reserve({ requestId: "a", windows, costTokens: 6_000 });
			expect(store.size).toBe(3);
			// TATs: model minute at 18 s, user minute at 36 s, day at 5,184 s.
			clock.now = T0 + 18 * SECOND - 1;
			store.sweep();
			expect(store.size).toBe(3);
			clock.now = T0 + 18 * SECOND;
			store.sweep();
			expect(store.size).toBe(2);
			clock.now = T0 + 36 * SECOND;
			store.sweep();
			expect(store.size).toBe(1);
			clock.now = T0 + 5_184 * SECOND - 1;
			store.sweep();
			expect(store.size).toBe(1);
			clock.now = T0 + 5_184 * SECOND; // the day's TAT
			store.sweep();
			expect(store.size).toBe(0);
			// A swept window starts fresh: full capacity.
			expect((await store.peek(windows)).map((s) => s.remainingTokens)).toEqual([
				10_000, 100_000, 20_000,
			]);
		} finally {
			await store.close();
		}
	});

	it("never changes a decision: a swept store and an unswept twin decide identically", async () => {
		await fc.assert(
			fc.asyncProperty(commandsArb(true), async (commands) => {
				const swept = frozenStore();
				const twin = frozenStore();
				const admissions: Admission[] = [];
				try {
					let n = 0;
					for (const cmd of commands) {
						n++;
						if (cmd.kind === "advance") {
							swept.clock.now += cmd.us;
							twin.clock.now += cmd.us;
						} else if (cmd.kind === "sweep") {
							const before = swept.store.size;
							swept.store.sweep();
							expect(swept.store.size).toBeLessThanOrEqual(before);
						} else if (cmd.kind === "reserve") {
							const req = {
								requestId: `req-${n}`,
								windows: pick(cmd.windows),
								costTokens: cmd.cost,
							};
							const a = await swept.store.reserve(req);
							expect(a).toEqual(await twin.store.reserve(req));
							if (a.kind === "admitted") {
								admissions.push({ id: req.requestId, windows: req.windows, cost: cmd.cost });
							}
						} else {
							const target = admissions[cmd.pick % Math.max(1, admissions.length)];
							if (target === undefined) continue;
							const req = {
								requestId: target.id,
								windows: target.windows,
								reservedTokens: target.cost,
								actualTokens: Math.floor((target.cost * cmd.permille) / 1_000),
							};
							expect(await swept.store.settle(req)).toBe(await twin.store.settle(req));
						}
						expect(await swept.store.peek(POOL)).toEqual(await twin.store.peek(POOL));
					}
					// Past every TAT, a sweep empties the store.
					swept.clock.now += 10 * DAY_US;
					swept.store.sweep();
					expect(swept.store.size).toBe(0);
				} finally {
					await swept.store.close();
					await twin.store.close();
				}
			}),
			{ numRuns: 200 },
		);
	});
});
