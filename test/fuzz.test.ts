import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import fc from "fast-check";
import { createApp } from "../src/app.ts";
import { buildGateway } from "../src/bootstrap.ts";
import { parseConfig } from "../src/config/loader.ts";
import { Logger } from "../src/log.ts";
import type { Runtime } from "../src/runtime.ts";
import { oneModelConfig } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { allSettled } from "./support/wait.ts";

// Starts real servers (mock vLLM): slower than bun's default 5 s per test.
setDefaultTimeout(60_000);

/**
 * Hostile input: random and adversarial bodies and headers never get a 5xx,
 * never crash the handler, and never leave a slot or an open reservation behind.
 */

let mock: MockVllm;
let gateway: Runtime;
let app: ReturnType<typeof createApp>;

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"], record: false, behavior: { outputTokens: 2 } });
	const config = parseConfig(
		oneModelConfig(mock.url, {
			"max-concurrent-requests": 1000,
			"max-tokens-per-minute": 1_000_000_000,
		}),
		{},
	);
	gateway = await buildGateway(config, { logger: new Logger("silent") });
	app = createApp(gateway);
});

afterAll(async () => {
	await gateway.deps.limiter.store.close();
	await mock.stop();
});

const jsonish = fc.letrec((tie) => ({
	value: fc.oneof(
		{ depthSize: "small" },
		fc.constant(null),
		fc.boolean(),
		fc.integer(),
		fc.double(),
		fc.string(),
		fc.constantFrom("<|endoftext|>", "\u0000", "\ud800", "안녕하세요", "x".repeat(5000)),
		fc.array(tie("value"), { maxLength: 4 }),
		fc.dictionary(fc.string({ maxLength: 12 }), tie("value"), { maxKeys: 5 }),
	),
})).value;

/** Bodies shaped roughly like chat requests, with any field replaced by anything. */
const chatish = fc.record(
	{
		model: fc.oneof(fc.constant("llama2-7b"), jsonish),
		messages: fc.oneof(
			fc.array(
				fc.record(
					{
						role: fc.oneof(fc.constantFrom("user", "system", "assistant", "tool"), jsonish),
						content: jsonish,
					},
					{ requiredKeys: [] },
				),
				{ maxLength: 4 },
			),
			jsonish,
		),
		max_tokens: fc.oneof(fc.integer({ min: -5, max: 50 }), jsonish),
		n: fc.oneof(fc.integer({ min: -1, max: 3 }), jsonish),
		stream: fc.oneof(fc.boolean(), jsonish),
		stream_options: jsonish,
	},
	{ requiredKeys: [] },
);

async function send(body: string, headers: Record<string, string> = {}): Promise<Response> {
	return app.handle(
		new Request("http://localhost/v1/chat/completions", {
			method: "POST",
			headers: { "content-type": "application/json", ...headers },
			body,
		}),
	);
}

async function drained(res: Response): Promise<number> {
	await res.arrayBuffer();
	return res.status;
}

describe("hostile input", () => {
	it("answers random chat-like bodies with a non-5xx status and an OpenAI error shape for every 4xx", async () => {
		await fc.assert(
			fc.asyncProperty(chatish, async (body) => {
				const res = await send(JSON.stringify(body));
				expect(res.status).toBeLessThan(500);
				if (res.status >= 400) {
					const parsed = (await res.json()) as { error?: { message?: unknown; type?: unknown } };
					expect(typeof parsed.error?.message).toBe("string");
					expect(typeof parsed.error?.type).toBe("string");
				} else {
					await res.arrayBuffer();
				}
			}),
			{ numRuns: 300 },
		);
	});

	it("answers random bytes and truncated JSON with 400, never 5xx", async () => {
		const valid = JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
		});
		await fc.assert(
			fc.asyncProperty(
				fc.oneof(
					fc.string(),
					fc.uint8Array({ maxLength: 200 }).map((b) => new TextDecoder().decode(b)),
					fc.nat({ max: valid.length - 1 }).map((cut) => valid.slice(0, cut)),
				),
				async (body) => {
					const status = await drained(await send(body));
					expect(status).toBeGreaterThanOrEqual(400);
					expect(status).toBeLessThan(500);
				},
			),
			{ numRuns: 300 },
		);
	});

	it("survives hostile headers: huge or odd X-User-ID and x-request-id", async () => {
		const body = JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
			max_tokens: 1,
		});
		await fc.assert(
			fc.asyncProperty(
				fc.string({ maxLength: 600 }).filter((s) => /^[\x20-\x7e]*$/.test(s)),
				fc.string({ maxLength: 300 }).filter((s) => /^[\x20-\x7e]*$/.test(s)),
				async (user, requestId) => {
					const status = await drained(
						await send(body, { "x-user-id": user, "x-request-id": requestId }),
					);
					expect(status).toBeLessThan(500);
				},
			),
			{ numRuns: 100 },
		);
	});

	it("leaves no request in flight, no slot held and no reservation open afterwards", async () => {
		await allSettled(gateway);
		expect(gateway.inFlight).toBe(0);
		const model = gateway.config.models.get("llama2-7b");
		if (model === undefined) throw new Error("no model");
		expect(await gateway.deps.limiter.slotsInUse(model)).toBe(0);
	});
});
