import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { oneModelConfig } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { type GatewayProcess, spawnGateway } from "./support/process.ts";
import { type RedisServer, startRedis } from "./support/redis.ts";
import { until } from "./support/wait.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/**
 * SIGTERM: readiness goes false at once, new requests are refused, in-flight
 * streams finish within the drain time or are cut and settled; nothing is left
 * behind in the shared store.
 */

let redis: RedisServer;
let mock: MockVllm;

beforeAll(async () => {
	redis = await startRedis();
	mock = startMockVllm({
		models: ["llama2-7b"],
		record: false,
		behavior: { tokenDelayMs: 40, outputTokens: 25 },
	});
});

afterAll(async () => {
	await mock.stop();
	await redis.stop();
});

function config(drainMs: number): string {
	return oneModelConfig(
		mock.url,
		{ "max-concurrent-requests": 5, "max-tokens-per-minute": 100_000 },
		`store: redis
spring:
  data:
    redis:
      host: 127.0.0.1
      port: ${redis.port}
redis:
  timeout-ms: 1000
`,
	).replace("server:\n", `server:\n  drain-ms: ${drainMs}\n`);
}

function stream(gw: GatewayProcess, user: string, maxTokens: number) {
	return fetch(`${gw.url}/v1/chat/completions`, {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": user },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "tell me something" }],
			max_tokens: maxTokens,
			stream: true,
		}),
	});
}

/** A response body read as it arrives: `text()` is what came so far, `done` the whole of it. */
function reading(res: Response): { text(): string; done: Promise<string> } {
	const stream = res.body;
	if (stream === null) throw new Error("the response has no body");
	const reader = stream.getReader();
	const decoder = new TextDecoder();
	let text = "";
	const done = (async () => {
		for (;;) {
			const { done, value } = await reader.read();
			if (done) return text + decoder.decode();
			text += decoder.decode(value, { stream: true });
		}
	})();
	return { text: () => text, done };
}

/** Generated tokens in relayed SSE text (the mock streams one word per token). */
function tokensIn(text: string): number {
	return (text.match(/"delta":\{"content":"[^"]+"\}/g) ?? []).length;
}

async function storeState(user: string) {
	const keys = await redis.cli("--scan", "--pattern", "trl:{llama2-7b}:*");
	const slots = Number(await redis.cli("ZCARD", "trl:{llama2-7b}:slots"));
	const dayTat = Number((await redis.cli("HGET", `trl:{llama2-7b}:u:${user}`, "day")) || 0);
	return { reservations: keys.split("\n").filter((k) => k.includes(":r:")), slots, dayTat };
}

describe("graceful shutdown on SIGTERM", () => {
	it("stops being ready at once, refuses new requests, and lets a stream finish within the drain time", async () => {
		const gw = await spawnGateway(config(5000));
		const res = await stream(gw, "finisher", 25);
		expect(res.status).toBe(200);
		const body = reading(res);
		await until(() => tokensIn(body.text()) >= 1, { what: "the stream's first token" });
		gw.proc.kill("SIGTERM");
		await until(async () => (await fetch(`${gw.url}/health/ready`)).status === 503, {
			what: "readiness to turn false after SIGTERM",
			timeoutMs: 2000,
		});
		const refused = await stream(gw, "late", 5);
		expect(refused.status).toBe(503);
		expect(((await refused.json()) as { error: { code: string } }).error.code).toBe(
			"shutting_down",
		);
		expect((await body.done).endsWith("data: [DONE]\n\n")).toBe(true);
		expect(await gw.proc.exited).toBe(0);
		const state = await storeState("finisher");
		expect(state.reservations).toEqual([]);
		expect(state.slots).toBe(0);
	});

	it("cuts a stream that outlives the drain time, charges what was generated, and frees its slot", async () => {
		mock.behavior.outputTokens = 200; // 8 s at 40 ms a token
		try {
			const gw = await spawnGateway(config(300));
			const res = await stream(gw, "cut-short", 200);
			expect(res.status).toBe(200);
			const body = reading(res);
			// Some tokens were generated before the cut: they are what must be charged.
			await until(() => tokensIn(body.text()) >= 3, { what: "the stream's first tokens" });
			gw.proc.kill("SIGTERM");
			const text = await body.done;
			expect(text).not.toContain("[DONE]");
			// The stream ends with an error event that says why: retry elsewhere.
			expect(text).toContain("shutting down");
			expect(await gw.proc.exited).toBe(0);
			const state = await storeState("cut-short");
			expect(state.reservations).toEqual([]);
			expect(state.slots).toBe(0);
			// Charged: the prompt and the tokens streamed (well under the 200 + prompt reserved).
			// 100,000 per day: each token moves the day TAT by 0.864 s.
			const chargedTokens = Math.round((state.dayTat - Date.now() * 1000) / 864_000);
			expect(chargedTokens).toBeGreaterThan(5);
			expect(chargedTokens).toBeLessThan(100);
		} finally {
			mock.behavior.outputTokens = 25;
		}
	});
});
