import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import OpenAI from "openai";
import { Logger } from "../src/log.ts";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { admitted, allSettled, until } from "./support/wait.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/**
 * End to end over real HTTP: the official `openai` client → gateway → mock vLLM.
 */

interface UsageWindow {
	window: string;
	scope: string;
	limit: number;
	used: number;
	remaining: number;
	resetSeconds: number;
}

async function usageOf(gw: RunningGateway, user: string) {
	const res = await fetch(
		`${gw.url}/api/v1/admin/token-usage/llama2-7b/${encodeURIComponent(user)}`,
	);
	expect(res.status).toBe(200);
	return (await res.json()) as {
		windows: UsageWindow[];
		concurrency: { inUse: number; limit: number | null };
	};
}

function windowOf(windows: UsageWindow[], name: string): UsageWindow {
	const w = windows.find((x) => x.window === name && x.scope === "user");
	if (w === undefined) throw new Error(`no ${name} window`);
	return w;
}

function client(gw: RunningGateway, user: string): OpenAI {
	return new OpenAI({
		baseURL: `${gw.url}/v1`,
		apiKey: "not-checked-yet",
		maxRetries: 0,
		defaultHeaders: { "X-User-ID": user },
	});
}

let mock: MockVllm;
let gw: RunningGateway;

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"] });
	gw = await startGateway(oneModelConfig(mock.url, { "max-concurrent-requests": 500 }));
});

afterAll(async () => {
	await gw.stop();
	await mock.stop();
});

describe("OpenAI SDK through the gateway", () => {
	it("returns a non-streaming chat and settles the day window to vLLM's reported usage", async () => {
		const user = "sdk-plain";
		const res = await client(gw, user).chat.completions.create({
			model: "llama2-7b",
			messages: [{ role: "user", content: "Say hello to the gateway please" }],
			max_tokens: 10,
		});
		expect(res.choices[0]?.message.content).toBe("Hello there, this is a mock model reply.");
		const total = res.usage?.total_tokens ?? -1;
		// The mock's prompt count (words + 4 per message) differs from the tiktoken estimate.
		expect(res.usage?.prompt_tokens).toBe(10);
		expect(total).toBe(10 + 10);
		await allSettled(gw.gateway);
		const day = windowOf((await usageOf(gw, user)).windows, "day");
		expect(day.used).toBe(total);
		expect(day.remaining).toBe(100000 - total);
	});

	it("streams chunks exactly as vLLM sends them, with no usage event unless asked", async () => {
		const user = "sdk-stream";
		const stream = await client(gw, user).chat.completions.create({
			model: "llama2-7b",
			messages: [{ role: "user", content: "stream to me" }],
			max_tokens: 5,
			stream: true,
		});
		let text = "";
		let usageChunks = 0;
		for await (const chunk of stream) {
			text += chunk.choices[0]?.delta.content ?? "";
			if (chunk.usage) usageChunks++;
			expect(chunk.choices.length).toBe(1);
		}
		expect(text).toBe("Hello there, this is");
		expect(usageChunks).toBe(0);
		// Settled from the usage event the gateway asked for on the caller's behalf: 3 words + 4 per message, + 5.
		await allSettled(gw.gateway);
		const day = windowOf((await usageOf(gw, user)).windows, "day");
		expect(day.used).toBe(3 + 4 + 5);
	});

	it("records a stream the SDK read to [DONE] as completed, not as a disconnect", async () => {
		const m = startMockVllm({ models: ["llama2-7b"] });
		const g = await startGateway(oneModelConfig(m.url));
		try {
			for (let i = 0; i < 3; i++) {
				const stream = await client(g, "finisher").chat.completions.create({
					model: "llama2-7b",
					messages: [{ role: "user", content: "hi" }],
					max_tokens: 3,
					stream: true,
				});
				for await (const _ of stream) {
					// read to the end
				}
			}
			await allSettled(g.gateway);
			const metrics = await (await fetch(`${g.url}/metrics`)).text();
			expect(metrics).toContain(
				'model_request_duration_seconds_count{model="llama2-7b",status="2xx",stream="true"} 3',
			);
			expect(metrics).not.toContain('status="4xx",stream="true"');
			expect(m.aborted.count).toBe(0);
		} finally {
			await g.stop();
			await m.stop();
		}
	});

	it("passes the usage event through when the caller asks for it", async () => {
		const stream = await client(gw, "sdk-usage").chat.completions.create({
			model: "llama2-7b",
			messages: [{ role: "user", content: "count me" }],
			max_tokens: 4,
			stream: true,
			stream_options: { include_usage: true },
		});
		let last: OpenAI.Chat.Completions.ChatCompletionChunk | undefined;
		for await (const chunk of stream) last = chunk;
		expect(last?.choices).toEqual([]);
		expect(last?.usage).toEqual({ prompt_tokens: 6, completion_tokens: 4, total_tokens: 10 });
	});

	it("lists the configured models", async () => {
		const list = await client(gw, "lister").models.list();
		expect(list.data.map((m) => m.id)).toEqual(["llama2-7b"]);
	});

	it("reports an unknown model as NotFoundError with code model_not_found", async () => {
		const err = await client(gw, "x")
			.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "hi" }] })
			.catch((e: unknown) => e);
		expect(err).toBeInstanceOf(OpenAI.NotFoundError);
		if (err instanceof OpenAI.APIError) {
			expect(err.status).toBe(404);
			expect(err.code).toBe("model_not_found");
			expect(err.param).toBe("model");
		}
	});

	it("sends the model's default max_tokens and include_usage upstream", async () => {
		await client(gw, "defaults").chat.completions.create({
			model: "llama2-7b",
			messages: [{ role: "user", content: "no max tokens" }],
			stream: true,
			temperature: 0.3,
		});
		const sent = mock.requests.at(-1)?.body;
		expect(sent?.max_tokens).toBe(64);
		expect(sent?.temperature).toBe(0.3);
		expect(sent?.stream_options).toEqual({ include_usage: true, continuous_usage_stats: false });
	});
});

describe("limits seen through the SDK", () => {
	let limited: RunningGateway;
	let slowMock: MockVllm;

	beforeAll(async () => {
		slowMock = startMockVllm({ models: ["llama2-7b"], behavior: { firstTokenDelayMs: 400 } });
		limited = await startGateway(
			oneModelConfig(slowMock.url, {
				"max-tokens-per-minute": 100000,
				"max-tokens-per-hour": 5000,
				"max-tokens-per-day": 100000,
				"max-concurrent-requests": 500,
			}),
		);
	});

	afterAll(async () => {
		await limited.stop();
		await slowMock.stop();
	});

	it("admits exactly what the hour budget allows under 200 concurrent calls by one user", async () => {
		const sdk = client(limited, "burst-user");
		// Estimate per call: 3 priming + 3 framing + 'user' (1) + 'hi' (1) = 8 prompt, + 42 allowance = 50.
		const calls = Array.from({ length: 200 }, () =>
			sdk.chat.completions
				.create({ model: "llama2-7b", messages: [{ role: "user", content: "hi" }], max_tokens: 42 })
				.then(
					() => "ok" as const,
					(e: unknown) => (e instanceof OpenAI.RateLimitError ? ("429" as const) : String(e)),
				),
		);
		const results = await Promise.all(calls);
		expect(results.filter((r) => r === "ok").length).toBe(100);
		expect(results.filter((r) => r === "429").length).toBe(100);
	});

	it("gives RateLimitError with readable Retry-After and x-ratelimit headers", async () => {
		const sdk = client(limited, "headers-user");
		// The first call is still in flight (the mock waits 400 ms) when the second arrives.
		await allSettled(limited.gateway);
		const first = sdk.chat.completions.create({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
			max_tokens: 4000,
		});
		await admitted(limited.gateway, 1);
		const err = await sdk.chat.completions
			.create({ model: "llama2-7b", messages: [{ role: "user", content: "hi" }], max_tokens: 4000 })
			.catch((e: unknown) => e);
		await first;
		expect(err).toBeInstanceOf(OpenAI.RateLimitError);
		if (!(err instanceof OpenAI.APIError)) return;
		expect(err.code).toBe("rate_limit_exceeded");
		expect(err.type).toBe("tokens");
		const retryAfter = Number(err.headers?.get("retry-after"));
		expect(retryAfter).toBeGreaterThan(0);
		expect(err.headers?.get("x-ratelimit-limit-tokens")).toBe("5000");
		expect(Number(err.headers?.get("x-ratelimit-remaining-tokens"))).toBeLessThan(4008);
		expect(err.headers?.get("ratelimit-policy")).toContain('"tph";q=5000;w=3600');
		expect(err.message).toContain("tokens per hour");
	});

	it("refuses a request larger than a window's whole capacity as non-retryable tokens_exceed_limit", async () => {
		const err = await client(limited, "huge-user")
			.chat.completions.create({
				model: "llama2-7b",
				messages: [{ role: "user", content: "hi" }],
				max_tokens: 6000,
			})
			.catch((e: unknown) => e);
		expect(err).toBeInstanceOf(OpenAI.BadRequestError);
		if (!(err instanceof OpenAI.APIError)) return;
		expect(err.code).toBe("tokens_exceed_limit");
		expect(err.message).toContain("capacity 5000");
		expect(err.param).toBe("max_tokens");
		expect(err.headers?.get("retry-after")).toBeNull();
	});

	it("names the prompt, not max_tokens, when the prompt alone is larger than the window", async () => {
		const err = await client(limited, "huge-prompt-user")
			.chat.completions.create({
				model: "llama2-7b",
				messages: [{ role: "user", content: "lorem ipsum dolor sit amet ".repeat(2000) }],
				max_tokens: 5,
			})
			.catch((e: unknown) => e);
		expect(err).toBeInstanceOf(OpenAI.BadRequestError);
		if (!(err instanceof OpenAI.APIError)) return;
		expect(err.code).toBe("tokens_exceed_limit");
		expect(err.param).toBe("messages");
		expect(err.message).toContain("The prompt is too large");
		expect(err.message).toContain("Shorten the prompt");
	});
});

describe("disconnects and failures return what was taken", () => {
	it("aborts upstream on client disconnect mid-stream, frees the slot and charges only what was generated", async () => {
		const m = startMockVllm({
			models: ["llama2-7b"],
			behavior: { tokenDelayMs: 15, outputTokens: 1000 },
		});
		const g = await startGateway(
			oneModelConfig(m.url, { "max-concurrent-requests": 1, "max-tokens-per-minute": 100000 }),
		);
		try {
			const sdk = client(g, "quitter");
			const stream = await sdk.chat.completions.create({
				model: "llama2-7b",
				messages: [{ role: "user", content: "write a long story" }],
				max_tokens: 1000,
				stream: true,
			});
			let received = 0;
			for await (const chunk of stream) {
				if (chunk.choices[0]?.delta.content) received++;
				if (received >= 5) break; // leaving the loop aborts the HTTP request
			}
			await until(() => m.aborted.count > 0, {
				what: "the model server to see its stream aborted",
				timeoutMs: 3000,
			});
			expect(m.aborted.count).toBe(1);
			await allSettled(g.gateway, 3000);
			const usage = await usageOf(g, "quitter");
			expect(usage.concurrency.inUse).toBe(0);
			// Prompt estimate: 3 + 3 + 'user' + 'write a long story' (4) = 11.
			const day = windowOf(usage.windows, "day");
			expect(day.used).toBeGreaterThanOrEqual(11 + received);
			expect(day.used).toBeLessThan(11 + 100);
			// The slot is really free: the next request (limit 1) is admitted.
			m.behavior.outputTokens = 3;
			const next = await sdk.chat.completions.create({
				model: "llama2-7b",
				messages: [{ role: "user", content: "again" }],
				max_tokens: 3,
			});
			expect(next.choices[0]?.message.content).toBe("Hello there,");
		} finally {
			await g.stop();
			await m.stop();
		}
	});

	it("refunds the whole reservation when vLLM fails before any token", async () => {
		const m = startMockVllm({
			models: ["llama2-7b"],
			behavior: { mode: "error", errorStatus: 500 },
		});
		const g = await startGateway(oneModelConfig(m.url));
		try {
			const err = await client(g, "unlucky")
				.chat.completions.create({
					model: "llama2-7b",
					messages: [{ role: "user", content: "hi" }],
					max_tokens: 50,
				})
				.catch((e: unknown) => e);
			expect(err).toBeInstanceOf(OpenAI.APIError);
			if (err instanceof OpenAI.APIError) expect(err.status).toBe(502);
			const usage = await usageOf(g, "unlucky");
			expect(windowOf(usage.windows, "day").used).toBe(0);
			expect(usage.concurrency.inUse).toBe(0);
		} finally {
			await g.stop();
			await m.stop();
		}
	});

	it("refunds and answers 503 when the model server is unreachable", async () => {
		const closed = Bun.serve({ port: 0, fetch: () => new Response("") });
		const deadUrl = `http://127.0.0.1:${closed.port}`;
		await closed.stop(true);
		const lines: string[] = [];
		const g = await startGateway(oneModelConfig(deadUrl), {
			logger: new Logger("info", (l) => lines.push(l)),
		});
		try {
			const res = await fetch(`${g.url}/v1/chat/completions`, {
				method: "POST",
				headers: { "content-type": "application/json", "x-user-id": "nobody-home" },
				body: JSON.stringify({ model: "llama2-7b", messages: [{ role: "user", content: "hi" }] }),
			});
			expect(res.status).toBe(503);
			const body = (await res.json()) as { error: { code: string } };
			expect(body.error.code).toBe("upstream_unavailable");
			expect(windowOf((await usageOf(g, "nobody-home")).windows, "day").used).toBe(0);
			// One request line, a warning naming the code.
			const requests = lines
				.map((l) => JSON.parse(l) as Record<string, unknown>)
				.filter((l) => l.msg === "request");
			expect(requests).toHaveLength(1);
			expect(requests[0]).toMatchObject({
				level: "warn",
				status: 503,
				code: "upstream_unavailable",
				tokensActual: 0,
			});
		} finally {
			await g.stop();
		}
	});

	it("counts the streamed text when vLLM sends no usage, and says so in a metric", async () => {
		const m = startMockVllm({
			models: ["llama2-7b"],
			behavior: { mode: "no-usage", outputTokens: 6 },
		});
		const g = await startGateway(oneModelConfig(m.url));
		try {
			const stream = await client(g, "no-usage").chat.completions.create({
				model: "llama2-7b",
				messages: [{ role: "user", content: "hi" }],
				max_tokens: 50,
				stream: true,
			});
			for await (const _ of stream) {
				// drain
			}
			await allSettled(g.gateway);
			// Prompt estimate 8 + "Hello there, this is a" = 6 cl100k tokens.
			expect(windowOf((await usageOf(g, "no-usage")).windows, "day").used).toBe(8 + 6);
			const metrics = await (await fetch(`${g.url}/metrics`)).text();
			expect(metrics).toContain('token_usage_fallback_total{model="llama2-7b",reason="missing"} 1');
		} finally {
			await g.stop();
			await m.stop();
		}
	});
});

describe("text completions and vLLM extensions", () => {
	it("serves /v1/completions through the SDK, streaming and not, settling to vLLM's usage", async () => {
		const sdk = client(gw, "text-user");
		const plain = await sdk.completions.create({
			model: "llama2-7b",
			prompt: "Once upon a time",
			max_tokens: 3,
		});
		expect(plain.choices[0]?.text).toBe("Hello there,");
		expect(plain.usage?.total_tokens).toBe(4 + 3);
		const stream = await sdk.completions.create({
			model: "llama2-7b",
			prompt: "Once upon a time",
			max_tokens: 2,
			stream: true,
		});
		let text = "";
		for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
		expect(text).toBe("Hello there");
		await allSettled(gw.gateway);
		const day = windowOf((await usageOf(gw, "text-user")).windows, "day");
		expect(day.used).toBe(4 + 3 + (4 + 2));
	});

	it("relays vLLM's continuous_usage_stats unchanged when the caller asks for them", async () => {
		const res = await fetch(`${gw.url}/v1/chat/completions`, {
			method: "POST",
			headers: { "content-type": "application/json", "x-user-id": "continuous" },
			body: JSON.stringify({
				model: "llama2-7b",
				messages: [{ role: "user", content: "hi" }],
				max_tokens: 3,
				stream: true,
				stream_options: { include_usage: true, continuous_usage_stats: true },
			}),
		});
		const events = (await res.text()).split("\n\n").filter((e) => e.startsWith("data: {"));
		const parsed = events.map(
			(e) => JSON.parse(e.slice(6)) as { usage?: { completion_tokens: number } },
		);
		expect(parsed.every((p) => p.usage !== undefined)).toBe(true);
		expect(parsed.at(-1)?.usage?.completion_tokens).toBe(3);
	});
});

describe("model-wide windows", () => {
	it("charges every user of a model to the shared window in the same reservation", async () => {
		const m = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 600 } });
		const g = await startGateway(
			oneModelConfig(m.url, { "max-tokens-per-minute": 100000 }, "").replace(
				"        max-concurrent-requests: 50",
				"        max-concurrent-requests: 50\n        model-wide:\n          max-tokens-per-minute: 1000",
			),
		);
		try {
			const ask = (user: string) =>
				client(g, user)
					.chat.completions.create({
						model: "llama2-7b",
						messages: [{ role: "user", content: "x" }],
						max_tokens: 600,
					})
					.catch((e: unknown) => e);
			const first = await ask("alice");
			expect(first).not.toBeInstanceOf(Error);
			const second = await ask("bob");
			expect(second).toBeInstanceOf(OpenAI.RateLimitError);
			if (second instanceof OpenAI.APIError) {
				expect(second.message).toContain("all users of the model");
				expect(second.headers?.get("ratelimit-policy")).toContain('"model-tpm";q=1000;w=60');
			}
			// Bob's own windows were not charged by the refused request.
			const bob = await fetch(`${g.url}/api/v1/admin/token-usage/llama2-7b/bob`);
			const body = (await bob.json()) as { windows: UsageWindow[] };
			expect(windowOf(body.windows, "minute").used).toBe(0);
			const shared = body.windows.find((w) => w.scope === "model");
			expect(shared?.used).toBe(5 + 600);
		} finally {
			await g.stop();
			await m.stop();
		}
	});
});

describe("a model served under another name (upstream-model)", () => {
	const SERVED = "meta-llama/Llama-2-7b-chat-hf";
	const config = (url: string) =>
		oneModelConfig(`\n      urls: [${url}]\n      upstream-model: ${SERVED}`);

	it("answers with the served model's name when vLLM serves it, as OpenAI names the snapshot that served", async () => {
		const served = startMockVllm({ models: [SERVED] });
		const g = await startGateway(config(served.url));
		try {
			const res = await new OpenAI({
				baseURL: `${g.url}/v1`,
				apiKey: "unused",
				maxRetries: 0,
			}).chat.completions.create({
				model: "llama2-7b",
				messages: [{ role: "user", content: "hi" }],
				max_tokens: 3,
			});
			expect(res.model).toBe(SERVED);
			expect(served.requests.at(-1)?.body.model).toBe(SERVED);
		} finally {
			await g.stop();
			await served.stop();
		}
	});

	it("relays a 404 that is not about the model (a wrong path) as it came", async () => {
		const wrongPath = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: () => Response.json({ detail: "Not Found" }, { status: 404 }),
		});
		const g = await startGateway(config(`http://127.0.0.1:${wrongPath.port}`));
		try {
			const res = await fetch(`${g.url}/v1/chat/completions`, {
				method: "POST",
				headers: { "content-type": "application/json" },
				body: JSON.stringify({
					model: "llama2-7b",
					messages: [{ role: "user", content: "hi" }],
					max_tokens: 3,
				}),
			});
			expect(res.status).toBe(404);
			const body = (await res.json()) as { error: { code: string | null; message: string } };
			expect(body.error.code).not.toBe("model_not_found");
			expect(body.error.message).toContain("Not Found");
		} finally {
			await g.stop();
			await wrongPath.stop(true);
		}
	});

	it("is a 404 model_not_found naming the client's model and what vLLM was asked for when vLLM does not serve it", async () => {
		const lines: string[] = [];
		const wrong = startMockVllm({ models: ["something-else"] });
		const g = await startGateway(config(wrong.url), {
			logger: new Logger("info", (line) => {
				lines.push(line);
			}),
		});
		try {
			const err = await new OpenAI({
				baseURL: `${g.url}/v1`,
				apiKey: "unused",
				maxRetries: 0,
			}).chat.completions
				.create({
					model: "llama2-7b",
					messages: [{ role: "user", content: "hi" }],
					max_tokens: 3,
				})
				.catch((e: unknown) => e);
			expect(err).toBeInstanceOf(OpenAI.NotFoundError);
			if (!(err instanceof OpenAI.APIError)) return;
			expect(err.code).toBe("model_not_found");
			expect(err.param).toBe("model");
			expect(err.message).toContain("The model server for llama2-7b does not serve");
			expect(err.message).toContain(SERVED);
			await allSettled(g.gateway);
			const line = lines
				.map((l) => JSON.parse(l) as { msg: string; status?: number; upstreamModel?: string })
				.find((l) => l.msg === "request" && l.status === 404);
			expect(line?.upstreamModel).toBe(SERVED);
		} finally {
			await g.stop();
			await wrong.stop();
		}
	});
});
