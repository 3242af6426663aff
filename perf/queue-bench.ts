/**
 * How fast a freed concurrency slot reaches a request waiting for it (the slot
 * handoff), p50 and p99, measured through the limiter as the gateway uses it:
 * one slot; a holder admitted; a waiter queued behind it; the holder finishes at
 * t0 (its settlement sent); the waiter is admitted at t1; handoff = t1 - t0.
 *
 *   memory        one gateway, the in-process store
 *   redis         one gateway on Redis (the slot freed by the same replica)
 *   redis, across the holder on one replica, the waiter on another, one Redis:
 *                 the shared queue grants the slot to the waiter when the
 *                 holder's replica settles; the waiter's replica learns it
 *                 on its next poll (every 25 ms)
 *
 * Then the fairness case of the tests, through the limiter: two slots, user A
 * queues 100 requests, then user B sends 5; each admitted request finishes on
 * the next turn. Prints where B's requests were admitted: on the memory store,
 * and on Redis with A's requests on one replica and B's on another.
 *
 * Then what a grant costs Redis as the shared queue grows (10 to 5,000 users
 * waiting, one request each): the script's own time per call (INFO
 * commandstats) for a poll that grants the one free slot, and for a poll with
 * no slot free (what each replica sends every 25 ms while it has requests
 * waiting).
 *
 *   bun perf/queue-bench.ts [handoffs=200]
 */
import { parseConfig } from "../src/config/loader.ts";
import type { ModelConfig } from "../src/config/schema.ts";
import { queueKey, type Spender, slotKey, TokenLimiter } from "../src/limits/limiter.ts";
import { MemoryLimitStore } from "../src/limits/memory-store.ts";
import { RedisLimitStore } from "../src/limits/redis-store.ts";
import { redisStoreConfig, startRedis } from "../test/support/redis.ts";

const handoffs = Number(Bun.argv[2] ?? 200);
if (!Number.isInteger(handoffs) || handoffs <= 0) {
	console.error("usage: bun perf/queue-bench.ts [handoffs=200]");
	process.exit(2);
}

/** Model `m` with a minute budget far above what is spent, and these settings. */
function modelWith(settings: string): ModelConfig {
	const yaml = `token:
  rate-limit:
    models:
      m:
        max-tokens-per-minute: 1000000000
${settings.replace(/^/gm, "        ")}
vllm:
  services:
    m: http://127.0.0.1:9
`;
	return parseConfig(yaml, {}, "queue-bench").models.get("m") as ModelConfig;
}
const model = modelWith("max-concurrent-requests: 1\nmax-queue-wait-ms: 10000");
const holder: Spender = { user: "holder" };
const waiter: Spender = { user: "waiter" };

async function measure(holding: TokenLimiter, waiting: TokenLimiter): Promise<number[]> {
	const times: number[] = [];
	for (let i = 0; i < handoffs + 10; i++) {
		const held = await holding.admit(model, holder, 10);
		if (!held.admitted) throw new Error("the holder was not admitted");
		const queued = waiting.admit(model, waiter, 10);
		// The waiter is in the queue once its first attempt has been refused.
		while (waiting.queueDepth(model.id) === 0) await new Promise((r) => setImmediate(r));
		const t0 = performance.now();
		await held.ticket.finish(10);
		const got = await queued;
		const t1 = performance.now();
		if (!got.admitted) throw new Error("the waiter was not admitted");
		await got.ticket.finish(10);
		if (i >= 10) times.push(t1 - t0);
	}
	return times.sort((a, b) => a - b);
}

const q = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))] ?? 0;
const row = (name: string, xs: number[]) =>
	console.log(
		`${name.padEnd(15)} p50 ${q(xs, 0.5).toFixed(2)} ms   p99 ${q(xs, 0.99).toFixed(2)} ms   max ${q(xs, 1).toFixed(2)} ms`,
	);

console.log(
	`slot handoff, ${handoffs} handoffs each (one slot, holder finishes → waiter admitted):`,
);
const memory = new TokenLimiter(new MemoryLimitStore());
row("memory", await measure(memory, memory));

async function fairness(name: string, forA: TokenLimiter, forB: TokenLimiter): Promise<void> {
	const fair = modelWith(
		"max-concurrent-requests: 2\nmax-queue-wait-ms: 60000\nmax-queued-requests: 200",
	);
	const order: string[] = [];
	const run = async (user: string, i: number) => {
		const limiter = user === "A" ? forA : forB;
		const a = await limiter.admit(fair, { user }, 10);
		if (!a.admitted) throw new Error(`${user}${i} was not admitted`);
		order.push(`${user}${i}`);
		await new Promise((r) => setImmediate(r));
		await a.ticket.finish(10);
	};
	const as = Array.from({ length: 100 }, (_, i) => run("A", i));
	while (forA.queueDepth("m") < 98) await new Promise((r) => setImmediate(r));
	const bs = Array.from({ length: 5 }, (_, i) => run("B", i));
	await Promise.all([...as, ...bs]);
	const at = (name: string) => order.indexOf(name) + 1;
	console.log(
		`fairness, ${name} (2 slots; A queues 100, then B sends 5): B admitted ${[0, 1, 2, 3, 4].map((i) => `#${at(`B${i}`)}`).join(", ")} of 105; A's 30th #${at(order.filter((o) => o.startsWith("A"))[29] ?? "")}`,
	);
}
const alone = new TokenLimiter(new MemoryLimitStore());
await fairness("memory", alone, alone);

const redis = await startRedis();
try {
	const open = () =>
		RedisLimitStore.standalone(redisStoreConfig({ port: redis.port, timeoutMs: 2000 }), {
			timeoutMs: 2000,
		});
	const a = await open();
	const b = await open();
	const one = new TokenLimiter(a);
	row("redis", await measure(one, one));
	const other = new TokenLimiter(b);
	row("redis, across", await measure(one, other));
	await fairness("redis, A on one replica, B on another", one, other);
	console.log("grant cost on Redis (the script's time per call, INFO commandstats):");
	const usPerCall = async () => {
		const info = await redis.cli("INFO", "commandstats");
		return Number(/cmdstat_evalsha:calls=\d+,usec=\d+,usec_per_call=([\d.]+)/.exec(info)?.[1] ?? 0);
	};
	for (const users of [10, 100, 1000, 5000]) {
		const m = `grant-${users}`;
		const target = {
			queueKey: queueKey(m),
			slotKey: slotKey(m),
			limit: 1,
			agingMs: 10_000,
			maxWaitMs: 600_000,
		};
		const holdSlot = (id: string) =>
			redis.cli("ZADD", slotKey(m), String(Date.now() + 600_000), id);
		await holdSlot("holder");
		for (let i = 0; i < users; i++) {
			await a.queue.join(target, "bench", {
				id: `e${i}`,
				user: `u${i}`,
				tenant: `t${i % 10}`,
				rank: i % 3,
				ownSlots: [],
				maxQueued: 1_000_000,
			});
		}
		const grants = Math.min(50, users / 2);
		await redis.cli("CONFIG", "RESETSTAT");
		for (let g = 0; g < grants; g++) {
			await redis.cli("DEL", slotKey(m));
			if ((await a.queue.poll(target, "bench")).granted.length !== 1) throw new Error("no grant");
		}
		const granting = await usPerCall();
		await holdSlot("holder-2");
		await redis.cli("CONFIG", "RESETSTAT");
		for (let g = 0; g < 100; g++) await a.queue.poll(target, "bench");
		console.log(
			`  ${String(users).padStart(5)} waiting: a poll that grants ${granting.toFixed(1)} µs, a poll with no slot free ${(await usPerCall()).toFixed(1)} µs`,
		);
	}
	await a.close();
	await b.close();
} finally {
	await redis.stop();
}
process.exit(0);
