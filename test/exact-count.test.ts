import { afterAll, beforeAll, describe, expect, it } from "bun:test";
import { handleGateway, oneModelConfig, send } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";

/**
 * Exact mode asks the replica the request will go to: the /tokenize call and
 * the completion land on the same replica, and the replicas still share the
 * load.
 */

let mock: MockVllm;
const proxies: ReturnType<typeof Bun.serve>[] = [];
/** Per replica: the request ids it counted (/tokenize) and served (completions). */
const seen: { tokenize: string[]; completion: string[] }[] = [];

function countingReplica(index: number) {
	seen[index] = { tokenize: [], completion: [] };
	return Bun.serve({
		port: 0,
		hostname: "127.0.0.1",
		fetch: async (req) => {
			const url = new URL(req.url);
			const id = req.headers.get("x-request-id") ?? "";
			if (url.pathname === "/tokenize") seen[index]?.tokenize.push(id);
			if (url.pathname === "/v1/chat/completions") seen[index]?.completion.push(id);
			return fetch(`${mock.url}${url.pathname}`, {
				method: req.method,
				headers: req.headers,
				...(req.method === "POST" ? { body: await req.text() } : {}),
			});
		},
	});
}

beforeAll(() => {
	mock = startMockVllm({ models: ["llama2-7b"], record: false, behavior: { outputTokens: 3 } });
	proxies.push(countingReplica(0), countingReplica(1));
});

afterAll(async () => {
	for (const p of proxies) await p.stop(true);
	await mock.stop();
});

describe("exact mode with several replicas", () => {
	it("counts a long prompt on the replica that then serves it, and spreads requests over both", async () => {
		const urls = `\n${proxies.map((p) => `      - http://127.0.0.1:${p.port}`).join("\n")}`;
		const config = oneModelConfig(urls, { "max-tokens-per-minute": 1_000_000 }).replace(
			"      llama2-7b:\n",
			"      llama2-7b:\n        calibration: false\n        exact-count:\n          above-tokens: 20\n          timeout-ms: 1000\n",
		);
		const g = await handleGateway(config);
		try {
			const long = "tell me about rate limits and token budgets ".repeat(20);
			for (let i = 0; i < 8; i++) {
				const res = await send(g, "/v1/chat/completions", {
					method: "POST",
					headers: {
						"content-type": "application/json",
						"x-user-id": "exact",
						"x-request-id": `exact-${i}`,
					},
					body: JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: long }],
						max_tokens: 3,
					}),
				});
				expect(res.status).toBe(200);
				await res.text();
			}
			await g.gateway.settled();
			for (const replica of seen) {
				// Every request a replica counted, it served; nothing else.
				expect(replica.tokenize).toEqual(replica.completion);
				// Both replicas took a share.
				expect(replica.completion.length).toBeGreaterThan(0);
			}
			expect(seen.flatMap((r) => r.completion).sort()).toEqual(
				Array.from({ length: 8 }, (_, i) => `exact-${i}`).sort(),
			);
		} finally {
			await g.stop();
		}
	});
});
