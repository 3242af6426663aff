import { afterAll, beforeAll, describe, expect, it } from "bun:test";
import { createHash } from "node:crypto";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";

/**
 * The OpenAPI document (what Swagger UI shows) declares security route by route
 * as the gateway enforces it: asked without a credential, with authentication
 * on, a route it marks as needing one answers 401, and a route it marks as open
 * does not.
 */

let mock: MockVllm;
let gw: RunningGateway;

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"] });
	const hash = createHash("sha256").update("k-ops").digest("hex");
	gw = await startGateway(
		`auth:
  mode: api-key
  api-keys:
    - id: ops
      hash: sha256:${hash}
      user: ops
      roles: [admin]
${oneModelConfig(mock.url)}`,
	);
});

afterAll(async () => {
	await gw.stop();
	await mock.stop();
});

interface Operation {
	security?: Record<string, string[]>[];
	responses?: Record<string, { content?: Record<string, { example?: unknown }> }>;
}

/** A valid body for each route that takes one, so that only the credential decides. */
function bodyFor(path: string): object {
	if (path.endsWith("/chat/completions")) {
		return { model: "llama2-7b", messages: [{ role: "user", content: "x" }], max_tokens: 2 };
	}
	if (path === "/v1/completions") return { model: "llama2-7b", prompt: "x", max_tokens: 2 };
	if (path === "/api/v1/admin/api-keys") return { user: "someone" };
	if (path.startsWith("/api/v1/admin/limits/")) return { "max-tokens-per-minute": 10 };
	if (path.startsWith("/api/v1/admin/calibration/")) return { ratio: 1.2 };
	return {};
}

describe("the OpenAPI document", () => {
	it("declares a credential exactly on the routes that demand one", async () => {
		const doc = (await (await fetch(`${gw.url}/swagger/json`)).json()) as {
			paths: Record<string, Record<string, Operation>>;
			security?: unknown;
		};
		expect(doc.security).toBeUndefined();
		const seen: { route: string; declared: boolean; demanded: boolean }[] = [];
		for (const [path, ops] of Object.entries(doc.paths)) {
			for (const [method, op] of Object.entries(ops)) {
				const url = path.replace("{model}", "llama2-7b").replace(/\{(user|name|id)\}/g, "someone");
				const res = await fetch(`${gw.url}${url}`, {
					method: method.toUpperCase(),
					headers: { "content-type": "application/json" },
					...(method === "post" || method === "put" ? { body: JSON.stringify(bodyFor(path)) } : {}),
				});
				await res.arrayBuffer();
				const declared = (op.security ?? []).length > 0;
				seen.push({
					route: `${method.toUpperCase()} ${path}`,
					declared,
					demanded: res.status === 401,
				});
			}
		}
		expect(seen.length).toBeGreaterThan(20);
		for (const s of seen) expect(s).toEqual({ ...s, declared: s.demanded });
	});

	it("answers a caller without a credential 401 before looking at its body", async () => {
		const doc = (await (await fetch(`${gw.url}/swagger/json`)).json()) as {
			paths: Record<string, Record<string, Operation>>;
		};
		const seen: { route: string; status: number }[] = [];
		for (const [path, ops] of Object.entries(doc.paths)) {
			for (const [method, op] of Object.entries(ops)) {
				if ((method !== "post" && method !== "put") || (op.security ?? []).length === 0) continue;
				const url = path.replace("{model}", "llama2-7b").replace(/\{(user|name|id)\}/g, "someone");
				const res = await fetch(`${gw.url}${url}`, {
					method: method.toUpperCase(),
					headers: { "content-type": "application/json" },
					body: JSON.stringify({ "not-a-field": true }),
				});
				await res.arrayBuffer();
				seen.push({ route: `${method.toUpperCase()} ${path}`, status: res.status });
			}
		}
		expect(seen.length).toBeGreaterThan(5);
		for (const s of seen) expect(s).toEqual({ ...s, status: 401 });
	});

	it("shows a real chat completion as the 200 example, not an empty object", async () => {
		const doc = (await (await fetch(`${gw.url}/swagger/json`)).json()) as {
			paths: Record<string, Record<string, Operation>>;
		};
		const example = doc.paths["/v1/chat/completions"]?.post?.responses?.["200"]?.content?.[
			"application/json"
		]?.example as { object?: string; choices?: unknown[]; usage?: unknown } | undefined;
		expect(example?.object).toBe("chat.completion");
		expect(example?.choices?.length).toBe(1);
		expect(example?.usage).toBeDefined();
	});
});
