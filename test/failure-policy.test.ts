import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { RedisLimitStore } from "../src/limits/redis-store.ts";
import { ResilientLimitStore } from "../src/limits/resilient-store.ts";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { freePort, type RedisServer, redisStoreConfig, startRedis } from "./support/redis.ts";
import { freshModel, reserveRequest, userWindow } from "./support/store-conformance.ts";
import { admitted } from "./support/wait.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/**
 * Redis blinks: scripts flushed, the server restarted or gone. No client ever
 * sees a 500; each failure policy does what it says; the gateway recovers alone.
 */

let mock: MockVllm;

beforeAll(() => {
	mock = startMockVllm({ models: ["llama2-7b"], record: false });
});

afterAll(async () => {
	await mock.stop();
});

function config(port: number, policy: string, limits: Record<string, number> = {}, extra = "") {
	return oneModelConfig(
		mock.url,
		{ "max-tokens-per-minute": 1_000_000, "max-tokens-per-day": 100_000_000, ...limits },
		`store: redis
spring:
  data:
    redis:
      host: 127.0.0.1
      port: ${port}
redis:
  timeout-ms: 200
  failure-policy: ${policy}
${extra}`,
	);
}

function chat(gw: RunningGateway, user: string, maxTokens = 5) {
	return fetch(`${gw.url}/v1/chat/completions`, {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": user },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
			max_tokens: maxTokens,
		}),
	});
}

async function metric(gw: RunningGateway, line: RegExp): Promise<number> {
	const text = await (await fetch(`${gw.url}/metrics`)).text();
	let total = 0;
	for (const l of text.split("\n")) {
		if (line.test(l)) total += Number(l.split(" ").at(-1));
	}
	return total;
}

async function waitFor(check: () => Promise<boolean>, timeoutMs = 5000): Promise<boolean> {
	const deadline = Date.now() + timeoutMs;
	while (Date.now() < deadline) {
		if (await check()) return true;
		await Bun.sleep(50);
	}
	return check();
}

/** Sends `total` requests from `workers` parallel loops; returns every status. */
async function load(
	gw: RunningGateway,
	total: number,
	workers: number,
	during?: (i: number) => Promise<void>,
) {
	const statuses: number[] = [];
	let next = 0;
	await Promise.all(
		Array.from({ length: workers }, async () => {
			for (;;) {
				const i = next++;
				if (i >= total) return;
				if (during !== undefined) await during(i);
				statuses.push((await chat(gw, `load-${i % 20}`)).status);
			}
		}),
	);
	return statuses;
}

describe("script cache loss", () => {
	it("loses no request to NOSCRIPT when SCRIPT FLUSH runs mid-load", async () => {
		const redis = await startRedis();
		const gw = await startGateway(
			config(redis.port, "closed", { "max-concurrent-requests": 1000 }),
		);
		try {
			const statuses = await load(gw, 300, 8, async (i) => {
				if (i % 60 === 30) await redis.cli("SCRIPT", "FLUSH");
			});
			expect(statuses.filter((s) => s !== 200)).toEqual([]);
			expect(await metric(gw, /^token_limiter_fallback_total/)).toBe(0);
			// The scripts were reloaded where they were missing, by EVAL.
			const stats = await redis.cli("INFO", "commandstats");
			expect(stats).toMatch(/cmdstat_eval:calls=\d+/);
		} finally {
			await gw.stop();
			await redis.stop();
		}
	});
});

describe("settlements Redis could not take", () => {
	it("are retried once Redis answers again, so the refund and the lease release still land", async () => {
		const redis = await startRedis();
		const gw = await startGateway(
			config(redis.port, "local", {
				"max-concurrent-requests": 5,
				"max-tokens-per-minute": 100_000,
				// Slow enough to drain that the settled charge can be read back.
				"max-tokens-per-day": 100_000,
			}),
		);
		const usage = async () =>
			(await (await fetch(`${gw.url}/api/v1/admin/token-usage/llama2-7b/paused`)).json()) as {
				windows: { window: string; used: number }[];
				concurrency: { inUse: number };
			};
		try {
			mock.behavior.firstTokenDelayMs = 300;
			const inflight = chat(gw, "paused", 500);
			// Admitted (its reservation is in Redis) before Redis stops answering.
			await admitted(gw.gateway, 1);
			// Redis stops answering (but keeps its data) while the request finishes: its settle times out.
			await redis.cli("CLIENT", "PAUSE", "1500", "ALL");
			const res = await inflight;
			expect(res.status).toBe(200);
			const total = ((await res.json()) as { usage: { total_tokens: number } }).usage.total_tokens;
			const store = gw.gateway.deps.limiter.store;
			const pending = () => (store instanceof ResilientLimitStore ? store.pendingSettlements : -1);
			// The settle timed out (timeout-ms 200) and waits for a retry.
			expect(await waitFor(async () => pending() === 1, 1000)).toBe(true);
			// Once Redis answers, the deferred settle lands: charged vLLM's usage (the day window
			// drains ~1 token per 0.86 s meanwhile), not the 508 reserved.
			expect(total).toBeLessThan(100);
			const day = async () => (await usage()).windows.find((w) => w.window === "day")?.used ?? -1;
			const redisUp = () => store instanceof ResilientLimitStore && store.redisUp;
			expect(await waitFor(async () => pending() === 0 && redisUp(), 5000)).toBe(true);
			const charged = await day();
			expect(charged).toBeLessThanOrEqual(total);
			expect(charged).toBeGreaterThan(total - 10);
			expect((await usage()).concurrency.inUse).toBe(0);
			expect(pending()).toBe(0);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await gw.stop();
			await redis.stop();
		}
	});
});

describe("Redis restarted or gone", () => {
	let port: number;
	let redis: RedisServer | undefined;

	beforeAll(async () => {
		port = await freePort();
	});

	afterAll(async () => {
		await redis?.stop();
	});

	it("with failure-policy local: keeps serving through a restart, limits locally, then shares again", async () => {
		redis = await startRedis({ port });
		const gw = await startGateway(
			config(
				port,
				"local",
				{ "max-concurrent-requests": 1000 },
				"  replicas: 2\n  heartbeat-ms: 200\n",
			),
		);
		try {
			let restarted = false;
			let stopped: Promise<void> = Promise.resolve();
			const statuses = await load(gw, 200, 4, async (i) => {
				if (i === 60 && redis !== undefined) {
					const down = redis;
					redis = undefined;
					stopped = down.stop();
					await stopped;
				}
				if (i === 140 && !restarted) {
					restarted = true;
					// Other workers race ahead while Redis is down: the old server must be gone first.
					await stopped;
					redis = await startRedis({ port });
				}
			});
			// Never a 5xx because Redis blinked.
			expect(statuses.filter((s) => s >= 500)).toEqual([]);
			expect(
				await metric(gw, /^token_limiter_fallback_total\{policy="local",operation="reserve"\}/),
			).toBeGreaterThan(0);
			// Back to Redis by itself: the gauge returns to 1 and new windows are written there.
			expect(await waitFor(async () => (await metric(gw, /^token_limiter_store_up /)) === 1)).toBe(
				true,
			);
			expect((await chat(gw, "after-restart")).status).toBe(200);
			// The restarted server (fresh statistics) ran the admit and settle scripts.
			const stats = (await redis?.cli("INFO", "commandstats")) ?? "";
			expect(stats).toMatch(/cmdstat_eval(sha)?:calls=[1-9]/);
		} finally {
			await gw.stop();
		}
	});

	it("with failure-policy local: divides each limit by the replicas while Redis is down", async () => {
		redis ??= await startRedis({ port });
		const gw = await startGateway(
			config(port, "local", { "max-tokens-per-minute": 1000 }, "  replicas: 2\n"),
		);
		try {
			await redis.stop();
			redis = undefined;
			// 1000 per minute over 2 replicas: 500 here. 8 + 600 would fit 1000 but never fits 500.
			const refused = await chat(gw, "halved", 600);
			expect(refused.status).toBe(400);
			const body = (await refused.json()) as { error: { code: string; message: string } };
			expect(body.error.code).toBe("tokens_exceed_limit");
			expect(body.error.message).toContain("capacity 500");
			expect((await chat(gw, "halved", 300)).status).toBe(200);
			// Ready (it serves), but the store reads as degraded, with the policy in force.
			const ready = await fetch(`${gw.url}/health/ready`);
			expect(ready.status).toBe(200);
			const health = (await ready.json()) as {
				components: { store: { status: string; kind: string; policy: string } };
			};
			expect(health.components.store).toMatchObject({
				status: "DEGRADED",
				kind: "redis",
				policy: "local",
			});
		} finally {
			await gw.stop();
		}
	});

	it("with failure-policy closed: refuses with 503 limiter_unavailable, not ready, and recovers alone", async () => {
		redis ??= await startRedis({ port });
		const gw = await startGateway(config(port, "closed"));
		try {
			expect((await chat(gw, "closed-user")).status).toBe(200);
			await redis.stop();
			redis = undefined;
			const refused = await chat(gw, "closed-user");
			expect(refused.status).toBe(503);
			expect(refused.headers.get("retry-after")).toBe("1");
			const body = (await refused.json()) as { error: { code: string; type: string } };
			expect(body.error.code).toBe("limiter_unavailable");
			expect((await fetch(`${gw.url}/health/ready`)).status).toBe(503);
			// No made-up figures while the store is away.
			const usage = await fetch(`${gw.url}/api/v1/admin/token-usage/llama2-7b/closed-user`);
			expect(usage.status).toBe(503);
			expect(((await usage.json()) as { error: { code: string } }).error.code).toBe(
				"store_unavailable",
			);
			redis = await startRedis({ port });
			expect(await waitFor(async () => (await chat(gw, "closed-user")).status === 200)).toBe(true);
			expect((await fetch(`${gw.url}/health/ready`)).status).toBe(200);
		} finally {
			await gw.stop();
		}
	});

	it("with failure-policy open: admits without limits while Redis is down", async () => {
		redis ??= await startRedis({ port });
		const gw = await startGateway(config(port, "open", { "max-tokens-per-minute": 100 }));
		try {
			await redis.stop();
			redis = undefined;
			// Each request would cost 8 + 50 of a 100-per-minute budget: only one fits with limits.
			for (let i = 0; i < 4; i++) expect((await chat(gw, "open-user", 50)).status).toBe(200);
			expect(
				await metric(gw, /^token_limiter_fallback_total\{policy="open",operation="reserve"\}/),
			).toBeGreaterThanOrEqual(4);
		} finally {
			await gw.stop();
		}
	});

	it("learns the number of live replicas from their heartbeats in Redis", async () => {
		redis ??= await startRedis({ port });
		const yaml = config(port, "local", {}, "  heartbeat-ms: 100\n");
		const gws = await Promise.all([startGateway(yaml), startGateway(yaml), startGateway(yaml)]);
		try {
			const stores = gws.map((g) => g.gateway.deps.limiter.store);
			const counts = async () =>
				stores.map((s) => (s instanceof ResilientLimitStore ? s.replicas : -1));
			expect(await waitFor(async () => (await counts()).every((c) => c === 3), 3000)).toBe(true);
			await gws[2]?.stop();
			// A replica that stops announcing itself drops out after three heartbeats; one that
			// shuts down cleanly leaves the live set at once.
			expect(Number(await redis.cli("ZCARD", "trl:replicas"))).toBe(2);
			expect(
				await waitFor(async () => (await counts()).slice(0, 2).every((c) => c === 2), 3000),
			).toBe(true);
		} finally {
			await Promise.all(gws.slice(0, 2).map((g) => g.stop()));
		}
	});
});

describe("one slow call", () => {
	it("counts once however many requests its batch carried: Redis is not taken for down", async () => {
		const redis = await startRedis();
		const primary = await RedisLimitStore.standalone(redisStoreConfig({ url: redis.url }), {
			timeoutMs: 100,
		});
		const transitions: boolean[] = [];
		const store = new ResilientLimitStore(primary, {
			policy: "local",
			heartbeatMs: 60_000,
			hooks: { onTransition: (up) => transitions.push(up) },
		});
		try {
			const model = freshModel();
			const windows = [userWindow(model, "minute", "alice", 10_000)];
			expect((await store.reserve(reserveRequest(model, "warm", windows, 10))).kind).toBe(
				"admitted",
			);
			// Redis holds every reply for longer than the call's time limit: the ten requests of
			// one turn go as one call, which times out; the local policy answers each of them.
			await redis.cli("CLIENT", "PAUSE", "400", "ALL");
			const decisions = await Promise.all(
				Array.from({ length: 10 }, (_, i) =>
					store.reserve(reserveRequest(model, `slow-${i}`, windows, 10)),
				),
			);
			expect(decisions.map((d) => d.kind)).toEqual(Array(10).fill("admitted"));
			// One failed call is not three in a row: Redis is still in use.
			expect(store.redisUp).toBe(true);
			expect(transitions).toEqual([]);
		} finally {
			await store.close();
			await redis.stop();
		}
	});
});

describe("a full Redis (maxmemory reached, noeviction)", () => {
	it("is taken for down and stays down while it refuses writes, though it answers PING; then comes back", async () => {
		const full = await startRedis({ args: ["--maxmemory-policy", "noeviction"] });
		const gw = await startGateway(config(full.port, "local"));
		try {
			expect((await chat(gw, "before-full")).status).toBe(200);
			// Every write is now refused with OOM; reads and PING still answer.
			await full.cli("CONFIG", "SET", "maxmemory", "1");
			expect(await full.cli("PING")).toBe("PONG");
			for (let i = 0; i < 5; i++) expect((await chat(gw, `while-full-${i}`)).status).toBe(200);
			expect(await waitFor(async () => (await metric(gw, /^token_limiter_store_up /)) === 0)).toBe(
				true,
			);
			// Probes run every second: over three of them the store must not flap back up.
			const until = performance.now() + 3000;
			while (performance.now() < until) {
				expect(await metric(gw, /^token_limiter_store_up /)).toBe(0);
				await new Promise((r) => setTimeout(r, 100));
			}
			const ready = (await (await fetch(`${gw.url}/health/ready`)).json()) as {
				components: { store: { status: string; detail: string } };
			};
			expect(ready.components.store.status).toBe("DEGRADED");
			expect(ready.components.store.detail).toContain("OOM");
			await full.cli("CONFIG", "SET", "maxmemory", "0");
			expect(await waitFor(async () => (await metric(gw, /^token_limiter_store_up /)) === 1)).toBe(
				true,
			);
		} finally {
			await gw.stop();
			await full.stop();
		}
	});
});
