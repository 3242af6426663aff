import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import OpenAI from "openai";
import { Logger } from "../src/log.ts";
import { Metrics } from "../src/metrics.ts";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { exportedSeriesNames, promtool } from "./support/promql.ts";
import { freePort } from "./support/redis.ts";
import { within } from "./support/wait.ts";

// Starts real servers (mock vLLM, a gateway) and runs promtool.
setDefaultTimeout(30_000);

/**
 * Known traffic through a gateway, then its /metrics scrape: valid by
 * `promtool check metrics`, and every value what the traffic implies — tokens
 * equal to what the mock vLLM reported, refusals by window and reason, latency
 * counts, store calls, limits, replica state. And one JSON log line per request
 * that names the key's id, never the key.
 */

const KEY = "trl_metrics_5ecret-key-never-logged";
const sha = (s: string) => `sha256:${new Bun.CryptoHasher("sha256").update(s).digest("hex")}`;

let mock: MockVllm;
let gw: RunningGateway;
let deadReplica: string;
const lines: Record<string, unknown>[] = [];
let scrape = "";

function value(name: string, labels: Record<string, string> = {}): number {
	let sum = 0;
	let found = false;
	for (const line of scrape.split("\n")) {
		const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
		if (m === null || m[1] !== name) continue;
		const have = new Map<string, string>();
		for (const l of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
			have.set(l[1] ?? "", l[2] ?? "");
		if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) {
			sum += Number(m[3]);
			found = true;
		}
	}
	if (!found) throw new Error(`no series ${name}${JSON.stringify(labels)}`);
	return sum;
}

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"] });
	deadReplica = `http://127.0.0.1:${await freePort()}`;
	const yaml = oneModelConfig(
		`\n      urls:\n        - ${mock.url}\n        - ${deadReplica}`,
		{
			"max-tokens-per-minute": 10_000,
			"max-requests-per-minute": 10,
			"max-concurrent-requests": 50,
		},
		`auth:
  mode: api-key
  api-keys:
    - id: app-a
      hash: ${sha(KEY)}
      user: alice
metrics:
  per-user-labels: true
`,
	)
		.replace("logging:\n  level: silent\n", "")
		.replace("vllm:\n  services:", "vllm:\n  health-check-ms: 100\n  services:");
	gw = await startGateway(yaml, {
		logger: new Logger("info", (line) => {
			lines.push(JSON.parse(line) as Record<string, unknown>);
		}),
	});
	const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: KEY, maxRetries: 0 });
	// Too large for the minute window's whole capacity: 400, nothing reserved.
	await client.chat.completions
		.create({ model: "llama2-7b", messages: [{ role: "user", content: "hi" }], max_tokens: 50_000 })
		.catch(() => {});
	for (let i = 0; i < 6; i++) {
		await client.chat.completions.create({
			model: "llama2-7b",
			messages: [{ role: "user", content: `plain request number ${i}` }],
			max_tokens: 8,
		});
	}
	for (let i = 0; i < 4; i++) {
		const stream = await client.chat.completions.create({
			model: "llama2-7b",
			messages: [{ role: "user", content: `streamed request ${i}` }],
			max_tokens: 5,
			stream: true,
		});
		for await (const _ of stream) {
			// read to the end
		}
	}
	// The requests-per-minute window (10) is spent: two 429s.
	for (let i = 0; i < 2; i++) {
		await client.chat.completions
			.create({ model: "llama2-7b", messages: [{ role: "user", content: "one more" }] })
			.catch(() => {});
	}
	// The dead replica fails its /health probe and is taken out.
	await within(3000, async () =>
		(await fetch(`${gw.url}/metrics`))
			.text()
			.then((t) => t.includes(`upstream_replica_up{model="llama2-7b",replica="${deadReplica}"} 0`)),
	);
	await within(2000, async () => gw.gateway.inFlight === 0);
	scrape = await (await fetch(`${gw.url}/metrics`)).text();
});

afterAll(async () => {
	await gw.stop();
	await mock.stop();
});

describe("/metrics after known traffic", () => {
	it("passes promtool check metrics", async () => {
		const { code, output } = await promtool(["check", "metrics"], scrape);
		expect(output).toBe("");
		expect(code).toBe(0);
	});

	it("is served the same at /actuator/prometheus", async () => {
		const actuator = await (await fetch(`${gw.url}/actuator/prometheus`)).text();
		expect(exportedSeriesNames(actuator)).toEqual(exportedSeriesNames(scrape));
		expect(value("token_usage_total", { type: "prompt" })).toBeGreaterThan(0);
	});

	it("counts exactly the tokens the model server reported", () => {
		expect(value("token_usage_total", { model: "llama2-7b", type: "prompt" })).toBe(
			mock.usageTotals.prompt,
		);
		expect(value("token_usage_total", { model: "llama2-7b", type: "completion" })).toBe(
			mock.usageTotals.completion,
		);
		expect(mock.usageTotals.completion).toBe(6 * 8 + 4 * 5);
		expect(value("token_settled_total", { model: "llama2-7b" })).toBe(
			mock.usageTotals.prompt + mock.usageTotals.completion,
		);
		// Reserved: each admitted request's estimate, as its log line says.
		const reserved = lines
			.filter((l) => l.msg === "request" && l.status === 200)
			.reduce((n, l) => n + Number(l.tokensEstimated), 0);
		expect(value("token_reserved_total", { model: "llama2-7b" })).toBe(reserved);
		expect(
			value("token_user_usage_total", { model: "llama2-7b", user: "alice", type: "prompt" }),
		).toBe(mock.usageTotals.prompt);
	});

	it("counts refusals by window, scope and reason", () => {
		expect(
			value("token_rate_limit_exceeded_total", {
				model: "llama2-7b",
				window: "rpm",
				scope: "user",
				reason: "rate_limit_exceeded",
			}),
		).toBe(2);
		expect(
			value("token_rate_limit_exceeded_total", {
				model: "llama2-7b",
				window: "minute",
				scope: "user",
				reason: "tokens_exceed_limit",
			}),
		).toBe(1);
		expect(value("token_user_rate_limit_exceeded_total", { user: "alice" })).toBe(3);
	});

	it("times admitted requests, first tokens, estimates and store calls", () => {
		expect(value("model_request_duration_seconds_count", { status: "2xx", stream: "false" })).toBe(
			6,
		);
		expect(value("model_request_duration_seconds_count", { status: "2xx", stream: "true" })).toBe(
			4,
		);
		expect(value("model_time_to_first_token_seconds_count", { model: "llama2-7b" })).toBe(4);
		expect(value("token_estimate_error_ratio_count", { model: "llama2-7b" })).toBe(10);
		// 13 decisions (10 admitted, 3 refused), 10 settlements.
		expect(value("token_limiter_store_duration_seconds_count", { operation: "reserve" })).toBe(13);
		expect(value("token_limiter_store_duration_seconds_count", { operation: "settle" })).toBe(10);
		expect(value("token_concurrent_requests", { model: "llama2-7b" })).toBe(0);
	});

	it("publishes the configured limits and the pressure on them", () => {
		expect(value("token_limit", { model: "llama2-7b", scope: "user", window: "minute" })).toBe(
			10_000,
		);
		expect(value("token_limit", { model: "llama2-7b", scope: "user", window: "rpm" })).toBe(10);
		expect(value("token_limit", { model: "llama2-7b", scope: "model", window: "concurrent" })).toBe(
			50,
		);
		// The last decision found the requests-per-minute window empty.
		expect(value("token_limit_remaining_ratio", { model: "llama2-7b", scope: "user" })).toBe(0);
	});

	it("shows each replica's health and breaker", () => {
		expect(value("upstream_replica_up", { replica: mock.url })).toBe(1);
		expect(value("upstream_breaker_state", { replica: mock.url })).toBe(0);
		expect(value("upstream_replica_up", { replica: deadReplica })).toBe(0);
		expect(value("upstream_breaker_state", { replica: deadReplica })).toBe(2);
		expect(value("upstream_in_flight_requests", { replica: mock.url })).toBe(0);
	});

	it("has no per-user series unless configured", async () => {
		const plain = new Metrics({ defaultMetrics: false });
		const text = await plain.registry.metrics();
		expect(text).not.toContain("token_user_usage_total");
		expect(text).toContain("token_usage_total");
	});
});

describe("request log", () => {
	it("writes one JSON line per request with its id, key id, status, tokens, duration and replica", () => {
		const requests = lines.filter((l) => l.msg === "request");
		expect(requests.length).toBe(13);
		const ok = requests.filter((l) => l.status === 200);
		expect(ok.length).toBe(10);
		for (const l of ok) {
			expect(l).toMatchObject({ level: "info", model: "llama2-7b", user: "alice", keyId: "app-a" });
			expect(typeof l.requestId).toBe("string");
			expect(typeof l.time).toBe("string");
			expect(l.upstream).toBe(mock.url);
			expect(Number(l.tokensEstimated)).toBeGreaterThan(0);
			expect(l.tokensActual).toBe(Number(l.promptTokens) + Number(l.completionTokens));
			expect(typeof l.durationMs).toBe("number");
		}
		const refused = requests.filter((l) => l.status !== 200);
		expect(refused.map((l) => [l.status, l.code]).sort()).toEqual([
			[400, "tokens_exceed_limit"],
			[429, "rate_limit_exceeded"],
			[429, "rate_limit_exceeded"],
		]);
		for (const l of refused) expect(l).toMatchObject({ model: "llama2-7b", keyId: "app-a" });
	});

	it("logs a refused authentication too, without the key it was given", async () => {
		const before = lines.filter((l) => l.msg === "request").length;
		const res = await fetch(`${gw.url}/v1/chat/completions`, {
			method: "POST",
			headers: {
				"content-type": "application/json",
				authorization: "Bearer trl_metrics_5ecret-wrong-key",
				"x-request-id": "bad-key-1",
			},
			body: JSON.stringify({ model: "llama2-7b", messages: [{ role: "user", content: "hi" }] }),
		});
		expect(res.status).toBe(401);
		await res.arrayBuffer();
		const requests = lines.filter((l) => l.msg === "request");
		expect(requests.length).toBe(before + 1);
		expect(requests.at(-1)).toMatchObject({
			requestId: "bad-key-1",
			status: 401,
			code: "invalid_api_key",
		});
		expect(requests.at(-1)?.user).toBeUndefined();
	});

	it("never contains the API key", () => {
		expect(lines.length).toBeGreaterThan(13);
		for (const l of lines) expect(JSON.stringify(l)).not.toContain("5ecret");
	});

	it("logs each replica transition once", () => {
		const replicaLines = lines.filter((l) => l.msg === "upstream replica" && l.url === deadReplica);
		const changes = replicaLines.map((l) => l.change);
		expect(changes).toContain("taken out: /health failed");
		expect(new Set(changes).size).toBe(changes.length);
	});
});
