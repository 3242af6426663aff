import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { type HandledGateway, handleGateway, oneModelConfig, send } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { allSettled } from "./support/wait.ts";

// Starts real servers (mock vLLM, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/** Stream timeouts: until the first event (prefill) and between events; each cut is settled. */

let mock: MockVllm;
let gw: HandledGateway;

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"], record: false });
	const yaml = oneModelConfig(mock.url, { "max-concurrent-requests": 2 }).replace(
		`llama2-7b: ${mock.url}`,
		`llama2-7b:\n      urls: ${mock.url}\n      first-byte-timeout-ms: 400\n      idle-timeout-ms: 250`,
	);
	gw = await handleGateway(yaml);
});

afterAll(async () => {
	await gw.stop();
	await mock.stop();
});

function streamRequest(user: string): Promise<Response> {
	return send(gw, "/v1/chat/completions", {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": user },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "x" }],
			max_tokens: 50,
			stream: true,
		}),
	});
}

async function streamText(user: string): Promise<string> {
	const res = await streamRequest(user);
	expect(res.status).toBe(200);
	return res.text();
}

/** The user's usage once every request has been settled. */
async function usage(user: string) {
	await allSettled(gw.gateway);
	return (await (await send(gw, `/api/v1/admin/token-usage/llama2-7b/${user}`)).json()) as {
		windows: { window: string; used: number }[];
		concurrency: { inUse: number };
	};
}

describe("stream timeouts", () => {
	it("cuts a stream whose first event does not come within first-byte-timeout-ms, charging only the prompt", async () => {
		mock.behavior.prefillDelayMs = 3000;
		try {
			// vLLM may hold its headers until the first event too: then the answer is a 504,
			// else the stream ends with an error event. Either names the limit.
			const res = await streamRequest("slow-prefill");
			expect([200, 504]).toContain(res.status);
			expect(await res.text()).toContain("first-byte-timeout-ms");
			const u = await usage("slow-prefill");
			expect(u.concurrency.inUse).toBe(0);
			// Nothing was generated: at most the prompt estimate (3 + 3 + 'user' + 'x' = 8) is
			// charged (when the headers had come), else everything is refunded.
			expect(u.windows.find((w) => w.window === "day")?.used ?? -1).toBeLessThanOrEqual(8);
		} finally {
			mock.behavior.prefillDelayMs = 0;
		}
	});

	it("cuts a stream that goes silent for longer than idle-timeout-ms, charging what was generated", async () => {
		mock.behavior.tokenDelayMs = 1000;
		try {
			const text = await streamText("stalled");
			expect(text).toContain("idle-timeout-ms");
			expect(text).not.toContain("[DONE]");
			const u = await usage("stalled");
			expect(u.concurrency.inUse).toBe(0);
			expect(u.windows.find((w) => w.window === "day")?.used).toBe(8);
		} finally {
			mock.behavior.tokenDelayMs = 0;
		}
	});

	it("lets a stream with steady events run past both limits", async () => {
		mock.behavior.tokenDelayMs = 100;
		mock.behavior.outputTokens = 8;
		try {
			const text = await streamText("steady");
			expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
		} finally {
			mock.behavior.tokenDelayMs = 0;
			mock.behavior.outputTokens = 20;
		}
	});
});
