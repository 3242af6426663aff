/**
 * Limit-store throughput from one process: reserve+settle pairs per second on
 * the memory store, a standalone Redis and a 3-master Redis Cluster, with the
 * Redis commands each pair cost (from INFO commandstats).
 *
 *   bun perf/store-bench.ts [pairs=100000] [inFlight=256]
 */
import { MemoryLimitStore } from "../src/limits/memory-store.ts";
import { RedisLimitStore } from "../src/limits/redis-store.ts";
import type { LimitStore, ScopedWindow } from "../src/limits/store.ts";
import { redisStoreConfig, startRedis, startRedisCluster } from "../test/support/redis.ts";

const pairs = Number(Bun.argv[2] ?? 100_000);
const inFlight = Number(Bun.argv[3] ?? 256);
const MINUTE_US = 60_000_000;
const DAY_US = 86_400_000_000;

function windowsOf(user: number): ScopedWindow[] {
	return [
		{
			key: `trl:{bench}:u:${user}`,
			field: "minute",
			windowUs: MINUTE_US,
			limitTokens: 1_000_000_000,
			burstTokens: 1_000_000_000,
		},
		{
			key: `trl:{bench}:u:${user}`,
			field: "day",
			windowUs: DAY_US,
			limitTokens: 1_000_000_000,
			burstTokens: 1_000_000_000,
		},
		{
			key: "trl:{bench}:m",
			field: "minute",
			windowUs: MINUTE_US,
			limitTokens: 1_000_000_000,
			burstTokens: 1_000_000_000,
		},
	];
}

async function run(store: LimitStore): Promise<number> {
	let next = 0;
	const started = performance.now();
	await Promise.all(
		Array.from({ length: inFlight }, async () => {
			for (;;) {
				const i = next++;
				if (i >= pairs) return;
				const windows = windowsOf(i % 1000);
				const requestId = `b${i}`;
				const reservationKey = `trl:{bench}:r:${requestId}`;
				const decision = await store.reserve({
					requestId,
					windows,
					costTokens: 300,
					reservationKey,
					slot: { key: "trl:{bench}:slots", limit: 1_000_000, leaseMs: 30_000 },
				});
				if (decision.kind !== "admitted") throw new Error(`unexpected ${decision.kind}`);
				await store.settle({
					requestId,
					windows,
					reservationKey,
					reservedTokens: 300,
					actualTokens: 120,
					slotKey: "trl:{bench}:slots",
				});
			}
		}),
	);
	return pairs / ((performance.now() - started) / 1000);
}

function evalCalls(stats: string): number {
	let total = 0;
	for (const m of stats.matchAll(/cmdstat_(evalsha|eval):calls=(\d+)/g)) total += Number(m[2]);
	return total;
}

const memory = new MemoryLimitStore();
const memoryRate = await run(memory);
await memory.close();

const redis = await startRedis();
const standalone = await RedisLimitStore.standalone(
	redisStoreConfig({ port: redis.port, timeoutMs: 5000 }),
	{ timeoutMs: 5000 },
);
await redis.cli("CONFIG", "RESETSTAT");
const redisRate = await run(standalone);
const commandStats = await redis.cli("INFO", "commandstats");
const calls = evalCalls(commandStats);
const usPerCall =
	/cmdstat_evalsha:calls=\d+,usec=\d+,usec_per_call=([\d.]+)/.exec(commandStats)?.[1] ?? "?";
await standalone.close();
await redis.stop();

const cluster = await startRedisCluster({ masters: 3 });
const clustered = await RedisLimitStore.cluster(
	redisStoreConfig({ clusterNodes: cluster.nodeList.split(","), timeoutMs: 5000 }),
	{
		timeoutMs: 5000,
	},
);
const clusterRate = await run(clustered);
await clustered.close();
await cluster.stop();

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
console.log(`pairs=${pairs} inFlight=${inFlight} (3 windows + a concurrency lease per request)`);
console.log(`memory        ${fmt(memoryRate)} reserve+settle pairs/s`);
console.log(
	`redis         ${fmt(redisRate)} pairs/s  (${(calls / pairs).toFixed(3)} Redis script calls per request, ${usPerCall} µs of Redis CPU each)`,
);
console.log(`redis-cluster ${fmt(clusterRate)} pairs/s  (one model = one slot = one shard)`);
process.exit(0);
