/**
 * RedisLimitStore on a real standalone Redis and a real 3-master Redis Cluster, both started by
 * the hermetic harness on free ports: the shared conformance suite (same table, same properties
 * as the memory store), then what only Redis has: the script cache, reconnection, the key
 * layout and its expiries, and cluster slot placement.
 */
import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { createHash } from "node:crypto";
import { reservationKey, slotKey, windowKey } from "../src/limits/limiter.ts";
import { RedisLimitStore } from "../src/limits/redis-store.ts";
import { SCRIPTS } from "../src/limits/scripts.ts";
import type { ClockUs, ScopedWindow, StoreDecision } from "../src/limits/store.ts";
import {
	type RedisClusterHandle,
	type RedisServer,
	redisStoreConfig,
	startRedis,
	startRedisCluster,
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

beforeAll(async () => {
	const [s, c] = await Promise.allSettled([startRedis(), startRedisCluster({ masters: 3 })]);
	if (s.status === "fulfilled") standalone = s.value;
	if (c.status === "fulfilled") cluster = c.value;
	if (s.status === "rejected") throw s.reason;
	if (c.status === "rejected") throw c.reason;
});

afterAll(async () => {
	await Promise.all([standalone?.stop(), cluster?.stop()]);
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

function lines(text: string): string[] {
	return text === "" ? [] : text.split("\n").sort();
}

describe("RedisLimitStore: NOSCRIPT recovery", () => {
	const clock = new FrozenClock();
	let standaloneStore: RedisLimitStore | undefined;
	let clusterStore: RedisLimitStore | undefined;

	beforeAll(async () => {
		standaloneStore = await openStandalone(server().url, clock.read);
		clusterStore = await openCluster(clusterNodes(), clock.read);
	});
	afterAll(async () => {
		await standaloneStore?.close();
		await clusterStore?.close();
	});

	function stores(): { s: RedisLimitStore; c: RedisLimitStore } {
		if (standaloneStore === undefined || clusterStore === undefined) {
			throw new Error("stores did not open");
		}
		return { s: standaloneStore, c: clusterStore };
	}

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
		// admit, settle, peek and renew are cached again; heartbeat and calibrate were never run.
		expect(await cachedScripts(redis.cli)).toEqual(["1", "1", "1", "1", "0", "0"]);
	});

	it("50 reserves sent in one tick after a flush all succeed: each failed EVALSHA is resent once as EVAL", async () => {
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
		// All 50 went out pipelined as EVALSHA and were refused; only those were resent, once each.
		expect(commandStats(afterFlush, "evalsha")).toEqual({ calls: 50, failed: 50 });
		expect(commandStats(afterFlush, "eval")).toEqual({ calls: 50, failed: 0 });

		const second = await batch(2);
		expect(second.map((d) => d.kind)).toEqual(Array(50).fill("admitted"));
		const cached = await redis.cli("INFO", "commandstats");
		expect(commandStats(cached, "evalsha")).toEqual({ calls: 100, failed: 50 });
		expect(commandStats(cached, "eval")).toEqual({ calls: 50, failed: 0 });
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
		admit: "d0a0e276abe922bbc3c6e6ff9ba4b806e9c63184",
		settle: "9021c922659a8aea45d0374b3bf1f78c759a50b1",
		peek: "b048e4a350e6ce4fccaa3eafa09957a4e9a3b61f",
		renew: "e8941a90cfeb0ce098daeb2cd4231f35d98eab1a",
		heartbeat: "982950f197ae43592471938ba1e7d7ee0b992be9",
		calibrate: "1baf8787b02ac233a9f72e4dee34510233fae80f",
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
	let store: RedisLimitStore | undefined;
	let clusterStore: RedisLimitStore | undefined;

	beforeAll(async () => {
		store = await openStandalone(server().url, clock.read);
		clusterStore = await openCluster(clusterNodes(), clock.read);
	});
	afterAll(async () => {
		await store?.close();
		await clusterStore?.close();
	});

	it("an admit writes exactly the window keys (expiring at their TAT), the reservation and the slot set; settle removes the reservation", async () => {
		if (store === undefined) throw new Error("store did not open");
		expect(store.kind).toBe("redis");
		const redis = server();
		const model = freshModel();
		const windows = modelWindows(model);
		const [userMinute, userDay, modelMinute] = windows.map((w) => w.key);
		const t0 = clock.epoch();
		const lease = { limit: 2, leaseMs: 30_000 };
		expect((await store.reserve(reserveRequest(model, "req-1", windows, 6_000, lease))).kind).toBe(
			"admitted",
		);

		const pattern = `trl:{${model}}:*`;
		expect(lines(await redis.cli("--scan", "--pattern", pattern))).toEqual(
			[...windows.map((w) => w.key), reservationKey(model, "req-1"), slotKey(model)].sort(),
		);
		// Each window holds its TAT and expires when it is reached (to the ms, in real time).
		const tats: [string | undefined, number][] = [
			[userMinute, t0 + 36_000_000], // 6,000 of 10,000 per minute
			[userDay, t0 + (6_000 * DAY_US) / 100_000],
			[modelMinute, t0 + 18_000_000], // 6,000 of 20,000 per minute
		];
		for (const [key, tat] of tats) {
			if (key === undefined) throw new Error("missing window");
			expect({ key, value: await redis.cli("GET", key) }).toEqual({ key, value: String(tat) });
			expect(Number(await redis.cli("PTTL", key))).toBeGreaterThan(0);
			expect({ key, at: await redis.cli("PEXPIRETIME", key) }).toEqual({
				key,
				at: String(Math.ceil(tat / 1000)),
			});
		}
		const reservation = reservationKey(model, "req-1");
		// The reservation records what each window was charged for the 6,000 tokens (µs).
		expect(await redis.cli("GET", reservation)).toBe(
			`i:${tats.map(([, tat]) => tat - t0).join(",")}`,
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
		// The last lease released empties the slot set, which Redis then drops.
		expect(lines(await redis.cli("--scan", "--pattern", pattern))).toEqual(
			windows.map((w) => w.key).sort(),
		);

		// Without a lease nothing else appears: no slot set, no placeholder key.
		expect((await store.reserve(reserveRequest(model, "req-2", windows, 1_000))).kind).toBe(
			"admitted",
		);
		expect(await store.settle(settleRequest(model, "req-2", windows, 1_000, 1_000))).toBe(true);
		expect(lines(await redis.cli("--scan", "--pattern", pattern))).toEqual(
			windows.map((w) => w.key).sort(),
		);
	});

	it("a window refunded back to now is deleted rather than kept drained", async () => {
		if (store === undefined) throw new Error("store did not open");
		const redis = server();
		const model = freshModel();
		const windows = [userWindow(model, "minute", "alice", 10_000)];
		clock.epoch();
		await store.reserve(reserveRequest(model, "r", windows, 5_000));
		expect(await redis.cli("EXISTS", windows[0]?.key ?? "")).toBe("1");
		expect(await store.settle(settleRequest(model, "r", windows, 5_000, 0))).toBe(true);
		expect(lines(await redis.cli("--scan", "--pattern", `trl:{${model}}:*`))).toEqual([]);
		expect(
			(await store.peek(windows, slotKey(model))).windows.map((w) => w.remainingTokens),
		).toEqual([10_000]);
	});

	it("a reservation an earlier version recorded (the reserved tokens alone) is settled as reserved", async () => {
		if (store === undefined) throw new Error("store did not open");
		const redis = server();
		const model = freshModel();
		const windows = [userWindow(model, "minute", "alice", 10_000)];
		clock.epoch();
		await store.reserve(reserveRequest(model, "old", windows, 5_000));
		const key = reservationKey(model, "old");
		// What the earlier admit script wrote: the token count.
		await redis.cli("SET", key, "5000", "PX", "60000");
		expect(await store.settle(settleRequest(model, "old", windows, 5_000, 1_000))).toBe(true);
		expect(await redis.cli("EXISTS", key)).toBe("0");
		// Nothing refunded: the request keeps the 5,000 it reserved.
		expect(
			(await store.peek(windows, slotKey(model))).windows.map((w) => w.remainingTokens),
		).toEqual([5_000]);
		// Settled once: a retry finds nothing.
		expect(await store.settle(settleRequest(model, "old", windows, 5_000, 1_000))).toBe(false);
	});

	it("in the cluster, all keys of one model share one slot and one node, while models spread over the masters", async () => {
		if (clusterStore === undefined) throw new Error("store did not open");
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
			const keys = [...windows.map((w) => w.key), reservationKey(model, "req-1"), slotKey(model)];
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
