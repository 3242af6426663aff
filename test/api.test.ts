import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import {
	type HandledGateway,
	handleGateway,
	oneModelConfig,
	send,
	startGateway,
} from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { admitted, allSettled } from "./support/wait.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/**
 * The routes' answers, asked of the app in-process (`handleGateway`): no socket
 * on the gateway's side unless a test is about the server itself. The mock vLLM
 * and the fake upstreams still listen on their own ports.
 */

interface ErrorBody {
	error: { message: string; type: string; param: string | null; code: string | null };
}

let mock: MockVllm;
let gw: HandledGateway;

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"] });
	gw = await handleGateway(oneModelConfig(mock.url));
});

afterAll(async () => {
	await gw.stop();
	await mock.stop();
});

function post(path: string, body: string | Uint8Array, headers: Record<string, string> = {}) {
	return send(gw, path, {
		method: "POST",
		headers: { "content-type": "application/json", ...headers },
		body,
	});
}

async function expectError(res: Response, status: number, code: string | null, param?: string) {
	expect(res.status).toBe(status);
	expect(res.headers.get("content-type")).toContain("application/json");
	const body = (await res.json()) as ErrorBody;
	expect(typeof body.error.message).toBe("string");
	expect(body.error.message.length).toBeGreaterThan(0);
	expect(typeof body.error.type).toBe("string");
	expect(body.error.code).toBe(code);
	if (param !== undefined) expect(body.error.param).toBe(param);
	return body;
}

async function stillServes() {
	const res = await post(
		"/v1/chat/completions",
		JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "still there?" }],
			max_tokens: 2,
		}),
	);
	expect(res.status).toBe(200);
}

describe("bad input gets an OpenAI-shaped 4xx and the gateway keeps serving", () => {
	const chat = "/v1/chat/completions";
	const cases: [string, string, number, string | null, string | undefined][] = [
		["malformed JSON", '{"model": "llama2-7b", "messages": [', 400, "invalid_json", undefined],
		["an empty body", "", 400, "invalid_json", undefined],
		["a JSON array", "[1,2]", 400, "invalid_body", undefined],
		["a JSON null", "null", 400, "invalid_body", undefined],
		[
			"messages of the wrong type",
			JSON.stringify({ model: "llama2-7b", messages: "hi" }),
			400,
			"invalid_value",
			"messages",
		],
		[
			"missing messages",
			JSON.stringify({ model: "llama2-7b" }),
			400,
			"missing_required_parameter",
			"messages",
		],
		[
			"missing model",
			JSON.stringify({ messages: [{ role: "user", content: "x" }] }),
			400,
			"missing_required_parameter",
			"model",
		],
		[
			"a negative max_tokens",
			JSON.stringify({
				model: "llama2-7b",
				messages: [{ role: "user", content: "x" }],
				max_tokens: -5,
			}),
			400,
			"invalid_value",
			"max_tokens",
		],
		[
			"a string max_tokens",
			JSON.stringify({
				model: "llama2-7b",
				messages: [{ role: "user", content: "x" }],
				max_tokens: "ten",
			}),
			400,
			"invalid_value",
			"max_tokens",
		],
		[
			"a message without role",
			JSON.stringify({ model: "llama2-7b", messages: [{ content: "x" }] }),
			400,
			"missing_required_parameter",
			"messages[0].role",
		],
		[
			"a role OpenAI does not know",
			JSON.stringify({ model: "llama2-7b", messages: [{ role: "human", content: "x" }] }),
			400,
			"invalid_value",
			"messages[0].role",
		],
		[
			"an empty messages array",
			JSON.stringify({ model: "llama2-7b", messages: [] }),
			400,
			"invalid_value",
			"messages",
		],
		[
			"an unknown model",
			JSON.stringify({ model: "gpt-5", messages: [{ role: "user", content: "x" }] }),
			404,
			"model_not_found",
			"model",
		],
	];
	for (const [name, body, status, code, param] of cases) {
		it(`answers ${status} ${code ?? ""} for ${name}`, async () => {
			await expectError(await post(chat, body), status, code, param);
			await stillServes();
		});
	}

	it("answers 413 for a body over server.max-body-bytes", async () => {
		const huge = JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "x".repeat(70_000) }],
		});
		await expectError(await post(chat, huge), 413, "request_too_large");
		await stillServes();
	});

	it("answers 413 in OpenAI's shape for a body far over the limit (5 MB)", async () => {
		const huge = JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "x".repeat(5_000_000) }],
		});
		await expectError(await post(chat, huge), 413, "request_too_large");
		await stillServes();
	});

	it("answers 405 with Allow: POST for GET on a completion path", async () => {
		const res = await send(gw, chat);
		await expectError(res, 405, "method_not_allowed");
		expect(res.headers.get("allow")).toBe("POST");
	});

	it("answers 413 for an oversized chunked body without Content-Length", async () => {
		const chunk = new TextEncoder().encode("x".repeat(16_384));
		let sent = 0;
		const stream = new ReadableStream<Uint8Array>({
			pull(controller) {
				if (sent >= 8) controller.close();
				else {
					sent++;
					controller.enqueue(chunk);
				}
			},
		});
		const res = await send(gw, chat, {
			method: "POST",
			headers: { "content-type": "application/json" },
			body: stream,
		});
		await expectError(res, 413, "request_too_large");
		await stillServes();
	});

	it("answers 400 for invalid prompt types on /v1/completions", async () => {
		await expectError(
			await post("/v1/completions", JSON.stringify({ model: "llama2-7b", prompt: { a: 1 } })),
			400,
			"invalid_value",
			"prompt",
		);
	});

	it("answers 404 in OpenAI's shape for unknown paths", async () => {
		const res = await send(gw, "/v1/nothing-here");
		await expectError(res, 404, "not_found");
	});

	it("leaves no slot or reservation behind after rejected requests", async () => {
		const res = await send(gw, "/api/v1/admin/token-usage/llama2-7b/anonymous");
		const usage = (await res.json()) as { concurrency: { inUse: number } };
		expect(usage.concurrency.inUse).toBe(0);
	});

	it("counts a prompt containing <|endoftext|> instead of rejecting it", async () => {
		const res = await post(
			chat,
			JSON.stringify({
				model: "llama2-7b",
				messages: [{ role: "user", content: "a <|endoftext|> b" }],
				max_tokens: 2,
			}),
		);
		expect(res.status).toBe(200);
	});
});

describe("seed paths and operations endpoints", () => {
	it("serves the seed's per-model chat path with X-User-ID", async () => {
		const res = await post(
			"/api/v1/models/llama2-7b/chat/completions",
			JSON.stringify({
				messages: [{ role: "user", content: "안녕하세요!" }],
				max_tokens: 3,
				temperature: 0.7,
			}),
			{ "X-User-ID": "user123" },
		);
		expect(res.status).toBe(200);
		const body = (await res.json()) as { usage: { total_tokens: number } };
		expect(body.usage.total_tokens).toBe(5 + 3);
		const usage = (await (
			await send(gw, "/api/v1/admin/token-usage/llama2-7b/user123")
		).json()) as {
			model: string;
			user: string;
			windows: {
				window: string;
				limit: number;
				used: number;
				remaining: number;
				resetSeconds: number;
			}[];
		};
		expect(usage.model).toBe("llama2-7b");
		expect(usage.user).toBe("user123");
		expect(usage.windows.map((w) => w.window)).toEqual(["minute", "day"]);
		const day = usage.windows[1];
		expect(day?.limit).toBe(100000);
		expect(day?.used).toBe(8);
		expect(day?.remaining).toBe(100000 - 8);
		expect(day?.resetSeconds).toBeGreaterThan(0);
	});

	it("answers 404 model_not_found on the seed path for an unknown model", async () => {
		await expectError(
			await post(
				"/api/v1/models/nope/chat/completions",
				JSON.stringify({ messages: [{ role: "user", content: "x" }] }),
			),
			404,
			"model_not_found",
		);
	});

	it("puts rate-limit headers on admitted streaming responses", async () => {
		const res = await post(
			"/v1/chat/completions",
			JSON.stringify({
				model: "llama2-7b",
				messages: [{ role: "user", content: "hi" }],
				max_tokens: 3,
				stream: true,
			}),
			{ "X-User-ID": "stream-headers" },
		);
		expect(res.status).toBe(200);
		expect(res.headers.get("content-type")).toContain("text/event-stream");
		expect(res.headers.get("x-ratelimit-limit-tokens")).toBe("10000");
		expect(res.headers.get("x-ratelimit-remaining-tokens")).toBe(String(10000 - (8 + 3)));
		expect(res.headers.get("ratelimit-policy")).toBe('"tpm";q=10000;w=60, "tpd";q=100000;w=86400');
		expect(res.headers.get("ratelimit")).toMatch(/^"tpm";r=9989;t=\d+, "tpd";r=99989;t=\d+$/);
		const text = await res.text();
		expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
	});

	it("passes the caller's x-request-id upstream and back", async () => {
		const res = await post(
			"/v1/chat/completions",
			JSON.stringify({
				model: "llama2-7b",
				messages: [{ role: "user", content: "hi" }],
				max_tokens: 1,
			}),
			{ "x-request-id": "req-abc-123" },
		);
		expect(res.headers.get("x-request-id")).toBe("req-abc-123");
		expect(mock.requests.at(-1)?.headers["x-request-id"]).toBe("req-abc-123");
	});

	it("puts x-request-id on every response: errors, refusals and operations endpoints", async () => {
		const bad = await post("/v1/chat/completions", "{", { "x-request-id": "bad-json-1" });
		expect(bad.headers.get("x-request-id")).toBe("bad-json-1");
		const unknown = await post(
			"/v1/chat/completions",
			JSON.stringify({ model: "nope", messages: [{ role: "user", content: "x" }] }),
		);
		expect(unknown.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
		for (const path of [
			"/v1/models",
			"/health/ready",
			"/api/v1/admin/token-usage/llama2-7b/u",
			"/nowhere",
		]) {
			const res = await send(gw, path, {
				headers: { "x-request-id": `get-${path.length}` },
			});
			expect(res.headers.get("x-request-id")).toBe(`get-${path.length}`);
		}
	});

	it("lists models with their limits at /api/v1/models", async () => {
		const body = (await (await send(gw, "/api/v1/models")).json()) as {
			models: { id: string; limits: Record<string, number> }[];
		};
		expect(body.models).toHaveLength(1);
		expect(body.models[0]?.limits).toEqual({
			"max-tokens-per-minute": 10000,
			"max-tokens-per-day": 100000,
			"max-concurrent-requests": 50,
		});
	});

	it("reports model health from the replicas' /health, and 503 when none answers", async () => {
		const res = await send(gw, "/api/v1/models/llama2-7b/health");
		expect(res.status).toBe(200);
		const body = (await res.json()) as {
			status: string;
			replicas: { healthy: boolean }[];
			concurrency: { limit: number };
		};
		expect(body.status).toBe("UP");
		expect(body.replicas[0]?.healthy).toBe(true);
		expect(body.concurrency.limit).toBe(50);

		const g = await handleGateway(oneModelConfig("http://127.0.0.1:9"));
		try {
			const down = await send(g, "/api/v1/models/llama2-7b/health");
			expect(down.status).toBe(503);
			expect(((await down.json()) as { status: string }).status).toBe("DOWN");
		} finally {
			await g.stop();
		}
	});

	it("serves liveness, readiness and the seed's actuator endpoints", async () => {
		for (const path of ["/health/live", "/health/ready", "/actuator/health"]) {
			const res = await send(gw, path);
			expect(res.status).toBe(200);
			expect(((await res.json()) as { status: string }).status).toBe("UP");
		}
		const info = (await (await send(gw, "/actuator/info")).json()) as {
			app: { name: string };
		};
		expect(info.app.name).toBe("token-rate-limiter");
	});

	it("exposes the seed's metric names at /metrics and /actuator/prometheus", async () => {
		for (const path of ["/metrics", "/actuator/prometheus"]) {
			const res = await send(gw, path);
			expect(res.status).toBe(200);
			const text = await res.text();
			for (const name of [
				"token_usage_total",
				"token_rate_limit_exceeded_total",
				"model_request_duration_seconds",
				"token_concurrent_requests",
			]) {
				expect(text).toContain(`# TYPE ${name}`);
			}
			expect(text).toContain('token_usage_total{model="llama2-7b",type="prompt"}');
		}
	});

	it("documents every route in the OpenAPI document behind Swagger UI", async () => {
		const ui = await send(gw, "/swagger");
		expect(ui.status).toBe(200);
		expect(await ui.text()).toContain("swagger-ui");
		const spec = (await (await send(gw, "/swagger/json")).json()) as {
			paths: Record<
				string,
				Record<string, { requestBody?: unknown; responses?: Record<string, unknown> }>
			>;
		};
		for (const [path, method] of [
			["/v1/chat/completions", "post"],
			["/v1/completions", "post"],
			["/api/v1/models/{model}/chat/completions", "post"],
			["/v1/models", "get"],
			["/api/v1/models", "get"],
			["/api/v1/models/{model}/health", "get"],
			["/api/v1/admin/token-usage/{model}/{user}", "get"],
			["/health/live", "get"],
			["/health/ready", "get"],
			["/actuator/health", "get"],
			["/actuator/info", "get"],
			["/actuator/prometheus", "get"],
			["/metrics", "get"],
		] as const) {
			expect(spec.paths[path]?.[method]).toBeDefined();
		}
		const chat = spec.paths["/v1/chat/completions"]?.post;
		expect(JSON.stringify(chat?.requestBody)).toContain("messages");
		expect(Object.keys(chat?.responses ?? {})).toEqual(
			expect.arrayContaining(["200", "400", "404", "413", "429"]),
		);
	});
});

describe("concurrency slots and Retry-After", () => {
	it("refuses with 429 concurrency_limit_exceeded when every slot is taken, and frees them afterwards", async () => {
		const m = startMockVllm({ models: ["llama2-7b"], behavior: { firstTokenDelayMs: 300 } });
		// No queue: a request that finds every slot taken is refused at once.
		const g = await handleGateway(
			oneModelConfig(m.url, { "max-concurrent-requests": 2, "max-queue-wait-ms": 0 }),
		);
		try {
			const call = () =>
				send(g, "/v1/chat/completions", {
					method: "POST",
					headers: { "content-type": "application/json" },
					body: JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: "x" }],
						max_tokens: 2,
					}),
				});
			const slow = [call(), call()];
			await admitted(g.gateway, 2);
			const third = await call();
			const body = await expectError(third, 429, "concurrency_limit_exceeded");
			expect(body.error.type).toBe("requests");
			expect(third.headers.get("retry-after")).toBe("1");
			for (const r of await Promise.all(slow)) expect(r.status).toBe(200);
			await allSettled(g.gateway);
			expect((await call()).status).toBe(200);
		} finally {
			await g.stop();
			await m.stop();
		}
	});

	it("admits a retry made Retry-After seconds later and not a second sooner", async () => {
		let nowUs = 1_800_000_000_000_000;
		const m = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 600 } });
		const g = await handleGateway(
			oneModelConfig(m.url, { "max-tokens-per-minute": 1000, "max-tokens-per-day": 100000 }),
			{
				clock: () => nowUs,
			},
		);
		try {
			const call = () =>
				send(g, "/v1/chat/completions", {
					method: "POST",
					headers: { "content-type": "application/json", "x-user-id": "patient" },
					body: JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: "x" }],
						max_tokens: 600,
					}),
				});
			// Settles to 5 (mock prompt) + 600 = 605 tokens of the minute's 1000.
			expect((await call()).status).toBe(200);
			await allSettled(g.gateway);
			const refused = await call();
			expect(refused.status).toBe(429);
			// 605 + 608 (estimate) exceed 1000 by 213 tokens = 12.78 s of a 1000-per-minute window.
			expect(refused.headers.get("retry-after")).toBe("13");
			expect(refused.headers.get("retry-after-ms")).toBe("12780");
			nowUs += 12_000_000;
			expect((await call()).status).toBe(429);
			nowUs += 1_000_000;
			expect((await call()).status).toBe(200);
		} finally {
			await g.stop();
			await m.stop();
		}
	});

	it("answers 504 when vLLM does not answer within timeout-ms, refunding and freeing the slot", async () => {
		const m = startMockVllm({ models: ["llama2-7b"], behavior: { mode: "hang" } });
		const yaml = oneModelConfig(m.url, { "max-concurrent-requests": 1 }).replace(
			`llama2-7b: ${m.url}`,
			`llama2-7b:\n      urls: ${m.url}\n      timeout-ms: 200`,
		);
		const g = await handleGateway(yaml);
		try {
			const call = () =>
				send(g, "/v1/chat/completions", {
					method: "POST",
					headers: { "content-type": "application/json", "x-user-id": "waiter" },
					body: JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: "x" }],
						max_tokens: 5,
					}),
				});
			await expectError(await call(), 504, "upstream_timeout");
			const usage = (await (
				await send(g, "/api/v1/admin/token-usage/llama2-7b/waiter")
			).json()) as {
				windows: { used: number }[];
				concurrency: { inUse: number };
			};
			expect(usage.concurrency.inUse).toBe(0);
			expect(usage.windows.every((w) => w.used === 0)).toBe(true);
			m.behavior.mode = "ok";
			expect((await call()).status).toBe(200);
		} finally {
			await g.stop();
			await m.stop();
		}
	});

	it("ends the stream with an error event when vLLM drops the connection, charging what was generated", async () => {
		const m = startMockVllm({
			models: ["llama2-7b"],
			behavior: { mode: "cut", failAfterTokens: 4, outputTokens: 50, tokenDelayMs: 5 },
		});
		const g = await handleGateway(oneModelConfig(m.url, { "max-concurrent-requests": 1 }));
		try {
			const res = await send(g, "/v1/chat/completions", {
				method: "POST",
				headers: { "content-type": "application/json", "x-user-id": "dropped" },
				body: JSON.stringify({
					model: "llama2-7b",
					messages: [{ role: "user", content: "x" }],
					max_tokens: 50,
					stream: true,
				}),
			});
			expect(res.status).toBe(200);
			const text = await res.text();
			expect(text).toContain('"code":"upstream_stream_failed"');
			expect(text).not.toContain("[DONE]");
			await allSettled(g.gateway);
			const usage = (await (
				await send(g, "/api/v1/admin/token-usage/llama2-7b/dropped")
			).json()) as {
				windows: { window: string; used: number }[];
				concurrency: { inUse: number };
			};
			expect(usage.concurrency.inUse).toBe(0);
			// Prompt estimate 8 + the one-token words the client saw, not the 58 reserved.
			const words = (text.match(/"delta":\{"content":"[^"]+"\}/g) ?? []).length;
			expect(words).toBeGreaterThan(0);
			expect(usage.windows.find((w) => w.window === "day")?.used).toBe(8 + words);
		} finally {
			await g.stop();
			await m.stop();
		}
	});
});

describe("upstream errors in OpenAI's terms", () => {
	it("keeps vLLM's 4xx as the caller's error with OpenAI's type, and names a context-length overflow", async () => {
		const fake = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: () =>
				Response.json(
					{
						object: "error",
						message:
							"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.",
						type: "BadRequestError",
						param: null,
						code: 400,
					},
					{ status: 400 },
				),
		});
		const g = await handleGateway(oneModelConfig(`http://127.0.0.1:${fake.port}`));
		try {
			const res = await send(g, "/v1/chat/completions", {
				method: "POST",
				headers: { "content-type": "application/json", "x-user-id": "ctx" },
				body: JSON.stringify({
					model: "llama2-7b",
					messages: [{ role: "user", content: "x" }],
					max_tokens: 5,
				}),
			});
			const body = await expectError(res, 400, "context_length_exceeded", "messages");
			expect(body.error.type).toBe("invalid_request_error");
			expect(body.error.message).toContain("maximum context length");
			// Refunded, so the admission's rate-limit headers would be stale: none are sent.
			expect(res.headers.get("x-ratelimit-remaining-tokens")).toBeNull();
		} finally {
			await g.stop();
			await fake.stop(true);
		}
	});

	it("passes an overloaded vLLM's 503 on as retryable 503, other 5xx as 502", async () => {
		let status = 503;
		const fake = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: () =>
				Response.json(
					{
						error: { message: "busy", type: "ServiceUnavailableError", param: null, code: status },
					},
					{ status, headers: { "retry-after": "3" } },
				),
		});
		const g = await handleGateway(oneModelConfig(`http://127.0.0.1:${fake.port}`));
		try {
			const call = () =>
				send(g, "/v1/chat/completions", {
					method: "POST",
					headers: { "content-type": "application/json" },
					body: JSON.stringify({ model: "llama2-7b", messages: [{ role: "user", content: "x" }] }),
				});
			const overloaded = await call();
			await expectError(overloaded, 503, "upstream_overloaded");
			expect(overloaded.headers.get("retry-after")).toBe("3");
			status = 500;
			await expectError(await call(), 502, "upstream_error");
		} finally {
			await g.stop();
			await fake.stop(true);
		}
	});
});

describe("text completions with several prompts", () => {
	it("reserves the completion allowance once per prompt", async () => {
		const res = await post(
			"/v1/completions",
			JSON.stringify({ model: "llama2-7b", prompt: ["a", "b", "c", "d"], max_tokens: 100 }),
			{ "x-user-id": "batcher" },
		);
		expect(res.status).toBe(200);
		// 4 prompt tokens + 4 prompts × 100 allowance reserved from the minute's 10,000.
		expect(res.headers.get("x-ratelimit-remaining-tokens")).toBe(String(10000 - 404));
	});
});

describe("requests per minute", () => {
	it("limits requests whatever their tokens, with OpenAI's x-ratelimit-*-requests headers", async () => {
		const g = await handleGateway(oneModelConfig(mock.url, { "max-requests-per-minute": 2 }));
		try {
			const call = () =>
				send(g, "/v1/chat/completions", {
					method: "POST",
					headers: { "content-type": "application/json", "x-user-id": "rpm-user" },
					body: JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: "x" }],
						max_tokens: 1,
					}),
				});
			const first = await call();
			expect(first.status).toBe(200);
			expect(first.headers.get("x-ratelimit-limit-requests")).toBe("2");
			expect(first.headers.get("x-ratelimit-remaining-requests")).toBe("1");
			expect(first.headers.get("x-ratelimit-limit-tokens")).toBe("10000");
			expect(first.headers.get("ratelimit-policy")).toContain('"rpm";q=2;w=60');
			expect((await call()).status).toBe(200);
			const third = await call();
			const body = await expectError(third, 429, "rate_limit_exceeded");
			expect(body.error.type).toBe("requests");
			expect(body.error.message).toContain("requests per minute");
			expect(third.headers.get("x-ratelimit-remaining-requests")).toBe("0");
			// 30 s per request at 2 per minute.
			expect(Number(third.headers.get("retry-after"))).toBeGreaterThan(25);
		} finally {
			await g.stop();
		}
	});
});

describe("request-size limits", () => {
	it("refuses too many messages, too long a prompt and too deep a JSON body with 400, and keeps serving", async () => {
		const g = await handleGateway(
			oneModelConfig(mock.url).replace(
				"server:\n",
				"server:\n  max-messages: 3\n  max-prompt-tokens: 50\n",
			),
		);
		try {
			const call = (body: string) =>
				send(g, "/v1/chat/completions", {
					method: "POST",
					headers: { "content-type": "application/json" },
					body,
				});
			const msg = { role: "user", content: "x" };
			await expectError(
				await call(JSON.stringify({ model: "llama2-7b", messages: [msg, msg, msg, msg] })),
				400,
				"too_many_messages",
				"messages",
			);
			await expectError(
				await call(
					JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: "word ".repeat(80) }],
					}),
				),
				400,
				"prompt_too_large",
				"messages",
			);
			const deep = `{"model":"llama2-7b","messages":[{"role":"user","content":"x","extra":${"[".repeat(100)}${"]".repeat(100)}}]}`;
			await expectError(await call(deep), 400, "invalid_json");
			expect(
				(await call(JSON.stringify({ model: "llama2-7b", messages: [msg], max_tokens: 1 }))).status,
			).toBe(200);
		} finally {
			await g.stop();
		}
	});
});

describe("a huge prompt does not hold up other requests", () => {
	// On a listening server: the liveness checks must come in over the network while
	// the prompt is counted (in-process, a ping loop answered without I/O could keep
	// the event loop to itself and measure nothing).
	it("serves liveness checks while it counts a 1 MB prompt of random letters", async () => {
		const big = await startGateway(
			oneModelConfig(mock.url, { "max-tokens-per-minute": 1000 }).replace(
				"  max-body-bytes: 65536",
				"  max-body-bytes: 2097152",
			),
		);
		try {
			let x = 11;
			let content = "";
			for (let i = 0; i < 1_000_000; i++) {
				x = (x * 1103515245 + 12345) % 2 ** 31;
				content += String.fromCharCode(97 + (x % 26));
			}
			let done = false;
			let served = 0;
			const pings = (async () => {
				while (!done) {
					const res = await fetch(`${big.url}/health/live`);
					await res.arrayBuffer();
					if (!done && res.status === 200) served++;
				}
			})();
			const res = await fetch(`${big.url}/v1/chat/completions`, {
				method: "POST",
				headers: { "content-type": "application/json", "x-user-id": "huge" },
				body: JSON.stringify({ model: "llama2-7b", messages: [{ role: "user", content }] }),
			});
			done = true;
			await pings;
			// Far more than the window can ever hold: refused, after counting, with others served meanwhile.
			expect(res.status).toBe(400);
			expect(((await res.json()) as ErrorBody).error.code).toBe("tokens_exceed_limit");
			expect(served).toBeGreaterThan(5);
		} finally {
			await big.stop();
		}
	});
});

describe("chat roles", () => {
	it("accepts ipython, the tool-result role of Llama 3.1's chat template that vLLM serves", async () => {
		const m = startMockVllm({ models: ["llama2-7b"] });
		const g = await handleGateway(oneModelConfig(m.url));
		try {
			const res = await send(g, "/v1/chat/completions", {
				method: "POST",
				headers: { "content-type": "application/json" },
				body: JSON.stringify({
					model: "llama2-7b",
					messages: [
						{ role: "user", content: "weather?" },
						{ role: "ipython", content: '{"temp": 21}' },
					],
					max_tokens: 3,
				}),
			});
			expect(res.status).toBe(200);
			await res.arrayBuffer();
		} finally {
			await g.stop();
			await m.stop();
		}
	});
});
