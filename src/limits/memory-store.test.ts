import { describe, expect, it } from "bun:test";
import fc from "fast-check";
import {
	type Admission,
	commandsArb,
	DAY_US,
	describeLimitStore,
	FrozenClock,
	freshModel,
	MINUTE_US,
	pick,
	poolFor,
	reserveRequest,
	SECOND,
	settleRequest,
	userWindow,
	win,
} from "../../test/support/store-conformance.ts";
import { slotKey, windowKey } from "./limiter.ts";
import { MemoryLimitStore } from "./memory-store.ts";

// The store-agnostic conformance table and properties, shared with the Redis stores.
describeLimitStore(
	"MemoryLimitStore",
	async (clockUs) => ({ store: new MemoryLimitStore(clockUs) }),
	{
		numRuns: 200,
		maxCommands: 60,
	},
);

/** A memory store of its own on a fresh frozen clock. */
function frozenStore(): { store: MemoryLimitStore; clock: FrozenClock; t0: number } {
	const clock = new FrozenClock();
	const t0 = clock.epoch();
	return { store: new MemoryLimitStore(clock.read), clock, t0 };
}

describe("MemoryLimitStore size", () => {
	it("holds one key per window touched, per scope and user", async () => {
		const { store } = frozenStore();
		const model = freshModel();
		try {
			const alice = [
				userWindow(model, "minute", "alice", 10_000),
				userWindow(model, "day", "alice", 100_000),
			];
			const bob = [
				userWindow(model, "minute", "bob", 10_000),
				userWindow(model, "day", "bob", 100_000),
			];
			expect(store.size).toBe(0);
			await store.reserve(reserveRequest(model, "a", alice, 10_000));
			expect(store.size).toBe(2);
			await store.reserve(reserveRequest(model, "b", bob, 10_000));
			expect(store.size).toBe(4);
			// A denied request writes no key.
			await store.reserve(reserveRequest(model, "c", [userWindow(model, "hour", "c", 10)], 11));
			expect(store.size).toBe(4);
		} finally {
			await store.close();
		}
	});
});

describe("MemoryLimitStore reservation expiry", () => {
	it("forgets an unsettled reservation after 24 h (swept), and not a microsecond before", async () => {
		const { store, clock, t0 } = frozenStore();
		const model = freshModel();
		const tpm = [userWindow(model, "minute", "alice", 10_000)];
		try {
			await store.reserve(reserveRequest(model, "kept", tpm, 1));
			await store.reserve(reserveRequest(model, "lost", tpm, 1));
			clock.set(t0 + DAY_US - 1);
			store.sweep();
			expect(await store.settle(settleRequest(model, "kept", tpm, 1, 1))).toBe(true);
			clock.set(t0 + DAY_US);
			store.sweep();
			expect(await store.settle(settleRequest(model, "lost", tpm, 1, 1))).toBe(false);
		} finally {
			await store.close();
		}
	});
});

describe("MemoryLimitStore sweep", () => {
	it("drops drained windows (size falls to 0 once time passes every TAT) and keeps the rest", async () => {
		const { store, clock, t0 } = frozenStore();
		const model = freshModel();
		try {
			const windows = [
				userWindow(model, "minute", "alice", 10_000),
				userWindow(model, "day", "alice", 100_000),
				win(windowKey(model, "model", "minute"), MINUTE_US, 20_000),
			];
			await store.reserve(reserveRequest(model, "a", windows, 6_000));
			expect(store.size).toBe(3);
			// TATs: model minute at 18 s, user minute at 36 s, day at 5,184 s.
			clock.set(t0 + 18 * SECOND - 1);
			store.sweep();
			expect(store.size).toBe(3);
			clock.set(t0 + 18 * SECOND);
			store.sweep();
			expect(store.size).toBe(2);
			clock.set(t0 + 36 * SECOND);
			store.sweep();
			expect(store.size).toBe(1);
			clock.set(t0 + 5_184 * SECOND - 1);
			store.sweep();
			expect(store.size).toBe(1);
			clock.set(t0 + 5_184 * SECOND); // the day's TAT
			store.sweep();
			expect(store.size).toBe(0);
			// A swept window starts fresh: full capacity.
			const peeked = await store.peek(windows, slotKey(model));
			expect(peeked.windows.map((s) => s.remainingTokens)).toEqual([10_000, 100_000, 20_000]);
		} finally {
			await store.close();
		}
	});

	it("never changes a decision: a swept store and an unswept twin decide identically", async () => {
		await fc.assert(
			fc.asyncProperty(commandsArb({ withSweep: true, maxLength: 60 }), async (commands) => {
				// One clock drives both stores.
				const clock = new FrozenClock();
				clock.epoch();
				const swept = new MemoryLimitStore(clock.read);
				const twin = new MemoryLimitStore(clock.read);
				const model = freshModel();
				const pool = poolFor(model);
				const admissions: Admission[] = [];
				try {
					let n = 0;
					for (const cmd of commands) {
						n++;
						if (cmd.kind === "advance") {
							clock.advance(cmd.us);
						} else if (cmd.kind === "sweep") {
							const before = swept.size;
							swept.sweep();
							expect(swept.size).toBeLessThanOrEqual(before);
						} else if (cmd.kind === "reserve") {
							const req = reserveRequest(model, `req-${n}`, pick(pool, cmd.windows), cmd.cost);
							const a = await swept.reserve(req);
							expect(a).toEqual(await twin.reserve(req));
							if (a.kind === "admitted") {
								admissions.push({ id: req.requestId, windows: req.windows, cost: cmd.cost });
							}
						} else {
							const target = admissions[cmd.pick % Math.max(1, admissions.length)];
							if (target === undefined) continue;
							const actual = Math.floor((target.cost * cmd.permille) / 1_000);
							const req = settleRequest(model, target.id, target.windows, target.cost, actual);
							expect(await swept.settle(req)).toBe(await twin.settle(req));
						}
						expect(await swept.peek(pool, slotKey(model))).toEqual(
							await twin.peek(pool, slotKey(model)),
						);
					}
					// Past every TAT, a sweep empties the store.
					clock.advance(10 * DAY_US);
					swept.sweep();
					expect(swept.size).toBe(0);
				} finally {
					await swept.close();
					await twin.close();
				}
			}),
			{ numRuns: 200 },
		);
	});
});
