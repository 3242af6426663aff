/**
 * RedisLimitStore on a real standalone Redis and a real 3-master Redis Cluster, both started by
 * the hermetic harness on free ports: the shared conformance suite (same table, same properties
 * as the memory store), then what only Redis has: the script cache, reconnection, the key
 * layout and its expiries, and cluster slot placement.
 */
import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { createHash } from "node:crypto";
import fc from "fast-check";
import { mulDivCeil, mulDivFloor } from "../src/limits/gcra.ts";
import { reservationKey, slotKey, windowKey } from "../src/limits/limiter.ts";
import gcraLua from "../src/limits/lua/gcra.lua" with { type: "text" };
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
		admit: "f4c3a48f4b544ba21b2fc58aaa747fa69104f27f",
		settle: "e665897eae383220975c3eaa30f41e9db229128a",
		peek: "2ec86ad1b86fb231a4d5f8722022f0f2014a2c8b",
		renew: "41f6e37f4c6933f697b29aaf989ab6c53b6cb41d",
		heartbeat: "ae92cff422dfca9582f7c7c4fe1ee551cceb23a6",
		calibrate: "0cf828e899dfd61eec8c35539c50fb48bf377a1a",
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

describe("RedisLimitStore: Lua arithmetic", () => {
	/** gcra.lua's own functions, run by Redis over triples a, b, d. */
	const PROBE = `${gcraLua}
local out = {}
for i = 1, #ARGV, 3 do
  local a, b, d = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  out[#out + 1] = string.format('%.0f %.0f', mul_div_floor(a, b, d), mul_div_ceil(a, b, d))
end
return out`;
	const B52 = 2 ** 52 - 1;
	const MAX = BigInt(Number.MAX_SAFE_INTEGER);

	/** a < 2^53 and b, d < 2^52 (gcra.lua's stated range), with a result that is a safe integer. */
	function inRange([a, b, d]: readonly [number, number, number]): boolean {
		return (
			b <= B52 && d <= B52 && d > 0 && (BigInt(a) * BigInt(b) + BigInt(d) - 1n) / BigInt(d) <= MAX
		);
	}

	function gcd(x: number, y: number): number {
		let [p, q] = [x, y];
		while (q !== 0) [p, q] = [q, p % q];
		return p;
	}

	it("mul_div_floor and mul_div_ceil equal exact BigInt results (and gcra.ts's), past 2^53 too", async () => {
		const operand = fc.oneof(
			fc.integer({ min: 0, max: 1_000_000 }),
			fc.integer({ min: 0, max: 2 ** 40 }),
			fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
		);
		const divisor = fc.oneof(
			fc.integer({ min: 1, max: 1_000_000 }),
			fc.integer({ min: 1, max: 100_000_000_000 }),
			fc.integer({ min: 1, max: B52 }),
		);
		const random = fc.tuple(operand, fc.integer({ min: 0, max: B52 }), divisor);
		/** a·(b mod d) divisible by d with a·b past 2^53: ceil must equal floor. */
		const exact = fc
			.tuple(divisor, fc.integer({ min: 0, max: B52 }), fc.integer({ min: 1, max: 1_000_000 }))
			.map(([d, b, m]): [number, number, number] => {
				const r = b % d;
				return [(d / gcd(r, d)) * m, b, d];
			});
		const candidates: [number, number, number][] = [
			// Shapes the scripts meet: cost·W/L, B·W/L, slack·L/W, backlog·L/W.
			[12_000, 86_400_000_000, 7_000_001],
			[129_599_981_486, 7_000_001, 86_400_000_000],
			[Number.MAX_SAFE_INTEGER, 3, 7],
			[94_906_267, 94_906_267, 3], // product just above 2^53
			[86_400_000_000, 86_400_000_000, 86_400_000_001],
			[2 ** 40 + 3, 86_400_000_000, 86_400_000_001],
			[0, B52, 1],
			[B52, 0, 1],
			...fc.sample(random, 600),
			...fc.sample(exact, 200),
		];
		const cases = candidates.filter(inRange);
		expect(cases.length).toBeGreaterThan(300);

		const reply = await server().cli("EVAL", PROBE, "0", ...cases.flat().map(String));
		const got = reply.split("\n");
		expect(got).toHaveLength(cases.length);
		cases.forEach(([a, b, d], i) => {
			const product = BigInt(a) * BigInt(b);
			const floor = product / BigInt(d);
			const ceil = product % BigInt(d) === 0n ? floor : floor + 1n;
			const label = `${a}·${b}/${d}`;
			expect({ label, lua: got[i] }).toEqual({ label, lua: `${floor} ${ceil}` });
			expect({ label, ts: `${mulDivFloor(a, b, d)} ${mulDivCeil(a, b, d)}` }).toEqual({
				label,
				ts: `${floor} ${ceil}`,
			});
		});
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
		expect(await redis.cli("GET", reservation)).toBe("6000");
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
