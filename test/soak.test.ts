import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { Logger } from "../src/log.ts";
import type { ChatCompletionBody } from "../src/openai.ts";
import { TiktokenCounter } from "../src/tokens/counter.ts";
import { chatPromptTokens } from "../src/tokens/estimate.ts";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import {
	type MockOptions,
	type MockUsage,
	type MockVllm,
	startMockVllm,
} from "./support/mock-vllm.ts";
import { type RedisServer, startRedis } from "./support/redis.ts";
import { allSettled, until } from "./support/wait.ts";

// A bounded soak: a couple of thousand requests on loopback, well under two minutes.
setDefaultTimeout(120_000);

/**
 * Mixed traffic with faults — client disconnects, upstream errors, hangs, cut
 * streams, a replica killed and restarted — against the Redis store, through
 * fewer concurrency slots than callers (requests wait in the queue). Afterwards
 * nothing is leaked: no lease, no open reservation, no request in flight; no
 * 500 the gateway made itself; memory stays flat; and every token the gateway
 * settled is one the mock vLLM generated, request by request.
 *
 * The mock counts prompts with the same tokenizer as the gateway (a model whose
 * tokenizer the gateway knows), so that requests which end without vLLM's usage
 * report (a cut stream, a disconnect) can be reconciled exactly too.
 */

const TOTAL = 5000;
const WORKERS = 24;
/** The model's concurrency slots: fewer than the workers, so the queue is busy throughout. */
const SLOTS = 16;

let redis: RedisServer;
let a: MockVllm;
let b: MockVllm;
/** Every mock that served, the restarted replica's old and new instance included. */
const mocks: MockVllm[] = [];
let gw: RunningGateway;
const logLines: string[] = [];
let mockOptions: MockOptions;

beforeAll(async () => {
	redis = await startRedis();
	const counter = await TiktokenCounter.load("cl100k_base");
	mockOptions = {
		models: ["llama2-7b"],
		record: false,
		perRequestUsage: true,
		promptTokens: (body) => chatPromptTokens(counter, body as unknown as ChatCompletionBody),
		behavior: { outputTokens: 12, tokenDelayMs: 1 },
	};
	a = startMockVllm(mockOptions);
	b = startMockVllm(mockOptions);
	mocks.push(a, b);
	const yaml = oneModelConfig(
		`\n      urls:\n        - ${a.url}\n        - ${b.url}\n      timeout-ms: 1500`,
		{
			// Saturated: fewer slots than workers, so requests keep waiting in the queue.
			"max-concurrent-requests": SLOTS,
			"max-queue-wait-ms": 60_000,
			"max-tokens-per-minute": 1_000_000_000,
			"max-tokens-per-day": 1_000_000_000,
		},
		`store: redis
spring:
  data:
    redis:
      host: 127.0.0.1
      port: ${redis.port}
redis:
  timeout-ms: 1000
`,
	);
	gw = await startGateway(yaml, {
		logger: new Logger("info", (line) => {
			logLines.push(line);
		}),
	});
});

afterAll(async () => {
	await gw.stop();
	await a.stop();
	await b.stop();
	await redis.stop();
});

type Kind = "plain" | "stream" | "disconnect" | "error" | "hang" | "cut";

function kindOf(i: number): Kind {
	const r = (i * 7919) % 100;
	if (r < 40) return "plain";
	if (r < 75) return "stream";
	if (r < 87) return "disconnect";
	if (r < 94) return "error";
	if (r < 97) return "cut";
	return "hang";
}

async function one(i: number, kind: Kind): Promise<number> {
	const controller = new AbortController();
	const body: Record<string, unknown> = {
		model: "llama2-7b",
		messages: [{ role: "user", content: `request ${i}` }],
		max_tokens: 20,
		stream: kind !== "plain" && kind !== "error",
	};
	if (kind === "error" || kind === "hang" || kind === "cut") body.mock_fault = kind;
	try {
		const res = await fetch(`${gw.url}/v1/chat/completions`, {
			method: "POST",
			headers: {
				"content-type": "application/json",
				"x-user-id": `soak-${i % 50}`,
				"x-request-id": `soak-${i}`,
			},
			body: JSON.stringify(body),
			signal: controller.signal,
		});
		if (kind === "disconnect" && res.body !== null) {
			const reader = res.body.getReader();
			await reader.read();
			controller.abort();
			return 499;
		}
		await res.arrayBuffer();
		return res.status;
	} catch {
		return kind === "disconnect" ? 499 : -1;
	}
}

function rssMb(): number {
	return Math.round(process.memoryUsage().rss / 1024 / 1024);
}

describe("soak", () => {
	it(`serves ${TOTAL} mixed requests with faults and a replica restart, and leaks nothing`, async () => {
		const statuses = new Map<string, number>();
		const rssStart = rssMb();
		let next = 0;
		let killed = false;
		const started = performance.now();
		await Promise.all(
			Array.from({ length: WORKERS }, async () => {
				for (;;) {
					const i = next++;
					if (i >= TOTAL) return;
					if (i === Math.floor(TOTAL / 3) && !killed) {
						killed = true;
						// A replica dies mid-load and comes back on the same port.
						const port = b.port;
						await b.stop();
						setTimeout(() => {
							b = startMockVllm({ ...mockOptions, port });
							mocks.push(b);
						}, 1500);
					}
					const kind = kindOf(i);
					const status = await one(i, kind);
					const key = `${kind}:${status}`;
					statuses.set(key, (statuses.get(key) ?? 0) + 1);
				}
			}),
		);
		const seconds = (performance.now() - started) / 1000;
		// The last settlements have landed, and every mock has accounted for every stream it served
		// (a stream the gateway aborted ends at the mock a little after the gateway settled it).
		await allSettled(gw.gateway);
		await until(() => mocks.every((m) => m.running() === 0), {
			what: "every mock to finish its streams",
		});

		const summary = Object.fromEntries([...statuses.entries()].sort());
		console.log(`[soak] ${TOTAL} requests in ${seconds.toFixed(1)} s: ${JSON.stringify(summary)}`);

		// Every status is one the traffic explains: no 500 made by the gateway.
		for (const key of statuses.keys()) {
			const [kind, status] = key.split(":");
			const allowed: Record<string, string[]> = {
				plain: ["200", "503"],
				stream: ["200", "503"],
				disconnect: ["499", "503"],
				error: ["502", "503"],
				cut: ["200", "503"],
				hang: ["200", "504", "503"],
			};
			expect(allowed[kind ?? ""] ?? []).toContain(status ?? "");
		}
		// Most plain chats are served. The rest met every replica's breaker open: while one
		// replica is down, five failures in a row on the other (the faults sent) open its
		// breaker for 5 s, and the log check below requires each refusal to say so.
		expect(statuses.get("plain:200") ?? 0).toBeGreaterThan(statuses.get("plain:503") ?? 0);
		expect(statuses.get("plain:200") ?? 0).toBeGreaterThan(TOTAL * 0.2);

		// Nothing leaked: no request in flight, no lease, no open reservation.
		expect(gw.gateway.inFlight).toBe(0);
		expect(Number(await redis.cli("ZCARD", "trl:{llama2-7b}:slots"))).toBe(0);
		const reservations = (await redis.cli("--scan", "--pattern", "trl:{llama2-7b}:r:*"))
			.split("\n")
			.filter(Boolean);
		expect(reservations).toEqual([]);
		// Nor anything in the shared queue: no waiting entry, no user's or replica's index of one.
		expect(await redis.cli("HLEN", "trl:{llama2-7b}:q:m")).toBe("0");
		const indexes = (await redis.cli("--scan", "--pattern", "trl:{llama2-7b}:q:*e:*"))
			.split("\n")
			.filter(Boolean);
		expect(indexes).toEqual([]);
		const metrics = await (await fetch(`${gw.url}/metrics`)).text();
		expect(metrics).toContain('token_concurrent_requests{model="llama2-7b"} 0');
		// The queue was used, and is empty; no wait ran out.
		expect(metrics).toContain('token_queue_depth{model="llama2-7b"} 0');
		const waits = (outcome: string) =>
			Number(
				new RegExp(
					`^token_queue_wait_seconds_count\\{model="llama2-7b",outcome="${outcome}"\\} (\\d+)$`,
					"m",
				).exec(metrics)?.[1] ?? 0,
			);
		expect(waits("admitted")).toBeGreaterThan(TOTAL / 10);
		expect(waits("timeout")).toBe(0);
		console.log(`[soak] ${waits("admitted")} requests waited for one of ${SLOTS} slots`);

		// Settled usage equals what the mock generated, request by request.
		const generated = new Map<string, MockUsage>();
		for (const mock of mocks) for (const [id, u] of mock.usageById) generated.set(id, u);
		const settled = new Map<string, RequestLine>();
		const refused = new Map<string, string>();
		for (const line of logLines) {
			const entry = requestLine(line);
			if (entry !== undefined) settled.set(entry.requestId, entry);
			const refusal = refusalLine(line);
			if (refusal !== undefined) refused.set(refusal.requestId, refusal.code);
		}
		// One line per request: settled, or refused before anything was reserved, with every
		// replica's breaker open (timeouts and errors bunch up while one replica is down).
		for (const id of refused.keys()) expect(settled.has(id)).toBe(false);
		for (const code of refused.values()) expect(code).toBe("upstream_unavailable");
		expect(settled.size + refused.size).toBe(TOTAL);
		for (const id of refused.keys()) expect(generated.has(id)).toBe(false);
		let exact = 0;
		let disconnects = 0;
		let cut = 0;
		let settledTokens = 0;
		let generatedTokens = 0;
		let unread = 0;
		for (const [id, g] of settled) {
			const m = generated.get(id);
			const made = m === undefined ? 0 : m.prompt + m.completion;
			settledTokens += g.tokensActual;
			generatedTokens += made;
			if (g.status === 499) {
				// The caller left mid-stream: the gateway charges the prompt and every token it
				// read; tokens still in the socket when the upstream was aborted never reached it.
				disconnects++;
				expect(g.tokensActual).toBeLessThanOrEqual(made);
				if (m !== undefined) expect(g.promptTokens).toBe(m.prompt);
				unread += made - g.tokensActual;
			} else if (g.usageFallback === "upstream_failed") {
				// The model server's connection broke mid-stream: the gateway charges what reached
				// it; the last event may have been lost with the connection.
				cut++;
				expect(g.tokensActual).toBeLessThanOrEqual(made);
				expect(made - g.tokensActual).toBeLessThanOrEqual(3);
				if (m !== undefined) expect(g.promptTokens).toBe(m.prompt);
				unread += made - g.tokensActual;
				if (made === g.tokensActual) exact++;
			} else {
				expect({ id, status: g.status, fallback: g.usageFallback, tokens: g.tokensActual }).toEqual(
					{
						id,
						status: g.status,
						fallback: g.usageFallback,
						tokens: made,
					},
				);
				exact++;
			}
		}
		const usageMetric = (type: string) =>
			Number(
				new RegExp(`^token_usage_total\\{model="llama2-7b",type="${type}"\\} (\\d+)$`, "m").exec(
					metrics,
				)?.[1] ?? Number.NaN,
			);
		// The exported counters say the same as the per-request lines.
		expect(usageMetric("prompt") + usageMetric("completion")).toBe(settledTokens);
		console.log(
			`[soak] usage: ${exact} requests reconciled exactly; ${disconnects} disconnects, ${cut} cut streams; settled ${settledTokens} of ${generatedTokens} tokens generated (${unread} unread when the caller left or the connection broke)`,
		);
		// What was generated but never read stays small: a token or two per disconnect or cut.
		expect(unread).toBeLessThanOrEqual((disconnects + cut) * 3);

		// The test process (gateway and mocks inside) does not keep growing.
		const rssEnd = rssMb();
		console.log(`[soak] RSS ${rssStart} MB -> ${rssEnd} MB`);
		expect(rssEnd - rssStart).toBeLessThan(150);
	});
});

interface RequestLine {
	readonly requestId: string;
	readonly status: number;
	readonly tokensActual: number;
	readonly promptTokens: number | undefined;
	/** Why the gateway counted usage itself (the model server reported none), if it did. */
	readonly usageFallback: string | undefined;
}

/** A request refused before admission (its log line has a code and no tokens). */
function refusalLine(line: string): { requestId: string; code: string } | undefined {
	const parsed: unknown = JSON.parse(line);
	if (parsed === null || typeof parsed !== "object") return undefined;
	const o = parsed as Record<string, unknown>;
	if (o.msg !== "request" || typeof o.requestId !== "string" || typeof o.code !== "string") {
		return undefined;
	}
	if (typeof o.tokensActual === "number") return undefined;
	return { requestId: o.requestId, code: o.code };
}

/** The gateway's per-request log line, parsed; undefined for other lines. */
function requestLine(line: string): RequestLine | undefined {
	const parsed: unknown = JSON.parse(line);
	if (parsed === null || typeof parsed !== "object") return undefined;
	const o = parsed as Record<string, unknown>;
	if (o.msg !== "request" || typeof o.requestId !== "string") return undefined;
	if (typeof o.status !== "number" || typeof o.tokensActual !== "number") return undefined;
	return {
		requestId: o.requestId,
		status: o.status,
		tokensActual: o.tokensActual,
		promptTokens: typeof o.promptTokens === "number" ? o.promptTokens : undefined,
		usageFallback: typeof o.usageFallback === "string" ? o.usageFallback : undefined,
	};
}
