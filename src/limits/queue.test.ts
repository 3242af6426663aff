import { describe, expect, it } from "bun:test";
import { type AttemptResult, type Priority, SlotQueue, type WaitResult } from "./queue.ts";

/**
 * The queue's order and endings, against a pretend store: `free` slots, taken
 * by each admission; `own` users whose own concurrency is full.
 */
function harness(options: { agingMs?: number; maxWaitMs?: number; maxQueued?: number } = {}) {
	const outcomes: string[] = [];
	let clock = 0;
	const state = { free: 0, own: new Set<string>() };
	const order: string[] = [];
	const released: string[] = [];
	const queue = new SlotQueue<string>({
		maxWaitMs: options.maxWaitMs ?? 60_000,
		maxQueued: options.maxQueued ?? 1000,
		agingMs: options.agingMs ?? 10_000,
		pollMs: 0,
		now: () => clock,
		onWaited: (outcome) => outcomes.push(outcome),
	});
	const wait = (
		name: string,
		user: string,
		priority: Priority = "normal",
		tenant?: string,
		signal?: AbortSignal,
	): Promise<WaitResult<string>> =>
		queue.wait(
			{ user, tenant, priority },
			async (): Promise<AttemptResult<string>> => {
				if (state.own.has(user)) return { kind: "own-full" };
				if (state.free === 0) return { kind: "full" };
				state.free--;
				order.push(name);
				return { kind: "done", value: name, admitted: true };
			},
			(value) => released.push(value),
			signal,
		);
	/** Frees `n` slots and lets the queue hand them out. */
	const free = async (n: number) => {
		state.free += n;
		queue.pump();
		await until(() => state.free === 0 || queue.depth === 0);
	};
	return {
		queue,
		state,
		outcomes,
		order,
		released,
		wait,
		free,
		tick: (ms: number) => {
			clock += ms;
		},
	};
}

/** Lets queued promise callbacks run until `done` holds (a bounded number of turns). */
async function until(done: () => boolean): Promise<void> {
	for (let i = 0; i < 1000 && !done(); i++) await new Promise<void>((r) => setImmediate(r));
	if (!done()) throw new Error("the queue did not settle");
}

describe("the slot queue's order", () => {
	it("serves users round-robin, not in arrival order", async () => {
		const h = harness();
		const waits = [
			...Array.from({ length: 6 }, (_, i) => h.wait(`A${i}`, "A")),
			...Array.from({ length: 2 }, (_, i) => h.wait(`B${i}`, "B")),
		];
		await h.free(8);
		await Promise.all(waits);
		expect(h.order).toEqual(["A0", "B0", "A1", "B1", "A2", "A3", "A4", "A5"]);
	});

	it("serves tenants round-robin above their users", async () => {
		const h = harness();
		const waits = [
			h.wait("t1-u1-0", "u1", "normal", "t1"),
			h.wait("t1-u1-1", "u1", "normal", "t1"),
			h.wait("t1-u2-0", "u2", "normal", "t1"),
			h.wait("t1-u3-0", "u3", "normal", "t1"),
			h.wait("t2-v1-0", "v1", "normal", "t2"),
			h.wait("t2-v1-1", "v1", "normal", "t2"),
		];
		await h.free(6);
		await Promise.all(waits);
		// t1 and t2 take turns; within t1 its users take turns.
		expect(h.order).toEqual(["t1-u1-0", "t2-v1-0", "t1-u2-0", "t2-v1-1", "t1-u3-0", "t1-u1-1"]);
	});

	it("serves higher priorities first, and lets a waiting low one rise with age", async () => {
		const h = harness({ agingMs: 1000 });
		const low = h.wait("low", "l", "low");
		h.tick(500);
		const normal = h.wait("normal", "n", "normal");
		const high = h.wait("high", "h", "high");
		await h.free(3);
		await Promise.all([low, normal, high]);
		expect(h.order).toEqual(["high", "normal", "low"]);

		// Waited two aging periods: low counts as high, and it came first.
		const h2 = harness({ agingMs: 1000 });
		const old = h2.wait("old-low", "l", "low");
		h2.tick(2000);
		const fresh = h2.wait("fresh-high", "h", "high");
		await h2.free(1);
		expect(h2.order).toEqual(["old-low"]);
		await h2.free(1);
		await Promise.all([old, fresh]);
		expect(h2.order).toEqual(["old-low", "fresh-high"]);
	});

	it("passes over a user whose own concurrency is full, and serves them once it frees", async () => {
		const h = harness();
		h.state.own.add("busy");
		const waits = [h.wait("busy0", "busy"), h.wait("other0", "other"), h.wait("other1", "other")];
		await h.free(2);
		expect(h.order).toEqual(["other0", "other1"]);
		h.state.own.delete("busy");
		await h.free(1);
		await Promise.all(waits);
		expect(h.order).toEqual(["other0", "other1", "busy0"]);
	});
});

describe("the slot queue's endings", () => {
	it("refuses a new waiter once max-queued-requests wait", () => {
		const h = harness({ maxQueued: 2 });
		void h.wait("a", "a");
		expect(h.queue.accepting).toBe(true);
		void h.wait("b", "b");
		expect(h.queue.accepting).toBe(false);
		h.queue.close();
	});

	it("ends a wait on timeout, on disconnect and on shutdown, holding nothing", async () => {
		const h = harness({ maxWaitMs: 30 });
		expect((await h.wait("t", "t")).kind).toBe("timeout");

		const h2 = harness();
		const leaving = new AbortController();
		const left = h2.wait("gone", "g", "normal", undefined, leaving.signal);
		leaving.abort();
		expect((await left).kind).toBe("disconnected");
		expect(h2.queue.depth).toBe(0);

		const h3 = harness();
		const waits = [h3.wait("x", "x"), h3.wait("y", "y")];
		h3.queue.close();
		expect((await Promise.all(waits)).map((r) => r.kind)).toEqual(["shutdown", "shutdown"]);
		expect(h3.queue.depth).toBe(0);
		expect(h3.queue.accepting).toBe(false);
	});

	it("gives back a slot won by a request whose client left while it was being admitted", async () => {
		let clock = 0;
		const released: string[] = [];
		const queue = new SlotQueue<string>({
			maxWaitMs: 60_000,
			maxQueued: 10,
			agingMs: 10_000,
			pollMs: 0,
			now: () => clock++,
		});
		const leaving = new AbortController();
		let grant: (() => void) | undefined;
		const waited = queue.wait(
			{ user: "u", tenant: undefined, priority: "normal" },
			() =>
				new Promise<AttemptResult<string>>((resolve) => {
					grant = () => resolve({ kind: "done", value: "slot", admitted: true });
				}),
			(value) => released.push(value),
			leaving.signal,
		);
		await until(() => grant !== undefined);
		leaving.abort();
		expect((await waited).kind).toBe("disconnected");
		grant?.();
		await until(() => released.length === 1);
		expect(released).toEqual(["slot"]);
		expect(queue.depth).toBe(0);
	});
});

describe("the slot queue under races", () => {
	/** A queue whose one waiter's attempts are answered by hand. */
	function manual(maxWaitMs = 60_000) {
		const outcomes: string[] = [];
		const released: string[] = [];
		const answers: ((r: AttemptResult<string>) => void)[] = [];
		const queue = new SlotQueue<string>({
			maxWaitMs,
			maxQueued: 10,
			agingMs: 10_000,
			pollMs: 0,
			onWaited: (o) => outcomes.push(o),
		});
		const leaving = new AbortController();
		const waited = queue.wait(
			{ user: "u", tenant: undefined, priority: "normal" },
			() => new Promise<AttemptResult<string>>((resolve) => answers.push(resolve)),
			(v) => released.push(v),
			leaving.signal,
		);
		const attempt = async () => {
			await until(() => answers.length > 0);
			const answer = answers.shift();
			if (answer === undefined) throw new Error("no attempt");
			return answer;
		};
		return { queue, waited, attempt, leaving, outcomes, released };
	}

	it("lets an admission won in time stand when the wait ran out during its attempt", async () => {
		const m = manual(20);
		const answer = await m.attempt();
		await new Promise<void>((r) => setTimeout(r, 40));
		answer({ kind: "done", value: "slot", admitted: true });
		const result = await m.waited;
		expect(result.kind).toBe("done");
		expect(m.released).toEqual([]);
	});

	it("times out a wait whose attempt found every slot taken after the time ran out", async () => {
		const m = manual(20);
		const answer = await m.attempt();
		await new Promise<void>((r) => setTimeout(r, 40));
		answer({ kind: "full" });
		expect((await m.waited).kind).toBe("timeout");
		expect(m.queue.depth).toBe(0);
		expect(m.outcomes).toEqual(["timeout"]);
	});

	it("answers shutdown at once when closed during an attempt, and gives the slot back", async () => {
		const m = manual();
		const answer = await m.attempt();
		m.queue.close();
		expect((await m.waited).kind).toBe("shutdown");
		answer({ kind: "done", value: "late", admitted: true });
		await until(() => m.released.length === 1);
		expect(m.released).toEqual(["late"]);
		expect(m.queue.depth).toBe(0);
	});

	it("fails the wait when an attempt throws, and forgets it", async () => {
		const queue = new SlotQueue<string>({ maxWaitMs: 60_000, maxQueued: 5, agingMs: 1, pollMs: 0 });
		const failed = queue.wait(
			{ user: "u", tenant: undefined, priority: "normal" },
			async () => {
				throw new Error("store down");
			},
			() => {},
			undefined,
		);
		await expect(failed).rejects.toThrow("store down");
		expect(queue.depth).toBe(0);
	});

	it("holds at most max-queued-requests in a burst; the rest are told the queue is full", async () => {
		const h = harness({ maxQueued: 3 });
		const results = Array.from({ length: 6 }, (_, i) => h.wait(`r${i}`, `u${i}`));
		expect(h.queue.depth).toBe(3);
		const full = await Promise.all(results.slice(3));
		expect(full.map((r) => r.kind)).toEqual(["full", "full", "full"]);
		await h.free(3);
		expect((await Promise.all(results.slice(0, 3))).map((r) => r.kind)).toEqual([
			"done",
			"done",
			"done",
		]);
		expect(h.outcomes).toEqual(["admitted", "admitted", "admitted"]);
	});

	it("counts a wait refused at its grant (by a window) as refused", async () => {
		const outcomes: string[] = [];
		const queue = new SlotQueue<string>({
			maxWaitMs: 60_000,
			maxQueued: 5,
			agingMs: 1,
			pollMs: 0,
			onWaited: (o) => outcomes.push(o),
		});
		const result = await queue.wait(
			{ user: "u", tenant: undefined, priority: "normal" },
			async () => ({ kind: "done", value: "429", admitted: false }),
			() => {},
			undefined,
		);
		expect(result.kind).toBe("done");
		expect(outcomes).toEqual(["refused"]);
	});

	it("does not let a user who keeps coming back jump ahead of one who waits", async () => {
		const h = harness();
		const backlog = Array.from({ length: 4 }, (_, i) => h.wait(`Y${i}`, "Y"));
		// X sends one request at a time: the next only after the last was served.
		const x0 = h.wait("X0", "X");
		await h.free(1);
		await h.free(1);
		await x0;
		const x1 = h.wait("X1", "X");
		await h.free(1);
		await h.free(1);
		await x1;
		await h.free(2);
		await Promise.all(backlog);
		// Y is served between X's visits, not starved by them.
		expect(h.order).toEqual(["Y0", "X0", "Y1", "X1", "Y2", "Y3"]);
	});
});
