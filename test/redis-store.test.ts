/**
 * RedisLimitStore on a real standalone Redis and a real 3-master Redis Cluster, both started by
 * the hermetic harness on free ports: the shared conformance suite (same table, same properties
 * as the memory store), then what only Redis has: the script cache, reconnection, the key
 * layout and its expiries, and cluster slot placement.
 */
import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { createHash } from "node:crypto";
import fc from "fast-check";
import { reservationKey, slotKey, windowKey } from "../src/limits/limiter.ts";
import { MemoryLimitStore } from "../src/limits/memory-store.ts";
import { RedisLimitStore } from "../src/limits/redis-store.ts";
import { SCRIPTS } from "../src/limits/scripts.ts";
import type {
	ClockUs,
	ReserveRequest,
	ScopedWindow,
	SettleRequest,
	StoreDecision,
} from "../src/limits/store.ts";
import {
	type RedisClusterHandle,
	type RedisServer,
	redisStoreConfig,
	startRedis,
	startRedisAndCluster,
} from "./support/redis.ts";
import {
	DAY_US,
	describeLimitStore,
	FrozenClock,
	freshModel,
	MINUTE_US,
	reserveRequest,
	settleRequest,
	userWindow,
	win,
} from "./support/store-conformance.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/** Generous for a loaded 2-core machine; these tests are about answers, not latency. */
const CALL_TIMEOUT_MS = 2_000;

let standalone: RedisServer | undefined;
let cluster: RedisClusterHandle | undefined;
let stopServers: (() => Promise<void>) | undefined;

beforeAll(async () => {
	({ standalone, cluster, stop: stopServers } = await startRedisAndCluster());
});

afterAll(async () => {
	await stopServers?.();
});

function server(): RedisServer {
	if (standalone === undefined) throw new Error("the standalone Redis did not start");
	return standalone;
}

function clusterHandle(): RedisClusterHandle {
	if (cluster === undefined) throw new Error("the Redis Cluster did not start");
	return cluster;
}

async function openStandalone(url: string, clock: ClockUs): Promise<RedisLimitStore> {
	const store = await RedisLimitStore.standalone(redisStoreConfig({ url }), {
		timeoutMs: CALL_TIMEOUT_MS,
		clock,
	});
	if (!store.connected) {
		await store.close();
		throw new Error(`could not connect to ${url}`);
	}
	return store;
}

async function openCluster(nodes: readonly string[], clock: ClockUs): Promise<RedisLimitStore> {
	const store = await RedisLimitStore.cluster(redisStoreConfig({ clusterNodes: nodes }), {
		timeoutMs: CALL_TIMEOUT_MS,
		clock,
	});
	if (!store.connected) {
		await store.close();
		throw new Error(`could not connect to the cluster at ${nodes.join(",")}`);
	}
	return store;
}

function clusterNodes(): string[] {
	return clusterHandle().nodes.map((n) => `${n.host}:${n.port}`);
}

describeLimitStore(
	"RedisLimitStore on a standalone Redis",
	async (clockUs) => ({ store: await openStandalone(server().url, clockUs) }),
	{ numRuns: 100, maxCommands: 30 },
);

describeLimitStore(
	"RedisLimitStore on a 3-master Redis Cluster",
	async (clockUs) => ({ store: await openCluster(clusterNodes(), clockUs) }),
	{ numRuns: 100, maxCommands: 30 },
);

// ---------------------------------------------------------------------------------------------
// Redis-only behaviour

/** `calls` and `failed_calls` of one command in `INFO commandstats` (0 when never called). */
function commandStats(info: string, command: string): { calls: number; failed: number } {
	const line = new RegExp(`^cmdstat_${command}:calls=(\\d+),.*failed_calls=(\\d+)`, "m").exec(info);
	return { calls: Number(line?.[1] ?? 0), failed: Number(line?.[2] ?? 0) };
}

/** The scripts' SCRIPT EXISTS flags, in SCRIPTS order. */
async function cachedScripts(cli: (...args: string[]) => Promise<string>): Promise<string[]> {
	const shas = Object.values(SCRIPTS).map((s) => s.sha1);
	return (await cli("SCRIPT", "EXISTS", ...shas)).split("\n");
}

/** The three windows of one user of `model`, as the limiter builds them. */
function modelWindows(model: string): ScopedWindow[] {
	return [
		userWindow(model, "minute", "alice", 10_000),
		userWindow(model, "day", "alice", 100_000),
		win(windowKey(model, "model", "minute"), MINUTE_US, 20_000),
	];
}

/** A store on the standalone Redis and one on the cluster, open for one describe block. */
function openBoth(clock: FrozenClock): () => { s: RedisLimitStore; c: RedisLimitStore } {
	let s: RedisLimitStore | undefined;
	let c: RedisLimitStore | undefined;
	beforeAll(async () => {
		s = await openStandalone(server().url, clock.read);
		c = await openCluster(clusterNodes(), clock.read);
	});
	afterAll(async () => {
		await s?.close();
		await c?.close();
	});
	return () => {
		if (s === undefined || c === undefined) throw new Error("stores did not open");
		return { s, c };
	};
}

function lines(text: string): string[] {
	return text === "" ? [] : text.split("\n").sort();
}

describe("RedisLimitStore: NOSCRIPT recovery", () => {
	const clock = new FrozenClock();
	const stores = openBoth(clock);

	it("after SCRIPT FLUSH, reserve, peek, renewSlot and settle still succeed and re-cache their scripts", async () => {
		const { s } = stores();
		const redis = server();
		const model = freshModel();
		const windows = [userWindow(model, "minute", "alice", 10_000)];
		const lease = { limit: 2, leaseMs: 30_000 };
		clock.epoch();
		expect((await s.reserve(reserveRequest(model, "warm", windows, 1_000, lease))).kind).toBe(
			"admitted",
		);
		expect(await redis.cli("SCRIPT", "FLUSH")).toBe("OK");
		expect(await cachedScripts(redis.cli)).toEqual(["0", "0", "0", "0", "0", "0"]);

		const d = await s.reserve(reserveRequest(model, "a", windows, 2_000, lease));
		expect(d.kind).toBe("admitted");
		expect(d.windows.map((w) => w.remainingTokens)).toEqual([7_000]);
		expect(await s.peek(windows, slotKey(model))).toEqual({
			windows: d.windows,
			slotsInUse: 2,
		});
		expect(await s.renewSlot(slotKey(model), "a", 30_000)).toBe(true);
		expect(await s.settle(settleRequest(model, "a", windows, 2_000, 500, true))).toBe(true);
		expect((await s.peek(windows, slotKey(model))).slotsInUse).toBe(1);
		// batch, peek and renew are cached again; heartbeat and calibrate were never run.
		expect(await cachedScripts(redis.cli)).toEqual(["1", "1", "1", "0", "0", "0"]);
	});

	it("50 reserves sent in one tick go as one script call; after a flush it is resent once as EVAL", async () => {
		const { s } = stores();
		const redis = server();
		const model = freshModel();
		const windows = [userWindow(model, "minute", "alice", 1_000)];
		clock.epoch();
		await redis.cli("SCRIPT", "FLUSH");
		await redis.cli("CONFIG", "RESETSTAT");
		const batch = (round: number) =>
			Promise.all(
				Array.from({ length: 50 }, (_, i) =>
					s.reserve(reserveRequest(model, `r${round}-${i}`, windows, 1)),
				),
			);

		const first = await batch(1);
		expect(first.map((d) => d.kind)).toEqual(Array(50).fill("admitted"));
		const afterFlush = await redis.cli("INFO", "commandstats");
		// All 50 went out in one EVALSHA, refused; it was resent once as EVAL.
		expect(commandStats(afterFlush, "evalsha")).toEqual({ calls: 1, failed: 1 });
		expect(commandStats(afterFlush, "eval")).toEqual({ calls: 1, failed: 0 });

		const second = await batch(2);
		expect(second.map((d) => d.kind)).toEqual(Array(50).fill("admitted"));
		const cached = await redis.cli("INFO", "commandstats");
		expect(commandStats(cached, "evalsha")).toEqual({ calls: 2, failed: 1 });
		expect(commandStats(cached, "eval")).toEqual({ calls: 1, failed: 0 });
		// Every reserve charged exactly once: no refused EVALSHA ran, no EVAL ran twice.
		const peeked = await s.peek(windows, slotKey(model));
		expect(peeked.windows.map((w) => w.remainingTokens)).toEqual([900]);
	});

	it("in the cluster, 50 reserves over many models after SCRIPT FLUSH on every node all succeed", async () => {
		const { c } = stores();
		const handle = clusterHandle();
		const ports = handle.nodes.map((n) => n.port);
		clock.epoch();
		await Promise.all(ports.map((p) => handle.cli(p, "SCRIPT", "FLUSH")));
		await Promise.all(ports.map((p) => handle.cli(p, "CONFIG", "RESETSTAT")));
		const models = Array.from({ length: 50 }, () => freshModel());
		const decisions = await Promise.all(
			models.map((model) =>
				c.reserve(
					reserveRequest(model, "r", [userWindow(model, "minute", "alice", 1_000)], 10, {
						limit: 1,
						leaseMs: 30_000,
					}),
				),
			),
		);
		expect(decisions.map((d) => d.kind)).toEqual(Array(50).fill("admitted"));
		const stats = await Promise.all(ports.map((p) => handle.cli(p, "INFO", "commandstats")));
		const evalsha = stats.map((info) => commandStats(info, "evalsha"));
		const evals = stats.map((info) => commandStats(info, "eval"));
		expect(evalsha.reduce((sum, x) => sum + x.failed, 0)).toBe(50);
		expect(evalsha.reduce((sum, x) => sum + x.calls, 0)).toBe(50);
		expect(evals.reduce((sum, x) => sum + x.calls, 0)).toBe(50);
		expect(evals.reduce((sum, x) => sum + x.failed, 0)).toBe(0);
		// The models spread over the masters: every node had to load the script itself.
		expect(evals.filter((x) => x.calls > 0).length).toBe(3);
		for (const model of models) {
			const peeked = await c.peek([userWindow(model, "minute", "alice", 1_000)], slotKey(model));
			expect(peeked.slotsInUse).toBe(1);
			expect(peeked.windows.map((w) => w.remainingTokens)).toEqual([990]);
		}
	});
});

describe("RedisLimitStore: restart of the server", () => {
	let redis: RedisServer | undefined;
	afterAll(async () => {
		await redis?.stop();
	});

	it("works again with the same store object once reconnected, though data and script cache were lost", async () => {
		redis = await startRedis();
		const clock = new FrozenClock();
		clock.epoch();
		const errors: unknown[] = [];
		const store = await RedisLimitStore.standalone(redisStoreConfig({ url: redis.url }), {
			timeoutMs: CALL_TIMEOUT_MS,
			clock: clock.read,
			onConnectionError: (err) => errors.push(err),
		});
		try {
			const model = freshModel();
			const windows = [userWindow(model, "minute", "alice", 10_000)];
			const before = await store.reserve(reserveRequest(model, "before", windows, 4_000));
			expect(before.windows.map((w) => w.remainingTokens)).toEqual([6_000]);

			await redis.restart();

			const deadline = Date.now() + 3_000;
			let attempt = 0;
			let after: StoreDecision | undefined;
			while (after === undefined && Date.now() < deadline) {
				try {
					after = await store.reserve(reserveRequest(model, `after-${attempt++}`, windows, 1_000));
				} catch {
					await Bun.sleep(25);
				}
			}
			if (after === undefined) throw new Error("the store did not recover within 3 s");
			// The restarted server is empty: the window starts from full capacity.
			expect(after.kind).toBe("admitted");
			expect(after.windows.map((w) => w.remainingTokens)).toEqual([9_000]);
			expect(store.connected).toBe(true);
			expect(await store.ping()).toBe(true);
			// The first call on the new server found no script and sent it.
			const stats = await redis.cli("INFO", "commandstats");
			expect(commandStats(stats, "evalsha").failed).toBeGreaterThanOrEqual(1);
			expect(commandStats(stats, "eval").calls).toBeGreaterThanOrEqual(1);
		} finally {
			await store.close();
		}
	});
});

describe("RedisLimitStore: Lua script versions", () => {
	/**
	 * SHA1 of each script as sent (gcra.lua + the script's body). A changed script changes its
	 * SHA: every replica still running the old code keeps its own cached version, so a change
	 * must be deliberate. Update these with the new values when it is.
	 */
	const PINNED: Record<keyof typeof SCRIPTS, string> = {
		batch: "7ab4381aec8013e7b7265fbde325ed1d77446b77",
		peek: "c09780ff898f4ee15f57bf6bf4038843d30f1158",
		renew: "8aefd826fca1f5fc42aa88bdca73679d7767e410",
		heartbeat: "864271c14467839a57e5497f5358ad8b6d26daef",
		calibrate: "a52ab80e7ef501e6405f1774261f0e31d4fe8c16",
		queue: "5b1d7ddf5511f170a739cd7daf149a535488603f",
	};

	it("each script's source has the pinned SHA1, and every script is pinned", () => {
		const computed = Object.fromEntries(
			Object.entries(SCRIPTS).map(([name, s]) => [
				name,
				createHash("sha1").update(s.source).digest("hex"),
			]),
		);
		expect(computed).toEqual(PINNED);
		// The SHA the store sends with EVALSHA is the same one.
		const sent = Object.fromEntries(Object.entries(SCRIPTS).map(([name, s]) => [name, s.sha1]));
		expect(sent).toEqual(PINNED);
		for (const [name, s] of Object.entries(SCRIPTS)) expect(s.name).toBe(name);
	});

	it("Redis computes the same SHA1 when it loads each script", async () => {
		for (const s of Object.values(SCRIPTS)) {
			expect({ name: s.name, sha1: await server().cli("SCRIPT", "LOAD", s.source) }).toEqual({
				name: s.name,
				sha1: s.sha1,
			});
		}
	});
});

describe("RedisLimitStore: keys", () => {
	const clock = new FrozenClock();
	const stores = openBoth(clock);

	it("an admit writes one hash per owner (its windows' TATs and an expiry at or after them), the reservation and the slot set; settle removes the reservation", async () => {
		const store = stores().s;
		expect(store.kind).toBe("redis");
		const redis = server();
		const model = freshModel();
		const windows = modelWindows(model);
		const userHash = `trl:{${model}}:u:alice`;
		const modelHash = `trl:{${model}}:m`;
		expect(windows.map((w) => [w.key, w.field])).toEqual([
			[userHash, "minute"],
			[userHash, "day"],
			[modelHash, "minute"],
		]);
		const t0 = clock.epoch();
		const lease = { limit: 2, leaseMs: 30_000 };
		expect((await store.reserve(reserveRequest(model, "req-1", windows, 6_000, lease))).kind).toBe(
			"admitted",
		);

		const pattern = `trl:{${model}}:*`;
		expect(lines(await redis.cli("--scan", "--pattern", pattern))).toEqual(
			[userHash, modelHash, reservationKey(model, "req-1"), slotKey(model)].sort(),
		);
		const userMinute = t0 + 36_000_000; // 6,000 of 10,000 per minute
		const userDay = t0 + (6_000 * DAY_US) / 100_000;
		const modelMinute = t0 + 18_000_000; // 6,000 of 20,000 per minute
		// Each owner's hash holds its windows' TATs, and `x`: when it expires, the latest TAT
		// (to the ms) plus the owner's longest window.
		const userExpiry = Math.ceil(userDay / 1000) + DAY_US / 1000;
		const modelExpiry = Math.ceil(modelMinute / 1000) + MINUTE_US / 1000;
		expect(await redis.cli("TYPE", userHash)).toBe("hash");
		expect(await redis.cli("HMGET", userHash, "minute", "day", "x")).toBe(
			[userMinute, userDay, userExpiry].join("\n"),
		);
		expect(await redis.cli("PEXPIRETIME", userHash)).toBe(String(userExpiry));
		expect(await redis.cli("HMGET", modelHash, "minute", "x")).toBe(
			[modelMinute, modelExpiry].join("\n"),
		);
		expect(await redis.cli("PEXPIRETIME", modelHash)).toBe(String(modelExpiry));
		const reservation = reservationKey(model, "req-1");
		// The reservation records what each window was charged for the 6,000 tokens (µs).
		expect(await redis.cli("GET", reservation)).toBe(
			`h:${[userMinute, userDay, modelMinute].map((tat) => tat - t0).join(",")}`,
		);
		const reservationTtl = Number(await redis.cli("PTTL", reservation));
		expect(reservationTtl).toBeGreaterThan(24 * 3600 * 1000 - 60_000);
		expect(reservationTtl).toBeLessThanOrEqual(24 * 3600 * 1000);
		expect(await redis.cli("TYPE", slotKey(model))).toBe("zset");
		expect(await redis.cli("ZRANGE", slotKey(model), "0", "-1", "WITHSCORES")).toBe(
			`req-1\n${t0 / 1000 + 30_000}`,
		);
		const slotTtl = Number(await redis.cli("PTTL", slotKey(model)));
		expect(slotTtl).toBeGreaterThan(0);
		expect(slotTtl).toBeLessThanOrEqual(60_000);

		expect(await store.settle(settleRequest(model, "req-1", windows, 6_000, 3_000, true))).toBe(
			true,
		);
		expect(await redis.cli("EXISTS", reservation)).toBe("0");
		// Half refunded; the expiry stays where it was (never earlier than a TAT).
		expect(await redis.cli("HMGET", userHash, "minute", "day", "x")).toBe(
			[t0 + 18_000_000, t0 + (3_000 * DAY_US) / 100_000, userExpiry].join("\n"),
		);
		// The last lease released empties the slot set, which Redis then drops.
		expect(lines(await redis.cli("--scan", "--pattern", pattern))).toEqual(
			[userHash, modelHash].sort(),
		);

		// Without a lease nothing else appears: no slot set, no placeholder key.
		expect((await store.reserve(reserveRequest(model, "req-2", windows, 1_000))).kind).toBe(
			"admitted",
		);
		expect(await store.settle(settleRequest(model, "req-2", windows, 1_000, 1_000))).toBe(true);
		expect(lines(await redis.cli("--scan", "--pattern", pattern))).toEqual(
			[userHash, modelHash].sort(),
		);
	});

	it("a window refunded back to now is full again, and its hash still expires no earlier than the TAT it held", async () => {
		const store = stores().s;
		const redis = server();
		const model = freshModel();
		const windows = [userWindow(model, "minute", "alice", 10_000)];
		const t0 = clock.epoch();
		await store.reserve(reserveRequest(model, "r", windows, 5_000));
		const key = windows[0]?.key ?? "";
		const expiry = String(Math.ceil((t0 + 30_000_000) / 1000) + 60_000);
		expect(await redis.cli("PEXPIRETIME", key)).toBe(expiry);
		expect(await store.settle(settleRequest(model, "r", windows, 5_000, 0))).toBe(true);
		expect(await redis.cli("HGET", key, "minute")).toBe(String(t0));
		expect(await redis.cli("PEXPIRETIME", key)).toBe(expiry);
		expect(
			(await store.peek(windows, slotKey(model))).windows.map((w) => w.remainingTokens),
		).toEqual([10_000]);
	});

	it("a busy owner's expiry moves only when a TAT passes it: one PEXPIREAT, not one per request", async () => {
		const store = stores().s;
		const redis = server();
		const model = freshModel();
		const windows = [userWindow(model, "minute", "alice", 600_000)];
		clock.epoch();
		await redis.cli("CONFIG", "RESETSTAT");
		// 100 requests of 1,000 tokens: each moves the TAT by 100 ms, 10 s in all, well
		// within the minute of slack the first write gave the hash.
		for (let i = 0; i < 100; i++) {
			const d = await store.reserve(reserveRequest(model, `r${i}`, windows, 1_000));
			expect(d.kind).toBe("admitted");
		}
		const stats = await redis.cli("INFO", "commandstats");
		expect(commandStats(stats, "pexpireat").calls).toBe(1);
		expect(commandStats(stats, "hset").calls).toBe(100);
		expect(
			(await store.peek(windows, slotKey(model))).windows.map((w) => w.remainingTokens),
		).toEqual([500_000]);
	});

	for (const [label, record] of [
		["the reserved tokens alone", "5000"],
		["each window's charge in a key of its own", "i:30000000"],
	] as const) {
		it(`a reservation an earlier version recorded (${label}) is settled as reserved`, async () => {
			const store = stores().s;
			const redis = server();
			const model = freshModel();
			const windows = [userWindow(model, "minute", "alice", 10_000)];
			clock.epoch();
			await store.reserve(reserveRequest(model, "old", windows, 5_000));
			const key = reservationKey(model, "old");
			// What an earlier admit script wrote.
			await redis.cli("SET", key, record, "PX", "60000");
			expect(await store.settle(settleRequest(model, "old", windows, 5_000, 1_000))).toBe(true);
			expect(await redis.cli("EXISTS", key)).toBe("0");
			// Nothing refunded: the request keeps the 5,000 it reserved.
			expect(
				(await store.peek(windows, slotKey(model))).windows.map((w) => w.remainingTokens),
			).toEqual([5_000]);
			// Settled once: a retry finds nothing.
			expect(await store.settle(settleRequest(model, "old", windows, 5_000, 1_000))).toBe(false);
		});
	}

	it("in the cluster, all keys of one model share one slot and one node, while models spread over the masters", async () => {
		const clusterStore = stores().c;
		expect(clusterStore.kind).toBe("redis-cluster");
		const handle = clusterHandle();
		const ports = handle.nodes.map((n) => n.port);
		const entry = ports[0] ?? 0;
		clock.epoch();
		const owners = new Set<number>();
		// Models until two land on different masters (a third each time; 20 is plenty).
		for (let m = 0; m < 20 && owners.size < 2; m++) {
			const model = freshModel();
			const windows = modelWindows(model);
			const lease = { limit: 2, leaseMs: 30_000 };
			expect(
				(await clusterStore.reserve(reserveRequest(model, "req-1", windows, 1_000, lease))).kind,
			).toBe("admitted");
			const keys = [
				...new Set(windows.map((w) => w.key)),
				reservationKey(model, "req-1"),
				slotKey(model),
			];
			const slots = await Promise.all(keys.map((k) => handle.cli(entry, "CLUSTER", "KEYSLOT", k)));
			expect(new Set(slots).size).toBe(1);
			const held = await Promise.all(
				ports.map(async (p) =>
					lines(await handle.cli(p, "--scan", "--pattern", `trl:{${model}}:*`)),
				),
			);
			const holders = ports.filter((_, i) => (held[i]?.length ?? 0) > 0);
			expect(holders).toHaveLength(1);
			expect(held[ports.indexOf(holders[0] ?? -1)]).toEqual([...keys].sort());
			owners.add(holders[0] ?? -1);
		}
		// Not vacuous: the hash tag, not luck, keeps a model together.
		expect(owners.size).toBeGreaterThan(1);
	});
});

describe("RedisLimitStore: batches", () => {
	const clock = new FrozenClock();
	const stores = openBoth(clock);

	type Op =
		| { kind: "reserve"; user: number; cost: number; lease: boolean }
		| { kind: "settle"; pick: number; actual: number; release: boolean };

	type Planned =
		| { kind: "reserve"; id: string; op: Extract<Op, { kind: "reserve" }>; req: ReserveRequest }
		| { kind: "settle"; id: string; req: SettleRequest };

	const op: fc.Arbitrary<Op> = fc.oneof(
		fc.record({
			kind: fc.constant("reserve" as const),
			user: fc.integer({ min: 0, max: 2 }),
			cost: fc.integer({ min: 1, max: 7_000 }),
			lease: fc.boolean(),
		}),
		fc.record({
			kind: fc.constant("settle" as const),
			pick: fc.nat(),
			actual: fc.integer({ min: 0, max: 9_000 }),
			release: fc.boolean(),
		}),
	);
	const rounds = fc.array(
		fc.record({ ops: fc.array(op, { minLength: 1, maxLength: 12 }), gapUs: fc.nat(20_000_000) }),
		{ minLength: 1, maxLength: 5 },
	);

	for (const target of ["standalone", "cluster"] as const) {
		it(`on ${target} Redis, calls sent in one tick decide exactly as the same calls one at a time in that order (reference: the memory store)`, async () => {
			const redis = target === "standalone" ? stores().s : stores().c;
			let batchedRounds = 0;
			await fc.assert(
				fc.asyncProperty(rounds, async (plan) => {
					const reference = new MemoryLimitStore(clock.read);
					const model = freshModel();
					// A user's two windows with the model's between them: the script groups windows by
					// owner, and the answers must still name them in the order asked.
					const windowsOf = (user: number) => [
						userWindow(model, "minute", `u${user}`, 10_000),
						win(windowKey(model, "model", "minute"), MINUTE_US, 25_000),
						userWindow(model, "day", `u${user}`, 40_000),
					];
					const lease = { limit: 3, leaseMs: 30_000 };
					const open: { id: string; user: number; cost: number; lease: boolean }[] = [];
					let next = 0;
					clock.epoch();
					try {
						for (const round of plan) {
							clock.advance(round.gapUs);
							const planned: Planned[] = [];
							const settledNow = new Set<string>();
							for (const o of round.ops) {
								if (o.kind === "reserve") {
									const id = `r${next++}`;
									const req = reserveRequest(
										model,
										id,
										windowsOf(o.user),
										o.cost,
										o.lease ? lease : undefined,
									);
									planned.push({ kind: "reserve", id, op: o, req });
									continue;
								}
								const candidates = open.filter((r) => !settledNow.has(r.id));
								const r = candidates[o.pick % Math.max(1, candidates.length)];
								if (r === undefined) continue;
								settledNow.add(r.id);
								const req = settleRequest(
									model,
									r.id,
									windowsOf(r.user),
									r.cost,
									o.actual,
									o.release && r.lease,
								);
								planned.push({ kind: "settle", id: r.id, req });
							}
							// Redis: all sent in one tick, so one batch; the reference: one at a time, in order.
							const sent = planned.map(
								(p): Promise<StoreDecision | boolean> =>
									p.kind === "reserve" ? redis.reserve(p.req) : redis.settle(p.req),
							);
							if (sent.length > 1) batchedRounds++;
							const got = await Promise.all(sent);
							const want: (StoreDecision | boolean)[] = [];
							for (const p of planned) {
								want.push(
									p.kind === "reserve"
										? await reference.reserve(p.req)
										: await reference.settle(p.req),
								);
							}
							expect(got).toEqual(want);
							planned.forEach((p, i) => {
								const d = got[i];
								if (p.kind === "reserve" && typeof d === "object" && d.kind === "admitted") {
									open.push({ id: p.id, user: p.op.user, cost: p.op.cost, lease: p.op.lease });
								}
							});
							for (const id of settledNow) {
								open.splice(
									open.findIndex((r) => r.id === id),
									1,
								);
							}
						}
						const peeks = [0, 1, 2].map((u) => redis.peek(windowsOf(u), slotKey(model)));
						const refPeeks = [0, 1, 2].map((u) => reference.peek(windowsOf(u), slotKey(model)));
						expect(await Promise.all(peeks)).toEqual(await Promise.all(refPeeks));
					} finally {
						await reference.close();
					}
				}),
				{ numRuns: 40 },
			);
			// The property is not vacuous: many rounds went to Redis as one batch of several calls.
			expect(batchedRounds).toBeGreaterThan(20);
		});
	}
});
