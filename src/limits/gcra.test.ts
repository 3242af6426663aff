import { describe, expect, it } from "bun:test";
import fc from "fast-check";
import {
	incrementUs,
	mulDivCeil,
	mulDivFloor,
	type ReserveDecision,
	reserve,
	settle,
	statuses,
	toleranceUs,
	type WindowSpec,
	windowStatus,
} from "./gcra.ts";

/** Epoch-scale "t = 0" in microseconds (2027-01-15), far above 2^53 / 10^4. */
const T0 = 1_800_000_000_000_000;
const SECOND = 1_000_000;

const MINUTE: WindowSpec = { windowUs: 60_000_000, limitTokens: 10_000, burstTokens: 10_000 };
const DAY: WindowSpec = { windowUs: 86_400_000_000, limitTokens: 100_000, burstTokens: 100_000 };
const WINDOWS: readonly WindowSpec[] = [MINUTE, DAY];
const FRESH: readonly number[] = [0, 0];

function admitted(d: ReserveDecision): Extract<ReserveDecision, { kind: "admitted" }> {
	if (d.kind !== "admitted") throw new Error(`expected admitted, got ${JSON.stringify(d)}`);
	return d;
}

function limited(d: ReserveDecision): Extract<ReserveDecision, { kind: "limited" }> {
	if (d.kind !== "limited") throw new Error(`expected limited, got ${JSON.stringify(d)}`);
	return d;
}

function never(d: ReserveDecision): Extract<ReserveDecision, { kind: "never" }> {
	if (d.kind !== "never") throw new Error(`expected never, got ${JSON.stringify(d)}`);
	return d;
}

function remaining(d: ReserveDecision): number[] {
	return d.windows.map((w) => w.remainingTokens);
}

describe("gcra arithmetic", () => {
	it("charges a cost as ceil(c·W/L) and tolerates ceil(B·W/L)", () => {
		expect(incrementUs(4_000, MINUTE)).toBe(24_000_000);
		expect(incrementUs(4_000, DAY)).toBe(3_456_000_000);
		expect(toleranceUs(MINUTE)).toBe(60_000_000);
		expect(toleranceUs(DAY)).toBe(86_400_000_000);
		// W/L not an integer: 1 token of 7 per second costs ceil(1e6/7).
		const odd: WindowSpec = { windowUs: SECOND, limitTokens: 7, burstTokens: 7 };
		expect(incrementUs(1, odd)).toBe(142_858);
		expect(toleranceUs(odd)).toBe(1_000_000);
	});

	it("mulDivCeil and mulDivFloor are exact for products above 2^53 (checked against BigInt)", () => {
		const cases: [number, number, number][] = [
			[T0, 100_000, 86_400_000_000],
			[2 ** 40 + 3, 86_400_000_000, 86_400_000_001],
			[Number.MAX_SAFE_INTEGER, 3, 7],
			[94_906_267, 94_906_267, 3], // product just above 2^53
			[86_400_000_000, 86_400_000_000, 86_400_000_001],
		];
		for (const [a, b, d] of cases) {
			const big = BigInt(a) * BigInt(b);
			expect(big > BigInt(Number.MAX_SAFE_INTEGER)).toBe(true);
			expect(big / BigInt(d) <= BigInt(Number.MAX_SAFE_INTEGER)).toBe(true);
			const floor = big / BigInt(d);
			const ceil = big % BigInt(d) === 0n ? floor : floor + 1n;
			expect(BigInt(mulDivFloor(a, b, d))).toBe(floor);
			expect(BigInt(mulDivCeil(a, b, d))).toBe(ceil);
		}
	});

	it("mulDivCeil and mulDivFloor equal the BigInt result for any safe operands", () => {
		const operand = fc.oneof(
			fc.integer({ min: 0, max: 1_000_000 }),
			fc.integer({ min: 0, max: 2 ** 32 }),
			fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
		);
		fc.assert(
			fc.property(
				operand,
				operand,
				fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
				(a, b, d) => {
					const big = BigInt(a) * BigInt(b);
					const floor = big / BigInt(d);
					const ceil = big % BigInt(d) === 0n ? floor : floor + 1n;
					// Only results that fit a safe integer are meaningful as numbers.
					fc.pre(ceil <= BigInt(Number.MAX_SAFE_INTEGER));
					expect(BigInt(mulDivFloor(a, b, d))).toBe(floor);
					expect(BigInt(mulDivCeil(a, b, d))).toBe(ceil);
				},
			),
			{ numRuns: 500 },
		);
	});
});

describe("gcra reserve (tpm 10,000 + tpd 100,000, B = L, time frozen)", () => {
	it("admits 4,000 on fresh windows, leaving 6,000 of the minute and 96,000 of the day", () => {
		const d = admitted(reserve(FRESH, WINDOWS, 4_000, T0));
		expect(d.tats).toEqual([T0 + 24_000_000, T0 + 3_456_000_000]);
		expect(remaining(d)).toEqual([6_000, 96_000]);
		expect(d.windows[0]).toEqual({
			limitTokens: 10_000,
			burstTokens: 10_000,
			remainingTokens: 6_000,
			usedTokens: 4_000,
			resetUs: 24_000_000,
		});
		expect(d.windows[1]?.usedTokens).toBe(4_000);
		expect(d.windows[1]?.resetUs).toBe(3_456_000_000);
	});

	it("rejects 7,000 right after with retry-after exactly 6 s, blamed on the minute, changing nothing", () => {
		const after4k = admitted(reserve(FRESH, WINDOWS, 4_000, T0)).tats;
		const frozen = [...after4k];
		const d = limited(reserve(after4k, WINDOWS, 7_000, T0));
		expect(d.retryAfterUs).toBe(6_000_000);
		expect(d.blockingIndex).toBe(0);
		expect("tats" in d).toBe(false);
		expect(after4k).toEqual(frozen);
		// The statuses describe the untouched state.
		expect(remaining(d)).toEqual([6_000, 96_000]);
	});

	it("admits the same 7,000 at t = 6 s, leaving the minute empty", () => {
		const after4k = admitted(reserve(FRESH, WINDOWS, 4_000, T0)).tats;
		const d = admitted(reserve(after4k, WINDOWS, 7_000, T0 + 6 * SECOND));
		expect(d.tats).toEqual([T0 + 66_000_000, T0 + 3_456_000_000 + 6_048_000_000]);
		// The day has drained 6 s worth (6.94 tokens) since t = 0: floor(89,006.94).
		expect(remaining(d)).toEqual([0, 89_006]);
	});

	it("passes a retry at exactly now + retryAfterUs and fails it 1 µs earlier", () => {
		const after4k = admitted(reserve(FRESH, WINDOWS, 4_000, T0));
		const wait = limited(reserve(after4k.tats, WINDOWS, 7_000, T0)).retryAfterUs;
		const early = limited(reserve(after4k.tats, WINDOWS, 7_000, T0 + wait - 1));
		expect(early.retryAfterUs).toBe(1);
		expect(early.blockingIndex).toBe(0);
		admitted(reserve(after4k.tats, WINDOWS, 7_000, T0 + wait));
	});

	it("says never for 10,001 tokens (over the minute's whole capacity), blaming the minute", () => {
		const d = never(reserve(FRESH, WINDOWS, 10_001, T0));
		expect(d.blockingIndex).toBe(0);
		expect("retryAfterUs" in d).toBe(false);
		expect(remaining(d)).toEqual([10_000, 100_000]);
		// Exactly the capacity still fits.
		admitted(reserve(FRESH, WINDOWS, 10_000, T0));
	});

	it("says never rather than limited even when the windows are also busy", () => {
		const full = admitted(reserve(FRESH, WINDOWS, 10_000, T0)).tats;
		expect(never(reserve(full, WINDOWS, 10_001, T0)).blockingIndex).toBe(0);
	});

	it("names the day window when only the day can never fit the cost", () => {
		const roomyMinute: WindowSpec = {
			windowUs: 60_000_000,
			limitTokens: 1_000_000,
			burstTokens: 1_000_000,
		};
		expect(never(reserve([0, 0], [roomyMinute, DAY], 100_001, T0)).blockingIndex).toBe(1);
	});

	it("never admits past the day window even when the minute has room", () => {
		// Spend 10,000 each minute; the day (100,000) runs out after ten of them.
		let tats: number[] = [...FRESH];
		let now = T0;
		for (let i = 0; i < 10; i++) {
			tats = admitted(reserve(tats, WINDOWS, 10_000, now)).tats;
			now += 60 * SECOND;
		}
		const d = limited(reserve(tats, WINDOWS, 10_000, now));
		expect(d.blockingIndex).toBe(1);
		expect(remaining(d)[0]).toBe(10_000);
		// The day refills at 100,000 tokens / 86,400 s: room for 10,000 more comes back
		// 8,640 s after the first spend.
		expect(d.retryAfterUs).toBe(8_640 * SECOND - 600 * SECOND);
		expect(now + d.retryAfterUs).toBe(T0 + 8_640 * SECOND);
	});

	it("reports the largest wait over all windows as retry-after", () => {
		const tats = [T0 + 60_000_000, T0 + 86_400_000_000 + 5 * SECOND];
		const d = limited(reserve(tats, WINDOWS, 1, T0));
		expect(d.blockingIndex).toBe(1);
		expect(d.retryAfterUs).toBe(5 * SECOND + 864_000);
	});

	it("lets a burst factor B > L admit up to B at once and no more", () => {
		const bursty: WindowSpec = { windowUs: 60_000_000, limitTokens: 1_000, burstTokens: 3_000 };
		expect(toleranceUs(bursty)).toBe(180_000_000);
		const d = admitted(reserve([0], [bursty], 3_000, T0));
		expect(d.tats).toEqual([T0 + 180_000_000]);
		expect(remaining(d)).toEqual([0]);
		const next = limited(reserve(d.tats, [bursty], 1, T0));
		expect(next.retryAfterUs).toBe(60_000); // one token's emission interval
		expect(never(reserve([0], [bursty], 3_001, T0)).blockingIndex).toBe(0);
	});
});

describe("gcra settle", () => {
	it("refunds unused tokens without raising remaining above the burst capacity", () => {
		const tats = admitted(reserve(FRESH, WINDOWS, 4_000, T0)).tats;
		// Immediately: the full refund restores exactly the capacity.
		const now = settle(tats, WINDOWS, 4_000, 0, T0);
		expect(now).toEqual([T0, T0]);
		expect(statuses(now, WINDOWS, T0).map((s) => s.remainingTokens)).toEqual([10_000, 100_000]);
		// 10 s later the minute has partly drained; the refund stops at now.
		const later = T0 + 10 * SECOND;
		const refunded = settle(tats, WINDOWS, 4_000, 0, later);
		expect(refunded).toEqual([later, later]);
		const st = statuses(refunded, WINDOWS, later);
		expect(st.map((s) => s.remainingTokens)).toEqual([10_000, 100_000]);
		expect(st.map((s) => s.usedTokens)).toEqual([0, 0]);
		// And the refunded capacity is real but no larger: 10,000 fits, 1 more does not.
		const spent = admitted(reserve(refunded, WINDOWS, 10_000, later)).tats;
		limited(reserve(spent, WINDOWS, 1, later));
	});

	it("refunds partially: 4,000 reserved, 1,000 used leaves 9,000 of the minute", () => {
		const tats = admitted(reserve(FRESH, WINDOWS, 4_000, T0)).tats;
		const settled = settle(tats, WINDOWS, 4_000, 1_000, T0);
		expect(settled).toEqual([T0 + 6_000_000, T0 + 864_000_000]);
		expect(statuses(settled, WINDOWS, T0).map((s) => s.remainingTokens)).toEqual([9_000, 99_000]);
	});

	it("never moves a TAT before now, whatever the refund", () => {
		fc.assert(
			fc.property(
				fc.integer({ min: 0, max: 200 * SECOND }), // how far the TAT is from T0
				fc.integer({ min: 0, max: 300 * SECOND }), // when settle runs
				fc.integer({ min: 1, max: 10_000 }),
				fc.integer({ min: 0, max: 10_000 }),
				(tatOffset, nowOffset, reserved, actualRaw) => {
					const actual = Math.min(actualRaw, reserved);
					const tats = [T0 + tatOffset, T0 + tatOffset];
					const now = T0 + nowOffset;
					const out = settle(tats, WINDOWS, reserved, actual, now);
					out.forEach((tat, i) => {
						const before = tats[i] ?? 0;
						// A refund never adds time, and never pulls a TAT that is ahead of now behind it.
						expect(tat).toBeLessThanOrEqual(before);
						if (before > now) expect(tat).toBeGreaterThanOrEqual(now);
						else expect(tat).toBe(before);
					});
				},
			),
			{ numRuns: 300 },
		);
	});

	it("leaves a drained window alone on refund (no TAT in the past is rewritten)", () => {
		const tats = [T0 - 5 * SECOND, 0];
		expect(settle(tats, WINDOWS, 4_000, 0, T0)).toEqual([T0 - 5 * SECOND, 0]);
	});

	it("charges actual > reserved unconditionally, even past the tolerance", () => {
		const full = admitted(reserve(FRESH, WINDOWS, 10_000, T0)).tats;
		expect(full[0]).toBe(T0 + 60_000_000); // TAT at now + τ: the minute is exhausted
		const over = settle(full, WINDOWS, 10_000, 15_000, T0);
		expect(over).toEqual([T0 + 90_000_000, T0 + 8_640_000_000 + 4_320_000_000]);
		const st = windowStatus(over[0] ?? 0, MINUTE, T0);
		expect(st.remainingTokens).toBe(0);
		expect(st.usedTokens).toBe(10_000); // capped at the burst capacity
		expect(st.resetUs).toBe(90_000_000);
		// The debt has to drain before even 1 token passes: 30 s + one token's interval.
		expect(limited(reserve(over, WINDOWS, 1, T0)).retryAfterUs).toBe(30_000_000 + 6_000);
	});

	it("charges an overrun on a drained window from now, not from the stale TAT", () => {
		const stale = [T0 - 100 * SECOND, 0];
		expect(settle(stale, WINDOWS, 1_000, 2_000, T0)).toEqual([T0 + 6_000_000, T0 + 864_000_000]);
	});

	it("changes nothing when actual equals reserved", () => {
		const tats = admitted(reserve(FRESH, WINDOWS, 4_000, T0)).tats;
		expect(settle(tats, WINDOWS, 4_000, 4_000, T0 + 123)).toEqual(tats);
	});
});

describe("gcra windowStatus", () => {
	it("reports a never-used window (TAT 0) as fully available", () => {
		expect(windowStatus(0, DAY, T0)).toEqual({
			limitTokens: 100_000,
			burstTokens: 100_000,
			remainingTokens: 100_000,
			usedTokens: 0,
			resetUs: 0,
		});
	});

	it("replenishes remaining linearly as time passes", () => {
		const tats = admitted(reserve(FRESH, WINDOWS, 10_000, T0)).tats;
		expect(windowStatus(tats[0] ?? 0, MINUTE, T0 + 15 * SECOND).remainingTokens).toBe(2_500);
		expect(windowStatus(tats[0] ?? 0, MINUTE, T0 + 15 * SECOND + 5_999).remainingTokens).toBe(
			2_500,
		);
		expect(windowStatus(tats[0] ?? 0, MINUTE, T0 + 15 * SECOND + 6_000).remainingTokens).toBe(
			2_501,
		);
		expect(windowStatus(tats[0] ?? 0, MINUTE, T0 + 60 * SECOND).remainingTokens).toBe(10_000);
	});
});

describe("whole-number rates", () => {
	it("a window's increments and standing equal the BigInt result, whole-number rates or not", () => {
		const bigCeil = (a: number, b: number, d: number) => {
			const p = BigInt(a) * BigInt(b);
			return p % BigInt(d) === 0n ? p / BigInt(d) : p / BigInt(d) + 1n;
		};
		const bigFloor = (a: number, b: number, d: number) => (BigInt(a) * BigInt(b)) / BigInt(d);
		// Limits that divide the window, windows that divide the limit, and neither.
		const window = fc.oneof(
			fc
				.tuple(fc.integer({ min: 1, max: 10_000_000 }), fc.integer({ min: 1, max: 100_000 }))
				.map(([limit, us]) => ({ limit, windowUs: limit * us })),
			fc
				.tuple(fc.integer({ min: 1, max: 86_400_000_000 }), fc.integer({ min: 1, max: 1000 }))
				.map(([windowUs, k]) => ({ limit: windowUs * k, windowUs })),
			fc.record({
				limit: fc.integer({ min: 1, max: 10 ** 12 }),
				windowUs: fc.constantFrom(1_000_000, 60_000_000, 3_600_000_000, 86_400_000_000),
			}),
		);
		fc.assert(
			fc.property(
				window,
				fc.integer({ min: 0, max: 10 ** 9 }),
				fc.integer({ min: 0, max: 10 ** 13 }),
				({ limit, windowUs }, cost, backlogUs) => {
					fc.pre(windowUs <= Number.MAX_SAFE_INTEGER && limit <= Number.MAX_SAFE_INTEGER);
					const w: WindowSpec = { windowUs, limitTokens: limit, burstTokens: limit };
					const inc = bigCeil(cost, windowUs, limit);
					fc.pre(inc <= BigInt(Number.MAX_SAFE_INTEGER));
					expect(BigInt(incrementUs(cost, w))).toBe(inc);
					const tau = bigCeil(limit, windowUs, limit);
					expect(BigInt(toleranceUs(w))).toBe(tau);
					const now = 1_000_000_000;
					const st = statuses([now + backlogUs], [w], now)[0];
					const slack = tau - BigInt(backlogUs) > 0n ? Number(tau - BigInt(backlogUs)) : 0;
					const remaining = bigFloor(slack, limit, windowUs);
					const used = bigCeil(backlogUs, limit, windowUs);
					const cap = BigInt(limit);
					expect(BigInt(st?.remainingTokens ?? -1)).toBe(remaining < cap ? remaining : cap);
					expect(BigInt(st?.usedTokens ?? -1)).toBe(used < cap ? used : cap);
				},
			),
			{ numRuns: 2000 },
		);
	});
});
