/**
 * What one request costs inside Redis's batch script, per entry of a call,
 * without the noise of a whole gateway run: the store builds one call of 64
 * admissions and one of their 64 settlements (two windows per user, a
 * concurrency lease, as in `bun run bench`), and those two calls are replayed
 * against a Redis started here, each variant in turn, many times; Redis's own
 * time per call (INFO commandstats) is read after each. The minimum and lower
 * quartile are the figures to compare: interference only ever adds time.
 *
 * Variants: `arguments` (a script that returns at once: what passing the call's
 * keys and arguments costs), `lua` (the batch script with every Redis command
 * answered by a stub: the script's own work), `commands` (only the Redis commands
 * an entry cannot do without, with no decision around them: the owner hash read
 * and written, the reservation set at admission and taken at settlement, the lease
 * added and removed — the floor of any script keeping the same guarantees),
 * `batch` (the script as shipped), and, when a file is given, that file in place
 * of src/limits/lua/batch.lua.
 *
 *   bun perf/script-bench.ts [runs=200] [other-batch.lua]
 */
import { readFileSync } from "node:fs";
import { RedisClient } from "bun";
import { RedisLimitStore } from "../src/limits/redis-store.ts";
import { SCRIPTS } from "../src/limits/scripts.ts";
import type { ScopedWindow } from "../src/limits/store.ts";
import { redisStoreConfig, startRedis } from "../test/support/redis.ts";

const runs = Number(Bun.argv[2] ?? 200);
const otherFile = Bun.argv[3];
if (!Number.isInteger(runs) || runs <= 0) {
	console.error("usage: bun perf/script-bench.ts [runs=200] [other-batch.lua]");
	process.exit(2);
}
const ENTRIES = 64;
const MINUTE_US = 60_000_000;
const DAY_US = 86_400_000_000;

interface Call {
	readonly keys: string[];
	readonly args: string[];
}

/** The store's two calls: 64 admissions, then their settlements, as it sends them. */
async function capture(port: number): Promise<{ admits: Call; settles: Call }> {
	const store = await RedisLimitStore.standalone(redisStoreConfig({ port, timeoutMs: 5000 }), {
		timeoutMs: 5000,
	});
	const calls: Call[] = [];
	// The store's one way to Redis, wrapped to keep a copy of each call it makes.
	const inner = store as unknown as {
		run: (script: unknown, keys: string[], args: string[]) => Promise<unknown>;
	};
	const send = inner.run.bind(store);
	inner.run = (script, keys, args) => {
		calls.push({ keys: [...keys], args: [...args] });
		return send(script, keys, args);
	};
	const window = (user: number, field: string, windowUs: number): ScopedWindow => ({
		key: `trl:{bench}:u:user-${user}`,
		field,
		windowUs,
		limitTokens: 1_000_000_000,
		burstTokens: 1_000_000_000,
	});
	const requests = Array.from({ length: ENTRIES }, (_, user) => ({
		requestId: `bench-${user}`,
		windows: [window(user, "minute", MINUTE_US), window(user, "day", DAY_US)],
		reservationKey: `trl:{bench}:r:bench-${user}`,
	}));
	const slot = { key: "trl:{bench}:slots", limit: 1_000_000, leaseMs: 30_000 };
	await Promise.all(requests.map((r) => store.reserve({ ...r, costTokens: 300, slot })));
	await Promise.all(
		requests.map((r) =>
			store.settle({ ...r, reservedTokens: 300, actualTokens: 120, slotKey: slot.key }),
		),
	);
	await store.close();
	const [admits, settles] = calls;
	if (admits === undefined || settles === undefined || calls.length !== 2) {
		throw new Error(`expected two calls of ${ENTRIES} entries, saw ${calls.length}`);
	}
	return { admits, settles };
}

/** The batch script with every Redis command answered by a stub (TIME aside). */
function stubbed(source: string): string {
	const stub = `local function stub(command)
  if command == 'HMGET' then return {false, false, false} end
  if command == 'GETDEL' then return 'h:18000000,3600000' end
  if command == 'SET' then return 'OK' end
  return 1
end
`;
	const line =
		"local ARGV, KEYS, tonumber, call, unpack = ARGV, KEYS, tonumber, redis.call, unpack";
	if (!source.includes(line)) throw new Error("batch.lua no longer binds `call` where expected");
	return source.replace(line, `${stub}${line.replace("redis.call", "stub")}`);
}

/**
 * The `commands` floor, per entry of this bench's calls (keys in threes: the user's
 * hash, the reservation, the lease set): what any script with the same guarantees
 * must ask of Redis, and nothing else.
 */
const FLOOR_ADMIT = `for i = 1, #KEYS, 3 do
  redis.call('HMGET', KEYS[i], 'minute', 'day', 'x')
  redis.call('HSET', KEYS[i], 'minute', '1', 'day', '1')
  redis.call('SET', KEYS[i + 1], 'h:1,2', 'PX', 86400000)
  redis.call('ZADD', KEYS[i + 2], 1, KEYS[i + 1])
end
return 1`;
const FLOOR_SETTLE = `for i = 1, #KEYS, 3 do
  redis.call('GETDEL', KEYS[i + 1])
  redis.call('HMGET', KEYS[i], 'minute', 'day', 'x')
  redis.call('HSET', KEYS[i], 'minute', '1', 'day', '1')
  redis.call('ZREM', KEYS[i + 2], KEYS[i + 1])
end
return 1`;

const redis = await startRedis();
try {
	const { admits, settles } = await capture(redis.port);
	const client = new RedisClient(`redis://127.0.0.1:${redis.port}`);
	const load = async (source: string) => String(await client.send("SCRIPT", ["LOAD", source]));
	if (admits.keys.length !== 3 * ENTRIES || settles.keys.length !== 3 * ENTRIES) {
		throw new Error("expected three keys an entry (owner hash, reservation, lease set)");
	}
	const both = async (source: string): Promise<[string, string]> => {
		const sha = await load(source);
		return [sha, sha];
	};
	const variants: [string, [string, string]][] = [
		["arguments", await both("return {0}")],
		["lua", await both(stubbed(SCRIPTS.batch.source))],
		["commands", [await load(FLOOR_ADMIT), await load(FLOOR_SETTLE)]],
		["batch", await both(SCRIPTS.batch.source)],
	];
	if (otherFile !== undefined) {
		const gcra = readFileSync(new URL("../src/limits/lua/gcra.lua", import.meta.url), "utf8");
		variants.push([otherFile, await both(`${gcra}\n${readFileSync(otherFile, "utf8")}`)]);
	}
	const usecOf = async (sha: string, call: Call): Promise<number> => {
		await client.send("CONFIG", ["RESETSTAT"]);
		await client.send("EVALSHA", [sha, String(call.keys.length), ...call.keys, ...call.args]);
		const stats = String(await client.send("INFO", ["commandstats"]));
		return Number(/cmdstat_evalsha:calls=\d+,usec=(\d+)/.exec(stats)?.[1] ?? Number.NaN);
	};
	const times = new Map<string, { admit: number[]; settle: number[] }>();
	for (const [name] of variants) times.set(name, { admit: [], settle: [] });
	// Interleaved, so that a noisy moment weighs on every variant alike; each settle call
	// follows an admit call of the same variant, which made the reservations it settles.
	for (let i = 0; i < runs; i++) {
		for (const [name, [admitSha, settleSha]] of variants) {
			const t = times.get(name);
			t?.admit.push(await usecOf(admitSha, admits));
			t?.settle.push(await usecOf(settleSha, settles));
		}
	}
	const quantile = (xs: number[], q: number): string => {
		const sorted = [...xs].sort((a, b) => a - b);
		const at = sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
		return (at / ENTRIES).toFixed(2);
	};
	console.log(
		`Redis time per entry of a ${ENTRIES}-entry call, µs (min / lower quartile / median of ${runs} runs):`,
	);
	for (const [name, t] of times) {
		console.log(
			`${name.padEnd(10)} admit ${quantile(t.admit, 0)} / ${quantile(t.admit, 0.25)} / ${quantile(t.admit, 0.5)}   settle ${quantile(t.settle, 0)} / ${quantile(t.settle, 0.25)} / ${quantile(t.settle, 0.5)}`,
		);
	}
	client.close();
} finally {
	await redis.stop();
}
process.exit(0);
