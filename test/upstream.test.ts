import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { oneModelConfig, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";

// Starts real servers (mock vLLM, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/** Several replicas per model: a dead one is skipped, a failing one is cut off by its breaker. */

let mock: MockVllm;

beforeAll(() => {
	mock = startMockVllm({ models: ["llama2-7b"], record: false, behavior: { outputTokens: 2 } });
});

afterAll(async () => {
	await mock.stop();
});

function replicas(...urls: string[]) {
	return `\n${urls.map((u) => `      - ${u}`).join("\n")}`;
}

async function closedPortUrl(): Promise<string> {
	const s = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("") });
	const url = `http://127.0.0.1:${s.port}`;
	await s.stop(true);
	return url;
}

const chat = (url: string, user = "u") =>
	fetch(`${url}/v1/chat/completions`, {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": user },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
			max_tokens: 2,
		}),
	});

describe("replicas and circuit breakers", () => {
	it("retries a refused connection once on another replica, so a dead replica costs no request", async () => {
		const dead = await closedPortUrl();
		const g = await startGateway(oneModelConfig(replicas(dead, mock.url)));
		try {
			const statuses = await Promise.all(
				Array.from({ length: 20 }, () => chat(g.url).then((r) => r.status)),
			);
			expect(statuses.every((s) => s === 200)).toBe(true);
		} finally {
			await g.stop();
		}
	});

	it("opens the breaker of a replica that keeps failing, then refuses with 503 and Retry-After without calling it", async () => {
		let calls = 0;
		const failing = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: () => {
				calls++;
				return Response.json(
					{ error: { message: "boom", type: "InternalServerError", code: 500 } },
					{ status: 500 },
				);
			},
		});
		const g = await startGateway(oneModelConfig(`http://127.0.0.1:${failing.port}`));
		try {
			for (let i = 0; i < 5; i++) expect((await chat(g.url, "victim")).status).toBe(502);
			expect(calls).toBe(5);
			const refused = await chat(g.url, "victim");
			expect(refused.status).toBe(503);
			expect(refused.headers.get("retry-after")).toBe("5");
			expect(((await refused.json()) as { error: { code: string } }).error.code).toBe(
				"upstream_unavailable",
			);
			expect(calls).toBe(5);
			// Nothing was reserved for the refused requests or kept for the failed ones.
			const usage = (await (
				await fetch(`${g.url}/api/v1/admin/token-usage/llama2-7b/victim`)
			).json()) as {
				windows: { used: number }[];
				concurrency: { inUse: number };
			};
			expect(usage.windows.every((w) => w.used === 0)).toBe(true);
			expect(usage.concurrency.inUse).toBe(0);
		} finally {
			await g.stop();
			await failing.stop(true);
		}
	});
});

describe("health probes", () => {
	it("takes a replica whose /health fails out of rotation and brings it back when it recovers", async () => {
		let healthy = true;
		let calls = 0;
		const flaky = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: async (req) => {
				if (new URL(req.url).pathname === "/health")
					return new Response(null, { status: healthy ? 200 : 503 });
				calls++;
				return fetch(`${mock.url}/v1/chat/completions`, {
					method: "POST",
					headers: req.headers,
					body: await req.text(),
				});
			},
		});
		const g = await startGateway(
			oneModelConfig(replicas(`http://127.0.0.1:${flaky.port}`, mock.url), {}, "").replace(
				"vllm:\n  services:",
				"vllm:\n  health-check-ms: 100\n  services:",
			),
		);
		try {
			healthy = false;
			await Bun.sleep(400);
			calls = 0;
			for (let i = 0; i < 10; i++) expect((await chat(g.url)).status).toBe(200);
			expect(calls).toBe(0);
			healthy = true;
			await Bun.sleep(400);
			for (let i = 0; i < 10; i++) expect((await chat(g.url)).status).toBe(200);
			expect(calls).toBeGreaterThan(0);
		} finally {
			await g.stop();
			await flaky.stop(true);
		}
	});
});

describe("breaker recovery", () => {
	it("closes the breaker again once a half-open probe succeeds", async () => {
		let failing = true;
		let calls = 0;
		const replica = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: async (req) => {
				calls++;
				if (failing)
					return Response.json({ error: { message: "boom", code: 500 } }, { status: 500 });
				return fetch(`${mock.url}${new URL(req.url).pathname}`, {
					method: req.method,
					headers: req.headers,
					body: req.method === "POST" ? await req.text() : null,
				});
			},
		});
		const g = await startGateway(
			oneModelConfig(`http://127.0.0.1:${replica.port}`).replace(
				"vllm:\n  services:",
				"vllm:\n  health-check-ms: 0\n  services:",
			),
		);
		try {
			for (let i = 0; i < 5; i++) expect((await chat(g.url)).status).toBe(502);
			expect((await chat(g.url)).status).toBe(503); // open
			failing = false;
			await Bun.sleep(5200); // half-open after 5 s
			const before = calls;
			expect((await chat(g.url)).status).toBe(200); // the probe
			for (let i = 0; i < 5; i++) expect((await chat(g.url)).status).toBe(200); // closed again
			expect(calls - before).toBe(6);
		} finally {
			await g.stop();
			await replica.stop(true);
		}
	});
});

describe("client disconnects and breakers", () => {
	it("does not count callers that went away as replica failures", async () => {
		const slow = startMockVllm({
			models: ["llama2-7b"],
			record: false,
			behavior: { firstTokenDelayMs: 300 },
		});
		const g = await startGateway(oneModelConfig(slow.url));
		try {
			const aborted = Array.from({ length: 10 }, () => {
				const controller = new AbortController();
				const call = fetch(`${g.url}/v1/chat/completions`, {
					method: "POST",
					headers: { "content-type": "application/json" },
					body: JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: "hi" }],
						max_tokens: 2,
					}),
					signal: controller.signal,
				}).catch(() => undefined);
				setTimeout(() => controller.abort(), 50);
				return call;
			});
			await Promise.all(aborted);
			await Bun.sleep(100);
			// Ten disconnects in a row: the replica still serves.
			expect((await chat(g.url)).status).toBe(200);
		} finally {
			await g.stop();
			await slow.stop();
		}
	});
});
