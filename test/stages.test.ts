import { afterAll, beforeAll, describe, expect, it } from "bun:test";
import { type HandledGateway, handleGateway, oneModelConfig, send } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";

/**
 * The pipeline's stage timer: sampled requests report the CPU time of each stage
 * in gateway_stage_seconds{stage}; unsampled ones and refusals report nothing.
 */

const STAGES = ["read", "plan", "admit", "forward", "respond", "settle"];

let mock: MockVllm;

beforeAll(() => {
	mock = startMockVllm({ models: ["llama2-7b"] });
});

afterAll(async () => {
	await mock.stop();
});

function chat(user: string, stream = false): RequestInit {
	return {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": user },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "Say something short." }],
			max_tokens: 8,
			...(stream ? { stream: true } : {}),
		}),
	};
}

/** Each stage's sample count and summed seconds, from the exposition. */
async function stageSeries(
	g: HandledGateway,
): Promise<Map<string, { count: number; sum: number }>> {
	const text = await (await send(g, "/metrics")).text();
	const out = new Map<string, { count: number; sum: number }>();
	for (const m of text.matchAll(/^gateway_stage_seconds_(count|sum)\{stage="(\w+)"\} (\S+)$/gm)) {
		const [, kind, stage = "", value] = m;
		const entry = out.get(stage) ?? { count: 0, sum: 0 };
		if (kind === "count") entry.count = Number(value);
		else entry.sum = Number(value);
		out.set(stage, entry);
	}
	return out;
}

describe("stage timing", () => {
	it("times every stage of every sampled request, streamed or not", async () => {
		const g = await handleGateway(oneModelConfig(mock.url), { stageSampleEvery: 1 });
		try {
			for (let i = 0; i < 3; i++) {
				const res = await send(g, "/v1/chat/completions", chat(`u${i}`));
				expect(res.status).toBe(200);
				await res.text();
			}
			const streamed = await send(g, "/v1/chat/completions", chat("s", true));
			expect(streamed.status).toBe(200);
			expect(await streamed.text()).toContain("[DONE]");
			await g.gateway.settled();
			const series = await stageSeries(g);
			expect([...series.keys()].sort()).toEqual([...STAGES].sort());
			for (const stage of STAGES) {
				const s = series.get(stage);
				expect({ stage, count: s?.count }).toEqual({ stage, count: 4 });
				expect(s?.sum ?? 0).toBeGreaterThan(0);
			}
		} finally {
			await g.stop();
		}
	});

	it("reports nothing for a refused request, nor for requests outside the sample", async () => {
		const g = await handleGateway(oneModelConfig(mock.url), { stageSampleEvery: 3 });
		const ok = async (user: string) => {
			const res = await send(g, "/v1/chat/completions", chat(user));
			expect(res.status).toBe(200);
			await res.text();
		};
		try {
			// One request in three is sampled: the third is refused before admission.
			await ok("a");
			await ok("b");
			const unknown = await send(g, "/v1/chat/completions", {
				...chat("c"),
				body: JSON.stringify({ model: "nope", messages: [{ role: "user", content: "hi" }] }),
			});
			expect(unknown.status).toBe(404);
			await ok("d");
			await ok("e");
			await g.gateway.settled();
			expect((await stageSeries(g)).size).toBe(0);
			// The sixth is sampled and admitted.
			await ok("f");
			await g.gateway.settled();
			const series = await stageSeries(g);
			for (const stage of STAGES)
				expect({ stage, count: series.get(stage)?.count }).toEqual({ stage, count: 1 });
		} finally {
			await g.stop();
		}
	});
});
