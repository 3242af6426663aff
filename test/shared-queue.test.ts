/**
 * The shared queue (queue.lua with batch.lua's gate and claim) on a real
 * standalone Redis and a real 3-master Redis Cluster: one fair order per model
 * for every replica, entries of a replica that stops polling dropped, nothing
 * left behind. The clock is frozen (sent to the scripts), so aging is exact.
 */
import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { queueKey, reservationKey, slotKey } from "../src/limits/limiter.ts";
import {
	QUEUE_GRANT_GRACE_MS,
	QUEUE_OWNER_TTL_MS,
	RedisLimitStore,
} from "../src/limits/redis-store.ts";
import type { QueueEntry, QueueTarget, ReserveRequest, ScopedWindow } from "../src/limits/store.ts";
import {
	type RedisClusterHandle,
	type RedisServer,
	redisStoreConfig,
	startRedisAndCluster,
} from "./support/redis.ts";
import { FrozenClock, freshModel, SECOND, userWindow } from "./support/store-conformance.ts";

setDefaultTimeout(30_000);

let standalone: RedisServer | undefined;
let cluster: RedisClusterHandle | undefined;
let stopServers: (() => Promise<void>) | undefined;

beforeAll(async () => {
	({ standalone, cluster, stop: stopServers } = await startRedisAndCluster());
});

afterAll(async () => {
	await stopServers?.();
});

interface Deployment {
	open(clock: FrozenClock): Promise<RedisLimitStore>;
	/** Runs a command on the node holding `key`. */
	cli(key: string, ...args: string[]): Promise<string>;
}

const DEPLOYMENTS: Record<string, () => Deployment> = {
	"a standalone Redis": () => {
		if (standalone === undefined) throw new Error("the standalone Redis did not start");
		const s = standalone;
		return {
			open: (clock) =>
				RedisLimitStore.standalone(redisStoreConfig({ url: s.url }), {
					timeoutMs: 2000,
					clock: clock.read,
				}),
			cli: (_key, ...args) => s.cli(...args),
		};
	},
	"a 3-master Redis Cluster": () => {
		if (cluster === undefined) throw new Error("the Redis Cluster did not start");
		const c = cluster;
		return {
			open: (clock) =>
				RedisLimitStore.cluster(
					redisStoreConfig({ clusterNodes: c.nodes.map((n) => `${n.host}:${n.port}`) }),
					{ timeoutMs: 2000, clock: clock.read },
				),
			cli: (_key, ...args) => {
				const node = c.nodes[0];
				if (node === undefined) throw new Error("the cluster has no node");
				return c.cli(node.port, "-c", ...args);
			},
		};
	},
};

/** One model's queue as the limiter addresses it. */
function targetOf(model: string, limit: number): QueueTarget {
	return {
		queueKey: queueKey(model),
		slotKey: slotKey(model),
		limit,
		agingMs: 10_000,
		maxWaitMs: 30_000,
	};
}

function entry(id: string, user: string, more: Partial<QueueEntry> = {}): QueueEntry {
	return { id, user, tenant: "", rank: 1, ownSlots: [], maxQueued: 100, ...more };
}

/** A request of `user` to `model` (a minute window, the model's slots, the queue's gate). */
function request(
	model: string,
	id: string,
	user: string,
	limit: number,
	options: { claim?: boolean; cost?: number; windowTokens?: number } = {},
): ReserveRequest {
	const windows: ScopedWindow[] = [
		userWindow(model, "minute", user, options.windowTokens ?? 1_000_000),
	];
	return {
		requestId: id,
		windows,
		costTokens: options.cost ?? 10,
		reservationKey: reservationKey(model, id),
		slot: { key: slotKey(model), limit, leaseMs: 30_000 },
		queueKey: queueKey(model),
		...(options.claim === true ? { claim: true } : {}),
	};
}

async function finish(store: RedisLimitStore, model: string, req: ReserveRequest): Promise<void> {
	const settled = await store.settle({
		requestId: req.requestId,
		windows: req.windows,
		reservationKey: req.reservationKey,
		reservedTokens: req.costTokens,
		actualTokens: req.costTokens,
		slotKey: slotKey(model),
	});
	expect(settled).toBe(true);
}

/** Nothing of the queue is left: no entry, no per-user or per-owner key, no lease. */
async function nothingLeft(d: Deployment, model: string): Promise<void> {
	const q = queueKey(model);
	expect(await d.cli(q, "HLEN", q)).toBe("0");
	expect(await d.cli(q, "ZCARD", `trl:{${model}}:q:u`)).toBe("0");
	expect(await d.cli(q, "ZCARD", `trl:{${model}}:q:t`)).toBe("0");
	expect(await d.cli(q, "ZCARD", slotKey(model))).toBe("0");
}

for (const [name, deployment] of Object.entries(DEPLOYMENTS)) {
	describe(`the shared queue on ${name}`, () => {
		let d: Deployment;
		let clock: FrozenClock;
		let r1: RedisLimitStore;
		let r2: RedisLimitStore;

		beforeAll(async () => {
			d = deployment();
			clock = new FrozenClock();
			clock.epoch();
			[r1, r2] = await Promise.all([d.open(clock), d.open(clock)]);
		});

		afterAll(async () => {
			await Promise.all([r1.close(), r2.close()]);
		});

		/** A new model with one slot, held by a request admitted through replica 1. */
		async function slotHeld() {
			const model = freshModel();
			const target = targetOf(model, 1);
			const holder = request(model, "holder", "H", 1);
			expect((await r1.reserve(holder)).kind).toBe("admitted");
			return { model, target, holder };
		}

		/**
		 * `turns` times: both replicas ask the queue, exactly one is granted the
		 * slot, and its request (user: the id's first letter) claims it and ends.
		 * Returns who was served, in order.
		 */
		async function servedInTurn(model: string, target: QueueTarget, turns: number) {
			const order: string[] = [];
			for (let turn = 0; turn < turns; turn++) {
				const granted = [
					...(await r1.queue.poll(target, "r1")).granted.map((id) => ({ id, store: r1 })),
					...(await r2.queue.poll(target, "r2")).granted.map((id) => ({ id, store: r2 })),
				];
				expect(granted.length).toBe(1);
				const g = granted[0];
				if (g === undefined) throw new Error("no grant");
				order.push(g.id);
				const claim = request(model, g.id, g.id.slice(0, 1), 1, { claim: true });
				expect((await g.store.reserve(claim)).kind).toBe("admitted");
				await finish(g.store, model, claim);
			}
			return order;
		}

		it("serves two replicas' requests in one fair order: round-robin between users, oldest first within one", async () => {
			const { model, target, holder } = await slotHeld();
			// A's five wait on replica 1; B's two come later, on replica 2.
			for (let i = 1; i <= 5; i++) {
				const reply = await r1.queue.join(target, "r1", entry(`A${i}`, "A"));
				expect(reply).toMatchObject({ joined: true, granted: [] });
			}
			for (let i = 1; i <= 2; i++) {
				expect((await r2.queue.join(target, "r2", entry(`B${i}`, "B"))).joined).toBe(true);
			}
			// While anyone waits, a request that did not wait gets no slot, even one that frees.
			await finish(r1, model, holder);
			expect((await r1.reserve(request(model, "direct", "C", 1))).kind).toBe("busy");

			expect(await servedInTurn(model, target, 7)).toEqual([
				"A1",
				"B1",
				"A2",
				"B2",
				"A3",
				"A4",
				"A5",
			]);
			await nothingLeft(d, model);
			// The queue is empty: a request that did not wait is admitted again.
			const after = request(model, "after", "C", 1);
			expect((await r2.reserve(after)).kind).toBe("admitted");
			await finish(r2, model, after);
		});

		it("shares the slots between tenants first, then between each tenant's users", async () => {
			const { model, target, holder } = await slotHeld();
			// Tenant T1 has two users with five requests between them; T2 one user with three.
			const joins: [string, string, string][] = [
				["a1", "a", "T1"],
				["a2", "a", "T1"],
				["a3", "a", "T1"],
				["b1", "b", "T1"],
				["b2", "b", "T1"],
				["c1", "c", "T2"],
				["c2", "c", "T2"],
				["c3", "c", "T2"],
			];
			for (const [id, user, tenant] of joins) {
				await (tenant === "T1" ? r1 : r2).queue.join(
					target,
					tenant === "T1" ? "r1" : "r2",
					entry(id, user, { tenant }),
				);
			}
			await finish(r1, model, holder);
			expect(await servedInTurn(model, target, joins.length)).toEqual([
				"a1",
				"c1",
				"b1",
				"c2",
				"a2",
				"c3",
				"b2",
				"a3",
			]);
			await nothingLeft(d, model);
		});

		it("serves higher priorities first, and raises a waiting request one class every aging period", async () => {
			const { model, target, holder } = await slotHeld();
			await r1.queue.join(target, "r1", entry("low", "L", { rank: 2 }));
			clock.advance(SECOND);
			await r1.queue.join(target, "r1", entry("high", "Hi", { rank: 0 }));
			await finish(r1, model, holder);
			// Came second, served first.
			expect((await r1.queue.poll(target, "r1")).granted).toEqual(["high"]);
			const high = request(model, "high", "Hi", 1, { claim: true });
			expect((await r1.reserve(high)).kind).toBe("admitted");
			// Twenty seconds on, low has risen two classes: a new high request does not pass it.
			clock.advance(20 * SECOND);
			await r1.queue.poll(target, "r1");
			await r1.queue.join(target, "r1", entry("high2", "Hi2", { rank: 0 }));
			await finish(r1, model, high);
			expect((await r1.queue.poll(target, "r1")).granted).toEqual(["low"]);
			const low = request(model, "low", "L", 1, { claim: true });
			expect((await r1.reserve(low)).kind).toBe("admitted");
			await finish(r1, model, low);
			expect((await r1.queue.poll(target, "r1")).granted).toEqual(["high2"]);
			const high2 = request(model, "high2", "Hi2", 1, { claim: true });
			expect((await r1.reserve(high2)).kind).toBe("admitted");
			await finish(r1, model, high2);
			await nothingLeft(d, model);
		});

		it("passes over a user whose own limit is full, and grants others the free slot", async () => {
			const model = freshModel();
			const target = targetOf(model, 2);
			const own = `trl:{${model}}:slots:u:A`;
			// A holds their own one slot; one of the model's two is free.
			await d.cli(own, "ZADD", own, String(Math.floor(clock.now / 1000) + 60_000), "A-running");
			const a = await r1.queue.join(
				target,
				"r1",
				entry("A2", "A", { ownSlots: [{ key: own, limit: 1 }] }),
			);
			expect(a).toMatchObject({ joined: true, waiting: 1, granted: [] });
			// Someone waits, so C cannot take the free slot directly; it joins, and is granted it at once.
			expect((await r2.reserve(request(model, "C1", "C", 2))).kind).toBe("busy");
			const c = await r2.queue.join(target, "r2", entry("C1", "C"));
			expect(c.granted).toEqual(["C1"]);
			const claim = request(model, "C1", "C", 2, { claim: true });
			expect((await r2.reserve(claim)).kind).toBe("admitted");
			// A's own request ends: A's waiting one goes next.
			await d.cli(own, "ZREM", own, "A-running");
			const next = await r1.queue.poll(target, "r1");
			expect(next.granted).toEqual(["A2"]);
			expect(await d.cli(own, "ZSCORE", own, "A2")).not.toBe("");
			await r1.queue.leave(target, "r1", "A2", [own]);
			expect(await d.cli(own, "ZCARD", own)).toBe("0");
			await finish(r2, model, claim);
			await nothingLeft(d, model);
		});

		it("sends a claim whose grant lapsed back in line while others wait", async () => {
			const model = freshModel();
			const target = targetOf(model, 2);
			const own = `trl:{${model}}:slots:u:W`;
			// W waits, held by their own limit, while one of the model's two slots is free.
			await d.cli(own, "ZADD", own, String(Math.floor(clock.now / 1000) + 60_000), "W-running");
			await r1.queue.join(target, "r1", entry("W2", "W", { ownSlots: [{ key: own, limit: 1 }] }));
			// A claim with no live grant (it lapsed, its slot went elsewhere) is an admission again.
			expect((await r2.reserve(request(model, "lapsed", "L", 2, { claim: true }))).kind).toBe(
				"busy",
			);
			expect(await d.cli(queueKey(model), "ZCARD", slotKey(model))).toBe("0");
			await r1.queue.leave(target, "r1", "W2", [own]);
			await d.cli(own, "DEL", own);
			// Nobody waits: it is admitted on the free slot.
			const again = request(model, "lapsed", "L", 2, { claim: true });
			expect((await r2.reserve(again)).kind).toBe("admitted");
			await finish(r2, model, again);
			await nothingLeft(d, model);
		});

		it("bounds the queue across replicas: beyond max-queued-requests a request is refused", async () => {
			const { model, target, holder } = await slotHeld();
			expect((await r1.queue.join(target, "r1", entry("w1", "U1", { maxQueued: 2 }))).joined).toBe(
				true,
			);
			expect((await r2.queue.join(target, "r2", entry("w2", "U2", { maxQueued: 2 }))).joined).toBe(
				true,
			);
			const full = await r1.queue.join(target, "r1", entry("w3", "U3", { maxQueued: 2 }));
			expect(full).toMatchObject({ joined: false, waiting: 2 });
			// Joining again is harmless: the same entry is not counted twice.
			expect((await r2.queue.join(target, "r2", entry("w2", "U2", { maxQueued: 2 }))).waiting).toBe(
				2,
			);
			await r1.queue.leave(target, "r1", "w1", []);
			await r2.queue.leave(target, "r2", "w2", []);
			await finish(r1, model, holder);
			await nothingLeft(d, model);
		});

		it("gives back a slot granted to a request that left before claiming it, to the next in line", async () => {
			const { model, target, holder } = await slotHeld();
			await r1.queue.join(target, "r1", entry("gone", "G"));
			await r2.queue.join(target, "r2", entry("next", "N"));
			await finish(r1, model, holder);
			expect((await r1.queue.poll(target, "r1")).granted).toEqual(["gone"]);
			// Its client left: the slot goes on, in the same call.
			await r1.queue.leave(target, "r1", "gone", []);
			expect((await r2.queue.poll(target, "r2")).granted).toEqual(["next"]);
			const claim = request(model, "next", "N", 1, { claim: true });
			expect((await r2.reserve(claim)).kind).toBe("admitted");
			await finish(r2, model, claim);
			await nothingLeft(d, model);
		});

		it("gives the slot back when the windows refuse the request it was granted to", async () => {
			const { model, target, holder } = await slotHeld();
			await r1.queue.join(target, "r1", entry("poor", "P"));
			await finish(r1, model, holder);
			expect((await r1.queue.poll(target, "r1")).granted).toEqual(["poor"]);
			const claim = request(model, "poor", "P", 1, { claim: true, cost: 500, windowTokens: 100 });
			expect((await r1.reserve(claim)).kind).toBe("never");
			await nothingLeft(d, model);
		});

		it("keeps the order's bookkeeping as long as a request may wait, not just while replicas poll", async () => {
			const { model, target, holder } = await slotHeld();
			await r1.queue.join(target, "r1", entry("patient", "P"));
			await r2.queue.poll(target, "r2");
			// The per-user and per-replica keys that find the entry again live past max-queue-wait-ms.
			const shortest = await d.cli(
				queueKey(model),
				"EVAL",
				"local m, n = -1, 0 for _, p in ipairs(ARGV) do for _, k in ipairs(redis.call('KEYS', p)) do n = n + 1 local t = redis.call('PTTL', k) if m < 0 or t < m then m = t end end end if n < 2 then return -2 end return m",
				"1",
				queueKey(model),
				`trl:{${model}}:q:e:*`,
				`trl:{${model}}:q:oe:*`,
			);
			expect(Number(shortest)).toBeGreaterThan(target.maxWaitMs);
			await r1.queue.leave(target, "r1", "patient", []);
			await finish(r1, model, holder);
			await nothingLeft(d, model);
		});

		it("drops the entries of a replica that stopped polling, and the slot granted to it lapses", async () => {
			const { model, target, holder } = await slotHeld();
			for (let i = 0; i < 3; i++) await r1.queue.join(target, "dead", entry(`d${i}`, `D${i}`));
			await finish(r1, model, holder);
			// The replica's last poll is granted the slot; then it dies, and never claims it.
			expect((await r1.queue.poll(target, "dead")).granted).toEqual(["d0"]);
			expect(await d.cli(queueKey(model), "ZCARD", slotKey(model))).toBe("1");
			clock.advance(Math.max(QUEUE_OWNER_TTL_MS, QUEUE_GRANT_GRACE_MS) * 1000 + SECOND);
			// The survivor's next call drops the rest, and its own request gets the slot.
			const mine = await r2.queue.join(target, "alive", entry("mine", "M"));
			expect(mine).toMatchObject({ joined: true, waiting: 0, granted: ["mine"] });
			expect(await d.cli(queueKey(model), "EXISTS", `trl:{${model}}:q:oe:dead`)).toBe("0");
			expect(await d.cli(queueKey(model), "EXISTS", `trl:{${model}}:q:g:dead`)).toBe("0");
			const claim = request(model, "mine", "M", 1, { claim: true });
			expect((await r2.reserve(claim)).kind).toBe("admitted");
			await finish(r2, model, claim);
			await nothingLeft(d, model);
		});
	});
}
