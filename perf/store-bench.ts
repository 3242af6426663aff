/**
 * Limit-store throughput from one process: reserve+settle pairs per second on
 * the memory store, a standalone Redis and a 3-master Redis Cluster (one model,
 * then the same load spread over 30 models), with what each pair cost Redis:
 * script calls (INFO commandstats) and the Redis processes' own CPU time.
 *
 * 1,000 users, each with a minute and a day window, a model-wide minute window
 * and a concurrency lease; each user's window list is built once and reused, as
 * the limiter does.
 *
 *   bun perf/store-bench.ts [pairs=100000] [inFlight=256]
 */
import { readFileSync } from "node:fs";
import { MemoryLimitStore } from "../src/limits/memory-store.ts";
import { RedisLimitStore } from "../src/limits/redis-store.ts";
import type { LimitStore, ScopedWindow } from "../src/limits/store.ts";
import { redisStoreConfig, startRedis, startRedisCluster } from "../test/support/redis.ts";

const pairs = Number(Bun.argv[2] ?? 100_000);
const inFlight = Number(Bun.argv[3] ?? 256);
const USERS = 1000;
const MINUTE_US = 60_000_000;
const DAY_US = 86_400_000_000;
const LIMITS = { limitTokens: 1_000_000_000, burstTokens: 1_000_000_000 };

interface Spender {
	readonly model: string;
	readonly windows: ScopedWindow[];
}

/** Each user's windows, on one of `models` models (by user number). */
function spenders(models: number): Spender[] {
	return Array.from({ length: USERS }, (_, user) => {
		const model = models === 1 ? "bench" : `bench-${user % models}`;
		return {
			model,
			windows: [
				{ key: `trl:{${model}}:u:${user}`, field: "minute", windowUs: MINUTE_US, ...LIMITS },
				{ key: `trl:{${model}}:u:${user}`, field: "day", windowUs: DAY_US, ...LIMITS },
				{ key: `trl:{${model}}:m`, field: "minute", windowUs: MINUTE_US, ...LIMITS },
			],
		};
	});
}

async function run(store: LimitStore, models = 1): Promise<number> {
	const users = spenders(models);
	let next = 0;
	const started = performance.now();
	await Promise.all(
		Array.from({ length: inFlight }, async () => {
			for (;;) {
				const i = next++;
				if (i >= pairs) return;
				const { model, windows } = users[i % USERS] ?? { model: "", windows: [] };
				const requestId = `b${i}`;
				const reservationKey = `trl:{${model}}:r:${requestId}`;
				const slotKey = `trl:{${model}}:slots`;
				const decision = await store.reserve({
					requestId,
					windows,
					costTokens: 300,
					reservationKey,
					slot: { key: slotKey, limit: 1_000_000, leaseMs: 30_000 },
				});
				if (decision.kind !== "admitted") throw new Error(`unexpected ${decision.kind}`);
				await store.settle({
					requestId,
					windows,
					reservationKey,
					reservedTokens: 300,
					actualTokens: 120,
					slotKey,
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

/** CPU time (user + system) a process has used, in microseconds. */
function cpuUs(pid: number): number {
	const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
	return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

async function pidOf(cli: (...args: string[]) => Promise<string>): Promise<number> {
	return Number(/^process_id:(\d+)/m.exec(await cli("INFO", "server"))?.[1]);
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
const redisPid = await pidOf(redis.cli);
const redisCpu = cpuUs(redisPid);
const redisRate = await run(standalone);
const redisCpuPerPair = (cpuUs(redisPid) - redisCpu) / pairs;
const calls = evalCalls(await redis.cli("INFO", "commandstats"));
await standalone.close();
await redis.stop();

const cluster = await startRedisCluster({ masters: 3 });
const clusterRun = async (models: number) => {
	const store = await RedisLimitStore.cluster(
		redisStoreConfig({ clusterNodes: cluster.nodeList.split(","), timeoutMs: 5000 }),
		{ timeoutMs: 5000 },
	);
	const pids = await Promise.all(
		cluster.nodes.map((n) => pidOf((...args) => cluster.cli(n.port, ...args))),
	);
	const before = pids.map(cpuUs);
	const rate = await run(store, models);
	const perNode = pids.map((pid, i) => (cpuUs(pid) - (before[i] ?? 0)) / pairs);
	await store.close();
	return { rate, perNode };
};
const oneModel = await clusterRun(1);
const manyModels = await clusterRun(30);
await cluster.stop();

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const nodes = (perNode: number[]) => perNode.map((us) => `${us.toFixed(1)}`).join(" + ");
console.log(`pairs=${pairs} inFlight=${inFlight} (3 windows + a concurrency lease per request)`);
console.log(`memory                   ${fmt(memoryRate)} reserve+settle pairs/s`);
console.log(
	`redis                    ${fmt(redisRate)} pairs/s  (${(calls / pairs).toFixed(3)} script calls and ${redisCpuPerPair.toFixed(1)} µs of Redis CPU per pair)`,
);
console.log(
	`redis-cluster, 1 model   ${fmt(oneModel.rate)} pairs/s  (Redis CPU per pair by node: ${nodes(oneModel.perNode)} µs; one model = one slot = one shard)`,
);
console.log(
	`redis-cluster, 30 models ${fmt(manyModels.rate)} pairs/s  (Redis CPU per pair by node: ${nodes(manyModels.perNode)} µs)`,
);
process.exit(0);
