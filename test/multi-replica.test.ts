import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { oneModelConfig } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { type GatewayProcess, spawnGateway } from "./support/process.ts";
import { type RedisServer, startRedis } from "./support/redis.ts";
import { until } from "./support/wait.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/**
 * Several gateway processes sharing one Redis: budgets and concurrency limits
 * hold across replicas, and a replica that dies does not keep its slots.
 */

let redis: RedisServer;
let mock: MockVllm;

beforeAll(async () => {
	redis = await startRedis();
	mock = startMockVllm({ models: ["llama2-7b"], record: false });
});

afterAll(async () => {
	await mock.stop();
	await redis.stop();
});

function redisExtra(extra = ""): string {
	return `store: redis
spring:
  data:
    redis:
      host: 127.0.0.1
      port: ${redis.port}
redis:
  failure-policy: local
${extra}`;
}

function chat(gw: GatewayProcess, user: string, maxTokens: number, requestId?: string) {
	return fetch(`${gw.url}/v1/chat/completions`, {
		method: "POST",
		headers: {
			"content-type": "application/json",
			"x-user-id": user,
			...(requestId === undefined ? {} : { "x-request-id": requestId }),
		},
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
			max_tokens: maxTokens,
		}),
	});
}

/** Concurrency slots of `llama2-7b` in use across every replica, as `gw` reads them from Redis. */
async function slotsInUse(gw: GatewayProcess): Promise<number> {
	const res = await fetch(`${gw.url}/api/v1/models/llama2-7b/health`);
	return ((await res.json()) as { concurrency: { inUse: number } }).concurrency.inUse;
}

describe("two gateway processes sharing one Redis", () => {
	let a: GatewayProcess;
	let b: GatewayProcess;

	beforeAll(async () => {
		const yaml = oneModelConfig(
			mock.url,
			{
				"max-tokens-per-minute": 1_000_000,
				"max-tokens-per-hour": 5000,
				"max-concurrent-requests": 10,
				"max-queue-wait-ms": 0,
			},
			redisExtra(),
		);
		[a, b] = await Promise.all([spawnGateway(yaml), spawnGateway(yaml)]);
	});

	afterAll(async () => {
		await Promise.all([a.stop(), b.stop()]);
	});

	it("holds the concurrency limit globally across both replicas", async () => {
		mock.behavior.firstTokenDelayMs = 800;
		try {
			const responses = await Promise.all(
				Array.from({ length: 40 }, (_, i) => chat(i % 2 === 0 ? a : b, `conc-${i}`, 5)),
			);
			const codes = await Promise.all(
				responses.map(async (r) =>
					r.status === 200 ? "ok" : ((await r.json()) as { error: { code: string } }).error.code,
				),
			);
			expect(codes.filter((c) => c === "ok").length).toBe(10);
			expect(codes.filter((c) => c === "concurrency_limit_exceeded").length).toBe(30);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
		}
		// Every slot was returned (each replica settles after answering): both see none in use.
		for (const gw of [a, b]) {
			await until(async () => (await slotsInUse(gw)) === 0, {
				what: `${gw.url} to see every slot returned`,
			});
		}
	});
});

describe("requests that share an x-request-id", () => {
	it("each hold a slot of their own: the limit holds and every slot comes back", async () => {
		const yaml = oneModelConfig(
			mock.url,
			{ "max-concurrent-requests": 4, "max-queue-wait-ms": 0 },
			redisExtra(),
		);
		const [a, b] = await Promise.all([spawnGateway(yaml), spawnGateway(yaml)]);
		mock.behavior.firstTokenDelayMs = 800;
		try {
			const statuses = await Promise.all(
				Array.from({ length: 10 }, (_, i) =>
					chat(i % 2 === 0 ? a : b, `same-${i}`, 5, "one-id-for-all").then((r) => r.status),
				),
			);
			expect(statuses.filter((s) => s === 200).length).toBe(4);
			expect(statuses.filter((s) => s === 429).length).toBe(6);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
		}
		try {
			for (const gw of [a, b]) {
				await until(async () => (await slotsInUse(gw)) === 0, {
					what: `${gw.url} to see every slot returned`,
				});
			}
		} finally {
			await Promise.all([a.stop(), b.stop()]);
		}
	});
});

describe("budgets across replicas", () => {
	it("never gives one user more than the budget when the budget, not concurrency, is the limit", async () => {
		const yaml = oneModelConfig(
			mock.url,
			{
				"max-tokens-per-minute": 1_000_000,
				"max-tokens-per-hour": 5000,
				"max-concurrent-requests": 1000,
			},
			redisExtra(),
		);
		const [a, b] = await Promise.all([spawnGateway(yaml), spawnGateway(yaml)]);
		mock.behavior.firstTokenDelayMs = 1500;
		try {
			const statuses = await Promise.all(
				Array.from({ length: 300 }, (_, i) =>
					chat(i % 2 === 0 ? a : b, "budget-user", 42).then((r) => r.status),
				),
			);
			expect(statuses.filter((s) => s === 200).length).toBe(100);
			expect(statuses.filter((s) => s === 429).length).toBe(200);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await Promise.all([a.stop(), b.stop()]);
		}
	});
});

describe("a replica killed while holding slots", () => {
	it("gets its slots back after the lease TTL", async () => {
		const yaml = oneModelConfig(
			mock.url,
			{ "max-concurrent-requests": 3, "max-queue-wait-ms": 0 },
			redisExtra("  lease-ttl-ms: 1000\n  timeout-ms: 1000\n"),
		);
		const doomed = await spawnGateway(yaml);
		const survivor = await spawnGateway(yaml);
		mock.behavior.mode = "hang";
		try {
			const held = Array.from({ length: 3 }, (_, i) =>
				chat(doomed, `held-${i}`, 5).catch(() => undefined),
			);
			const inUse = () => slotsInUse(survivor);
			await until(async () => (await inUse()) === 3, {
				what: "the doomed replica to hold all three slots",
				timeoutMs: 3000,
			});
			const refused = await chat(survivor, "blocked", 5);
			expect(refused.status).toBe(429);

			await doomed.kill();
			await Promise.all(held);
			mock.behavior.mode = "ok";
			// The dead replica renews nothing: its leases lapse within the TTL (1 s).
			await until(async () => (await inUse()) === 0, {
				what: "the dead replica's leases to lapse",
				timeoutMs: 3000,
			});
			expect((await chat(survivor, "after", 5)).status).toBe(200);
		} finally {
			mock.behavior.mode = "ok";
			await survivor.stop();
		}
	});

	it("keeps renewing the lease of a request that outlives the TTL", async () => {
		const yaml = oneModelConfig(
			mock.url,
			{ "max-concurrent-requests": 1, "max-queue-wait-ms": 0 },
			redisExtra("  lease-ttl-ms: 1500\n  timeout-ms: 1000\n"),
		);
		const gw = await spawnGateway(yaml);
		// Long enough that the request is still running well after the check below.
		mock.behavior.firstTokenDelayMs = 5000;
		try {
			const long = chat(gw, "long", 5);
			await until(async () => (await slotsInUse(gw)) === 1, {
				what: "the long request to take the slot",
			});
			// Wall-clock time must pass: more than two lease TTLs since the slot was taken.
			await Bun.sleep(3400);
			// Still held after more than two TTLs, because the live replica renews it.
			expect((await chat(gw, "other", 5)).status).toBe(429);
			expect((await long).status).toBe(200);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await gw.stop();
		}
	});
});

describe("a replica killed with requests waiting in its queue", () => {
	it("leaves nothing behind: the other replica serves on, no slot or reservation is left", async () => {
		// What earlier tests' killed replicas left (reservations lapse only after a day) is not this test's.
		await redis.cli("FLUSHALL");
		const yaml = oneModelConfig(
			mock.url,
			{ "max-concurrent-requests": 1, "max-queue-wait-ms": 20_000 },
			redisExtra("  lease-ttl-ms: 1000\n"),
		);
		const holder = await spawnGateway(yaml);
		const doomed = await spawnGateway(yaml);
		mock.behavior.firstTokenDelayMs = 1500;
		try {
			const held = chat(holder, "holder", 5);
			await until(async () => (await slotsInUse(doomed)) === 1, {
				what: "the holder to take the slot",
			});
			const queued = Array.from({ length: 3 }, (_, i) =>
				chat(doomed, `queued-${i}`, 5).catch(() => undefined),
			);
			await until(
				async () => {
					const res = await fetch(`${doomed.url}/api/v1/models/llama2-7b/health`);
					return ((await res.json()) as { queue: { waiting: number } }).queue.waiting === 3;
				},
				{ what: "three requests to wait on the doomed replica" },
			);
			await doomed.kill();
			await Promise.all(queued);
			mock.behavior.firstTokenDelayMs = 0;
			expect((await held).status).toBe(200);
			await until(async () => (await slotsInUse(holder)) === 0, {
				what: "the slot to come back",
			});
			expect((await chat(holder, "after", 5)).status).toBe(200);
			// Once the last request is settled, nothing of anyone's is left in Redis: no
			// reservation, no lease, and none of the dead replica's queue entries.
			await until(
				async () =>
					(await redis.cli("--scan", "--pattern", "trl:{llama2-7b}:r:*")) === "" &&
					Number(await redis.cli("ZCARD", "trl:{llama2-7b}:slots")) === 0 &&
					Number(await redis.cli("HLEN", "trl:{llama2-7b}:q:m")) === 0 &&
					(await redis.cli("--scan", "--pattern", "trl:{llama2-7b}:q:[eo]e*")) === "",
				{ what: "no reservation, lease or queue entry to be left in Redis" },
			);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await holder.stop();
		}
	});
});
