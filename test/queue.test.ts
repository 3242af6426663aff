import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { createHash } from "node:crypto";
import OpenAI from "openai";
import { Logger } from "../src/log.ts";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { type GatewayProcess, spawnGateway } from "./support/process.ts";
import { type RedisServer, startRedis, startRedisCluster } from "./support/redis.ts";
import { allSettled, until } from "./support/wait.ts";

// Real servers: the mock vLLM, Redis, gateways on loopback.
setDefaultTimeout(60_000);

/**
 * Requests that find every concurrency slot taken wait for one in a fair queue
 * (max-queue-wait-ms, max-queued-requests), on the memory store and on Redis.
 */

let mock: MockVllm;
let redis: RedisServer;

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"] });
	redis = await startRedis();
});

afterAll(async () => {
	await mock.stop();
	await redis.stop();
});

const STORES = ["memory", "redis"] as const;
type Store = (typeof STORES)[number];

function storeExtra(store: Store): string {
	return store === "memory"
		? ""
		: `store: redis
spring:
  data:
    redis:
      host: 127.0.0.1
      port: ${redis.port}
`;
}

function config(store: Store, limits: Record<string, number>): string {
	return oneModelConfig(
		mock.url,
		{ "max-tokens-per-minute": 10_000_000, "max-tokens-per-day": 100_000_000, ...limits },
		storeExtra(store),
	);
}

function chat(
	gw: { readonly url: string },
	user: string,
	init: RequestInit = {},
): Promise<Response> {
	return fetch(`${gw.url}/v1/chat/completions`, {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": user },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: `hello from ${user}` }],
			max_tokens: 4,
		}),
		...init,
	});
}

/** The hash a configured API key is given by. */
function sha(key: string): string {
	return `sha256:${createHash("sha256").update(key).digest("hex")}`;
}

/** A short chat sent with API key `key`. */
function withKey(gw: RunningGateway, key: string): Promise<Response> {
	return fetch(`${gw.url}/v1/chat/completions`, {
		method: "POST",
		headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: key }],
			max_tokens: 2,
		}),
	});
}

interface ErrorBody {
	error: { code: string; message: string };
}

async function health(gw: { readonly url: string }) {
	const res = await fetch(`${gw.url}/api/v1/models/llama2-7b/health`);
	return (await res.json()) as {
		concurrency: { inUse: number };
		queue: { waiting: number; waitingHere: number; maxQueued: number; maxWaitMs: number };
	};
}

/** Waits until the model's one slot is held (by a request already sent). */
function slotTaken(gw: RunningGateway): Promise<void> {
	return until(async () => (await health(gw)).concurrency.inUse === 1, {
		what: "a request to hold the slot",
	});
}

/** Nothing is left behind: no slot in use, nobody waiting, every admitted request settled. */
async function nothingHeld(gw: RunningGateway): Promise<void> {
	await allSettled(gw.gateway);
	const h = await health(gw);
	expect(h.queue.waiting).toBe(0);
	expect(h.concurrency.inUse).toBe(0);
}

/** Chats that each must succeed, recording who finished in which order (`A0`, `B3`). */
function finishOrder() {
	const order: string[] = [];
	const send = (gw: { readonly url: string }, user: string, i: number) =>
		chat(gw, user).then(async (res) => {
			expect(res.status).toBe(200);
			await res.arrayBuffer();
			order.push(`${user}${i}`);
		});
	return { order, send };
}

/** The fairness tests' finding: B's five (B0..B4) all finished before A's 30th. */
function expectBBeforeThirtiethA(order: readonly string[]): void {
	const thirtiethA = order.indexOf(order.filter((o) => o.startsWith("A"))[29] ?? "");
	const lastB = Math.max(...[0, 1, 2, 3, 4].map((i) => order.indexOf(`B${i}`)));
	expect(thirtiethA).toBeGreaterThan(0);
	expect(lastB).toBeLessThan(thirtiethA);
}

async function metric(gw: RunningGateway, pattern: RegExp): Promise<number> {
	const text = await (await fetch(`${gw.url}/metrics`)).text();
	let sum = 0;
	for (const line of text.split("\n")) {
		if (pattern.test(line)) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
	}
	return sum;
}

for (const store of STORES) {
	describe(`the slot queue (${store} store)`, () => {
		it("serves 50 concurrent streams through 5 slots: all 200, never more than 5 at vLLM", async () => {
			const gw = await startGateway(
				config(store, { "max-concurrent-requests": 5, "max-queue-wait-ms": 20_000 }),
			);
			mock.behavior.firstTokenDelayMs = 40;
			mock.resetPeak();
			try {
				const client = new OpenAI({
					baseURL: `${gw.url}/v1`,
					apiKey: "unused",
					maxRetries: 0,
				});
				const texts = await Promise.all(
					Array.from({ length: 50 }, async (_, i) => {
						const stream = await client.chat.completions.create(
							{
								model: "llama2-7b",
								messages: [{ role: "user", content: `stream ${i}` }],
								max_tokens: 3,
								stream: true,
							},
							{ headers: { "x-user-id": `streamer-${i % 7}` } },
						);
						let text = "";
						for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
						return text;
					}),
				);
				expect(texts.every((t) => t.length > 0)).toBe(true);
				expect(mock.peakRunning()).toBeLessThanOrEqual(5);
				expect(mock.peakRunning()).toBeGreaterThanOrEqual(2);
				expect(
					await metric(gw, /^token_queue_wait_seconds_count\{.*outcome="admitted"/),
				).toBeGreaterThan(0);
				await nothingHeld(gw);
			} finally {
				mock.behavior.firstTokenDelayMs = 0;
				await gw.stop();
			}
		});

		it("shares the slots between users: 5 from B finish before A's 30th of 100", async () => {
			const gw = await startGateway(
				config(store, {
					"max-concurrent-requests": 2,
					"max-queue-wait-ms": 30_000,
					"max-queued-requests": 200,
				}),
			);
			mock.behavior.firstTokenDelayMs = 15;
			try {
				const { order, send } = finishOrder();
				const a = Array.from({ length: 100 }, (_, i) => send(gw, "A", i));
				await until(async () => (await health(gw)).queue.waiting >= 90, {
					what: "A's requests to queue",
				});
				const b = Array.from({ length: 5 }, (_, i) => send(gw, "B", i));
				await Promise.all([...a, ...b]);
				expectBBeforeThirtiethA(order);
				await nothingHeld(gw);
			} finally {
				mock.behavior.firstTokenDelayMs = 0;
				await gw.stop();
			}
		});

		it("refuses at once beyond max-queued-requests, and after max-queue-wait-ms with Retry-After", async () => {
			const gw = await startGateway(
				config(store, {
					"max-concurrent-requests": 1,
					"max-queue-wait-ms": 1000,
					"max-queued-requests": 2,
				}),
			);
			mock.behavior.firstTokenDelayMs = 2500;
			try {
				const slow = chat(gw, "holder");
				await slotTaken(gw);
				const waiting = [chat(gw, "w1"), chat(gw, "w2")];
				await until(async () => (await health(gw)).queue.waiting === 2, {
					what: "two requests to queue",
				});
				const full = await chat(gw, "w3");
				expect(full.status).toBe(429);
				// Answered at once: the other two are still waiting.
				expect((await health(gw)).queue.waiting).toBe(2);
				const fullBody = (await full.json()) as ErrorBody;
				expect(fullBody.error.code).toBe("concurrency_limit_exceeded");
				expect(fullBody.error.message).toContain("queue is full");

				for (const res of await Promise.all(waiting)) {
					expect(res.status).toBe(429);
					expect(((await res.json()) as ErrorBody).error.code).toBe("concurrency_limit_exceeded");
					expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
					expect(Number(res.headers.get("x-queue-wait-ms"))).toBeGreaterThanOrEqual(990);
				}
				expect(await metric(gw, /^token_rate_limit_exceeded_total\{.*reason="queue_timeout"/)).toBe(
					2,
				);
				expect(await metric(gw, /^token_queue_wait_seconds_count\{.*outcome="timeout"/)).toBe(2);
				mock.behavior.firstTokenDelayMs = 0;
				expect((await slow).status).toBe(200);
				await nothingHeld(gw);
			} finally {
				mock.behavior.firstTokenDelayMs = 0;
				await gw.stop();
			}
		});

		it("lets a client that leaves while queued go: nothing held, nothing sent to vLLM", async () => {
			const gw = await startGateway(
				config(store, { "max-concurrent-requests": 1, "max-queue-wait-ms": 20_000 }),
			);
			mock.behavior.firstTokenDelayMs = 800;
			try {
				const slow = chat(gw, "holder");
				await slotTaken(gw);
				const before = mock.requests.length;
				const leaving = new AbortController();
				const gone = chat(gw, "leaver", { signal: leaving.signal }).catch((e: unknown) => e);
				await until(async () => (await health(gw)).queue.waiting === 1, {
					what: "the request to queue",
				});
				leaving.abort();
				expect(await gone).toBeInstanceOf(Error);
				await until(async () => (await health(gw)).queue.waiting === 0, {
					what: "the queue to let it go",
				});
				expect(await metric(gw, /^token_queue_wait_seconds_count\{.*outcome="disconnected"/)).toBe(
					1,
				);
				mock.behavior.firstTokenDelayMs = 0;
				expect((await slow).status).toBe(200);
				// The holder's request reached vLLM; the leaver's never did.
				const sent = mock.requests.slice(before).map((r) => JSON.stringify(r.body));
				expect(sent.some((b) => b.includes("hello from leaver"))).toBe(false);
				await nothingHeld(gw);
			} finally {
				mock.behavior.firstTokenDelayMs = 0;
				await gw.stop();
			}
		});

		it("refuses at once a request its windows would refuse anyway, rather than queue it", async () => {
			const gw = await startGateway(
				config(store, {
					"max-concurrent-requests": 1,
					"max-queue-wait-ms": 20_000,
					"max-tokens-per-minute": 200,
				}),
			);
			mock.behavior.firstTokenDelayMs = 1200;
			try {
				// Holds the slot and 160 of the user's 200 tokens a minute.
				const slow = fetch(`${gw.url}/v1/chat/completions`, {
					method: "POST",
					headers: { "content-type": "application/json", "x-user-id": "heavy" },
					body: JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: "first" }],
						max_tokens: 150,
					}),
				});
				await slotTaken(gw);
				// The same user's minute window has no room for another such request.
				const res = await fetch(`${gw.url}/v1/chat/completions`, {
					method: "POST",
					headers: { "content-type": "application/json", "x-user-id": "heavy" },
					body: JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: "again" }],
						max_tokens: 150,
					}),
				});
				expect(res.status).toBe(429);
				expect(((await res.json()) as ErrorBody).error.code).toBe("rate_limit_exceeded");
				// Refused without waiting for the slot: the first request still holds it.
				expect((await health(gw)).concurrency.inUse).toBe(1);
				expect((await health(gw)).queue.waiting).toBe(0);
				mock.behavior.firstTokenDelayMs = 0;
				expect((await slow).status).toBe(200);
				await nothingHeld(gw);
			} finally {
				mock.behavior.firstTokenDelayMs = 0;
				await gw.stop();
			}
		});

		it("answers queued requests 503 shutting_down at once when the replica drains", async () => {
			const gw = await startGateway(
				config(store, { "max-concurrent-requests": 1, "max-queue-wait-ms": 20_000 }),
			);
			mock.behavior.firstTokenDelayMs = 600;
			try {
				const slow = chat(gw, "holder");
				await slotTaken(gw);
				const queued = [chat(gw, "q1"), chat(gw, "q2")];
				await until(async () => (await health(gw)).queue.waiting === 2, {
					what: "two requests to queue",
				});
				const draining = gw.gateway.drain(5000);
				for (const res of await Promise.all(queued)) {
					expect(res.status).toBe(503);
					expect(((await res.json()) as ErrorBody).error.code).toBe("shutting_down");
				}
				// The request in flight was still held: the queued ones did not wait for it.
				expect((await health(gw)).concurrency.inUse).toBe(1);
				expect((await slow).status).toBe(200);
				await draining;
				await nothingHeld(gw);
			} finally {
				mock.behavior.firstTokenDelayMs = 0;
				await gw.stop();
			}
		});
	});
}

describe("the slot queue's answers", () => {
	it("says how long a request waited (x-queue-wait-ms) and shows the queue in the model's health", async () => {
		const gw = await startGateway(
			config("memory", { "max-concurrent-requests": 1, "max-queue-wait-ms": 20_000 }),
		);
		mock.behavior.firstTokenDelayMs = 200;
		try {
			const first = chat(gw, "one");
			await slotTaken(gw);
			const second = await chat(gw, "two");
			expect(second.status).toBe(200);
			expect(Number(second.headers.get("x-queue-wait-ms"))).toBeGreaterThanOrEqual(100);
			const h = await health(gw);
			expect(h.queue).toEqual({ waiting: 0, waitingHere: 0, maxQueued: 100, maxWaitMs: 20_000 });
			expect((await first).headers.get("x-queue-wait-ms")).toBeNull();
			await nothingHeld(gw);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await gw.stop();
		}
	});
});

describe("priorities in the slot queue", () => {
	it("serves an API key with priority high before one with low, whatever came first", async () => {
		const yaml = `auth:
  mode: api-key
  api-keys:
    - id: holder
      hash: ${sha("key-holder")}
      user: holder
    - id: batch
      hash: ${sha("key-batch")}
      user: batch
      priority: low
    - id: live
      hash: ${sha("key-live")}
      user: live
      priority: high
${config("memory", { "max-concurrent-requests": 1, "max-queue-wait-ms": 20_000 })}`;
		const gw = await startGateway(yaml);
		mock.behavior.firstTokenDelayMs = 300;
		try {
			const order: string[] = [];
			const call = (key: string) =>
				withKey(gw, key).then(async (res) => {
					expect(res.status).toBe(200);
					await res.arrayBuffer();
					order.push(key);
				});
			const holder = call("key-holder");
			await slotTaken(gw);
			const batch = call("key-batch");
			await until(async () => (await health(gw)).queue.waiting === 1, {
				what: "the low-priority request to queue",
			});
			const live = call("key-live");
			await until(async () => (await health(gw)).queue.waiting === 2, {
				what: "the high-priority request to queue",
			});
			mock.behavior.firstTokenDelayMs = 0;
			await Promise.all([holder, batch, live]);
			expect(order).toEqual(["key-holder", "key-live", "key-batch"]);
			await nothingHeld(gw);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await gw.stop();
		}
	});
});

describe("the slot queue on Redis, when Redis goes away", () => {
	it("keeps waiting requests through a Redis restart, and leaves nothing behind", async () => {
		const own = await startRedis();
		const yaml = oneModelConfig(
			mock.url,
			{ "max-concurrent-requests": 1, "max-queue-wait-ms": 20_000 },
			`store: redis
spring:
  data:
    redis:
      host: 127.0.0.1
      port: ${own.port}
redis:
  failure-policy: local
  timeout-ms: 200
`,
		);
		const gw = await startGateway(yaml);
		mock.behavior.firstTokenDelayMs = 500;
		try {
			const holder = chat(gw, "holder");
			await slotTaken(gw);
			const waiting = [chat(gw, "w1"), chat(gw, "w2")];
			await until(async () => (await health(gw)).queue.waiting === 2, {
				what: "two requests to queue",
			});
			await own.restart();
			mock.behavior.firstTokenDelayMs = 0;
			const statuses = await Promise.all(
				[holder, ...waiting].map(async (r) => {
					const res = await r;
					await res.arrayBuffer();
					return res.status;
				}),
			);
			// Admitted on Redis, or by the local policy while it was away: never refused for it.
			expect(statuses).toEqual([200, 200, 200]);
			await allSettled(gw.gateway);
			expect((await health(gw)).queue.waiting).toBe(0);
			await until(async () => (await own.cli("PING")) === "PONG", { what: "Redis to answer" });
			expect(Number(await own.cli("ZCARD", "trl:{llama2-7b}:slots"))).toBe(0);
			expect((await own.cli("--scan", "--pattern", "trl:{llama2-7b}:r:*")).trim()).toBe("");
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await gw.stop();
			await own.stop();
		}
	});
});

describe("the slot queue and a user's own concurrency", () => {
	it("keeps a user to their own limit while queued, and lets others by", async () => {
		const lines: string[] = [];
		const yaml = `auth:
  mode: api-key
  api-keys:
    - id: solo
      hash: ${sha("key-solo")}
      user: solo
      limits:
        max-concurrent-requests: 1
    - id: other
      hash: ${sha("key-other")}
      user: other
${config("memory", { "max-concurrent-requests": 3, "max-queue-wait-ms": 20_000 })}`;
		const gw = await startGateway(yaml, {
			logger: new Logger("info", (line) => {
				lines.push(line);
			}),
		});
		mock.behavior.firstTokenDelayMs = 1500;
		try {
			const call = (key: string) => withKey(gw, key);
			const solo = [call("key-solo"), call("key-solo"), call("key-solo")];
			await until(async () => (await health(gw)).queue.waiting === 2, {
				what: "two of solo's requests to wait for solo's own slot",
			});
			// Solo's first is at the model server, waiting out its delay.
			await until(() => mock.requests.some((r) => JSON.stringify(r.body).includes("key-solo")), {
				what: "solo's first request to reach the model server",
			});
			// The model has slots free: another user is served while solo's wait.
			mock.behavior.firstTokenDelayMs = 0;
			const other = await call("key-other");
			expect(other.status).toBe(200);
			expect((await health(gw)).queue.waiting).toBe(2);
			for (const res of await Promise.all(solo)) expect(res.status).toBe(200);
			await nothingHeld(gw);
			// Two of solo's three waited for solo's own slot, and their log lines say how long.
			const waited = lines
				.map((l) => JSON.parse(l) as { msg: string; user?: string; queueWaitMs?: number })
				.filter((l) => l.msg === "request" && l.user === "solo");
			expect(waited.length).toBe(3);
			expect(waited.filter((l) => (l.queueWaitMs ?? 0) > 0).length).toBe(2);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await gw.stop();
		}
	});
});

describe("the shared queue when Redis loses it", () => {
	it("puts the waiting requests back, and serves them, when the queue's keys vanish", async () => {
		await redis.cli("FLUSHALL");
		const gw = await startGateway(
			config("redis", { "max-concurrent-requests": 1, "max-queue-wait-ms": 8000 }),
		);
		mock.behavior.firstTokenDelayMs = 800;
		try {
			const holder = chat(gw, "holder");
			await slotTaken(gw);
			const waiting = [chat(gw, "w1"), chat(gw, "w2")];
			await until(async () => (await redis.cli("HLEN", "trl:{llama2-7b}:q:m")) === "2", {
				what: "two requests in the shared queue",
			});
			// Every key of the queue goes (as after a failover to a replica that had not got them).
			const keys = (await redis.cli("--scan", "--pattern", "trl:{llama2-7b}:q*"))
				.split("\n")
				.filter((k) => k !== "");
			expect(keys.length).toBeGreaterThan(0);
			await redis.cli("DEL", ...keys);
			await until(async () => (await redis.cli("HLEN", "trl:{llama2-7b}:q:m")) === "2", {
				what: "the replica to put its two waiting requests back",
			});
			mock.behavior.firstTokenDelayMs = 0;
			for (const res of await Promise.all([holder, ...waiting])) {
				expect(res.status).toBe(200);
				await res.arrayBuffer();
			}
			await nothingHeld(gw);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await gw.stop();
		}
	});
});

describe("the slot queue on a 3-master Redis Cluster", () => {
	it("serves 50 concurrent requests through 5 slots, never more than 5 at vLLM, nothing held after", async () => {
		const cluster = await startRedisCluster();
		const gw = await startGateway(
			oneModelConfig(
				mock.url,
				{ "max-concurrent-requests": 5, "max-queue-wait-ms": 20_000 },
				`store: redis-cluster
spring:
  data:
    redis:
      cluster:
        nodes: ${cluster.nodeList}
`,
			),
		);
		mock.behavior.firstTokenDelayMs = 30;
		mock.resetPeak();
		try {
			const statuses = await Promise.all(
				Array.from({ length: 50 }, async (_, i) => {
					const res = await chat(gw, `user-${i % 6}`);
					await res.arrayBuffer();
					return res.status;
				}),
			);
			expect(statuses.every((s) => s === 200)).toBe(true);
			expect(mock.peakRunning()).toBeLessThanOrEqual(5);
			await nothingHeld(gw);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await gw.stop();
			await cluster.stop();
		}
	});
});

describe("one queue shared by two gateway replicas", () => {
	for (const kind of ["redis", "redis-cluster"] as const) {
		describe(`on ${kind === "redis" ? "one Redis" : "a 3-master Redis Cluster"}`, () => {
			let cluster: Awaited<ReturnType<typeof startRedisCluster>> | undefined;
			let a: GatewayProcess;
			let b: GatewayProcess;
			let storeCli: (...args: string[]) => Promise<string>;

			beforeAll(async () => {
				let extra: string;
				if (kind === "redis") {
					await redis.cli("FLUSHALL");
					storeCli = (...args) => redis.cli(...args);
					extra = storeExtra("redis");
				} else {
					cluster = await startRedisCluster();
					const c = cluster;
					const port = c.nodes[0]?.port ?? 0;
					storeCli = (...args) => c.cli(port, "-c", ...args);
					extra = `store: redis-cluster
spring:
  data:
    redis:
      cluster:
        nodes: ${c.nodeList}
`;
				}
				const yaml = oneModelConfig(
					mock.url,
					{
						"max-tokens-per-minute": 10_000_000,
						"max-concurrent-requests": 2,
						"max-queue-wait-ms": 30_000,
						"max-queued-requests": 200,
					},
					extra,
				);
				[a, b] = await Promise.all([spawnGateway(yaml), spawnGateway(yaml)]);
			});

			afterAll(async () => {
				await Promise.all([a?.stop(), b?.stop()]);
				await cluster?.stop();
			});

			/** Nothing of the queue is left in the store: no entry, no slot. */
			async function storeEmpty(): Promise<void> {
				await until(
					async () =>
						(await storeCli("HLEN", "trl:{llama2-7b}:q:m")) === "0" &&
						(await storeCli("ZCARD", "trl:{llama2-7b}:slots")) === "0",
					{ what: "the shared queue and the slots to be empty" },
				);
			}

			it("serves B's 5 before A's 30th, though A's 100 wait on one replica and B's on the other", async () => {
				mock.behavior.firstTokenDelayMs = 15;
				try {
					const { order, send } = finishOrder();
					const sentA = Array.from({ length: 100 }, (_, i) => send(a, "A", i));
					// Both replicas see the one queue.
					await until(async () => (await health(b)).queue.waiting >= 90, {
						what: "A's requests to queue",
					});
					expect((await health(a)).queue.waitingHere).toBeGreaterThanOrEqual(90);
					const sentB = Array.from({ length: 5 }, (_, i) => send(b, "B", i));
					await Promise.all([...sentA, ...sentB]);
					expectBBeforeThirtiethA(order);
					await storeEmpty();
				} finally {
					mock.behavior.firstTokenDelayMs = 0;
				}
			});

			it("counts one queue on both replicas, and never runs more than the two slots at vLLM", async () => {
				mock.behavior.firstTokenDelayMs = 1200;
				mock.resetPeak();
				try {
					// Two hold the slots; the others wait, on both replicas, in one queue.
					const sent = Array.from({ length: 60 }, (_, i) => chat(i % 2 === 0 ? a : b, `u${i % 9}`));
					await until(async () => (await health(a)).queue.waiting === 58, {
						what: "58 requests to wait",
					});
					const here = [(await health(a)).queue.waitingHere, (await health(b)).queue.waitingHere];
					expect(here[0] ?? 0).toBeGreaterThan(0);
					expect(here[1] ?? 0).toBeGreaterThan(0);
					expect((here[0] ?? 0) + (here[1] ?? 0)).toBe(58);
					mock.behavior.firstTokenDelayMs = 0;
					for (const res of await Promise.all(sent)) {
						expect(res.status).toBe(200);
						await res.arrayBuffer();
					}
					expect(mock.peakRunning()).toBeLessThanOrEqual(2);
					await storeEmpty();
				} finally {
					mock.behavior.firstTokenDelayMs = 0;
				}
			});
		});
	}
});
