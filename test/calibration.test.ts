import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import fc from "fast-check";
import {
	type CalibrationState,
	EMPTY_CALIBRATION,
	learnedRatio,
	MemoryCalibration,
} from "../src/limits/calibration.ts";
import { RedisLimitStore } from "../src/limits/redis-store.ts";
import { Logger } from "../src/log.ts";
import { Calibrator } from "../src/tokens/calibration.ts";
import { type ChatMessage, llama2ChatTokens } from "./support/chat-templates.ts";
import { chats } from "./support/chats.ts";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import {
	type RedisClusterHandle,
	type RedisServer,
	redisStoreConfig,
	startRedis,
	startRedisCluster,
} from "./support/redis.ts";
import { within } from "./support/wait.ts";

// Starts real servers (Redis, a Redis Cluster, mock vLLM, gateways).
setDefaultTimeout(60_000);

let redis: RedisServer;
let cluster: RedisClusterHandle;

beforeAll(async () => {
	redis = await startRedis();
	cluster = await startRedisCluster();
});
afterAll(async () => {
	await redis.stop();
	await cluster.stop();
});

let modelSeq = 0;
const freshModel = () => `cal-${process.pid}-${++modelSeq}`;

describe("the Redis calibrate script learns exactly as the memory store", () => {
	const batches = fc.array(
		fc.record({
			kind: fc.constantFrom("fold", "fold", "fold", "read", "pin", "unpin"),
			xs: fc.array(fc.double({ min: -1.3, max: 1.3, noNaN: true }), { maxLength: 8 }),
			pin: fc.double({ min: 0.25, max: 4, noNaN: true }),
		}),
		{ minLength: 1, maxLength: 30 },
	);

	for (const which of ["standalone", "cluster"] as const) {
		it(`${which}: same state after any sequence of batches, pins and reads`, async () => {
			const store =
				which === "standalone"
					? await RedisLimitStore.standalone(redisStoreConfig({ url: redis.url }), {
							timeoutMs: 2000,
						})
					: await RedisLimitStore.cluster(
							redisStoreConfig({
								clusterNodes: cluster.nodes.map((n) => `${n.host}:${n.port}`),
							}),
							{ timeoutMs: 2000 },
						);
			try {
				await fc.assert(
					fc.asyncProperty(batches, async (steps) => {
						const model = freshModel();
						const memory = new MemoryCalibration();
						for (const step of steps) {
							let a: CalibrationState;
							let b: CalibrationState;
							if (step.kind === "pin" || step.kind === "unpin") {
								const ratio = step.kind === "pin" ? step.pin : undefined;
								a = await memory.pin(model, ratio);
								b = await store.calibration.pin(model, ratio);
							} else {
								const sum = step.kind === "read" ? 0 : step.xs.reduce((x, y) => x + y, 0);
								const count = step.kind === "read" ? 0 : step.xs.length;
								a = await memory.fold(model, sum, count);
								b = await store.calibration.fold(model, sum, count);
							}
							expect(b.samples).toBe(a.samples);
							expect(b.mean).toBeCloseTo(a.mean, 12);
							if (a.pinned === undefined) expect(b.pinned).toBeUndefined();
							else expect(b.pinned).toBeCloseTo(a.pinned, 12);
						}
						expect(await store.calibration.reset(model)).toEqual(EMPTY_CALIBRATION);
					}),
					{ numRuns: 25 },
				);
			} finally {
				await store.close();
			}
		});
	}
});

describe("replicas share what any of them learned", () => {
	it("a second replica applies the first one's ratio after a sync; pins and resets reach both", async () => {
		const config = redisStoreConfig({ url: redis.url });
		const storeA = await RedisLimitStore.standalone(config, { timeoutMs: 2000 });
		const storeB = await RedisLimitStore.standalone(config, { timeoutMs: 2000 });
		const model = freshModel();
		const models = [
			{ id: model, calibration: { enabled: true, ratio: undefined, direction: "up" as const } },
		];
		const a = new Calibrator(storeA.calibration);
		const b = new Calibrator(storeB.calibration);
		a.configure(models);
		b.configure(models);
		try {
			for (let i = 0; i < 30; i++) a.observe(model, 100, 125);
			expect(a.ratio(model)).toBeCloseTo(1.25, 9);
			expect(b.ratio(model)).toBe(1);
			await a.sync();
			await b.sync();
			expect(b.ratio(model)).toBeCloseTo(1.25, 9);
			expect(b.view(model)?.samples).toBe(30);

			// B's own samples join the shared state; A sees them on its next sync.
			for (let i = 0; i < 30; i++) b.observe(model, 100, 135);
			await b.sync();
			await a.sync();
			expect(a.view(model)?.samples).toBe(60);
			expect(a.ratio(model)).toBeCloseTo(b.ratio(model), 9);
			expect(a.ratio(model)).toBeGreaterThan(1.25);

			await a.pin(model, 2);
			await b.sync();
			expect(b.ratio(model)).toBe(2);
			expect(b.view(model)?.source).toBe("pinned");
			await b.pin(model, undefined);
			await a.sync();
			expect(a.view(model)?.source).toBe("learned");

			await a.reset(model);
			await b.sync();
			expect(b.view(model)).toMatchObject({ ratio: 1, samples: 0, source: "none" });
		} finally {
			await storeA.close();
			await storeB.close();
		}
	});

	it("applies a learned ratio only after ten samples, and below 1 only with direction both", async () => {
		const model = freshModel();
		const up = new Calibrator(new MemoryCalibration());
		const both = new Calibrator(new MemoryCalibration());
		up.configure([
			{ id: model, calibration: { enabled: true, ratio: undefined, direction: "up" } },
		]);
		both.configure([
			{ id: model, calibration: { enabled: true, ratio: undefined, direction: "both" } },
		]);
		for (let i = 0; i < 9; i++) {
			up.observe(model, 100, 80);
			both.observe(model, 100, 80);
		}
		expect(both.ratio(model)).toBe(1);
		up.observe(model, 100, 80);
		both.observe(model, 100, 80);
		expect(both.ratio(model)).toBeCloseTo(0.8, 9);
		expect(up.ratio(model)).toBe(1);
		expect(up.view(model)?.learnedRatio).toBeCloseTo(0.8, 9);
		const off = new Calibrator(new MemoryCalibration());
		off.configure([
			{ id: model, calibration: { enabled: false, ratio: undefined, direction: "up" } },
		]);
		for (let i = 0; i < 20; i++) off.observe(model, 100, 150);
		expect(off.ratio(model)).toBe(1);
		expect(off.view(model)?.learnedRatio).toBeCloseTo(1.5, 9);
		const fixed = new Calibrator(new MemoryCalibration());
		fixed.configure([{ id: model, calibration: { enabled: true, ratio: 1.1, direction: "up" } }]);
		expect(fixed.view(model)).toMatchObject({ ratio: 1.1, source: "config" });
	});

	it("keeps learning locally while the store is unreachable, and shares the samples once it is back", async () => {
		const model = freshModel();
		const shared = new MemoryCalibration();
		let down = true;
		const flaky = {
			fold: (m: string, sum: number, count: number) =>
				down ? Promise.reject(new Error("store down")) : shared.fold(m, sum, count),
			pin: (m: string, r: number | undefined) => shared.pin(m, r),
			reset: (m: string) => shared.reset(m),
		};
		const errors: string[] = [];
		const c = new Calibrator(flaky, { onSyncError: (m) => errors.push(m) });
		c.configure([{ id: model, calibration: { enabled: true, ratio: undefined, direction: "up" } }]);
		for (let i = 0; i < 12; i++) c.observe(model, 100, 120);
		await c.sync();
		expect(errors).toEqual([model]);
		expect(c.ratio(model)).toBeCloseTo(1.2, 9);
		down = false;
		await c.sync();
		expect(learnedRatio(await shared.fold(model, 0, 0))).toBeCloseTo(1.2, 9);
		expect((await shared.fold(model, 0, 0)).samples).toBe(12);
	});
});

/** The request log lines of a gateway, parsed. */
function requestLines(lines: string[]): Record<string, unknown>[] {
	return lines
		.map((l) => JSON.parse(l) as Record<string, unknown>)
		.filter((l) => l.msg === "request" && l.status === 200);
}

const median = (xs: number[]) => {
	const s = [...xs].sort((a, b) => a - b);
	const mid = Math.floor(s.length / 2);
	return s.length % 2 === 1 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
};

describe("end to end: a Llama 2 model server, cl100k_base configured, calibration on", () => {
	let mock: MockVllm;
	const lines: string[] = [];
	let gw: RunningGateway;
	const config = (extra = "", limits: Record<string, number> = {}) =>
		oneModelConfig(
			mock.url,
			{
				"max-tokens-per-minute": 10_000_000,
				"max-tokens-per-day": 100_000_000,
				"max-concurrent-requests": 500,
				...limits,
			},
			extra,
		);

	beforeAll(async () => {
		mock = startMockVllm({
			models: ["llama2-7b"],
			record: false,
			behavior: { outputTokens: 5 },
			// The model server counts the prompt as Llama 2 does: its chat template, its tokenizer.
			promptTokens: (body) => llama2ChatTokens(body.messages as ChatMessage[]),
		});
		gw = await startGateway(config(), { logger: new Logger("info", (l) => lines.push(l)) });
	});
	afterAll(async () => {
		await gw.stop();
		await mock.stop();
	});

	const send = (url: string, messages: ChatMessage[], user = "learner", maxTokens = 5) =>
		fetch(`${url}/v1/chat/completions`, {
			method: "POST",
			headers: { "content-type": "application/json", "x-user-id": user },
			body: JSON.stringify({ model: "llama2-7b", messages, max_tokens: maxTokens }),
		});

	/** Sends chats one after another; returns each request's estimate error (estimate / actual - 1). */
	async function errorsOf(list: ChatMessage[][]): Promise<number[]> {
		const before = requestLines(lines).length;
		for (const messages of list) {
			const res = await send(gw.url, messages);
			expect(res.status).toBe(200);
			await res.arrayBuffer();
		}
		expect(
			await within(2000, async () => requestLines(lines).length === before + list.length),
		).toBe(true);
		return requestLines(lines)
			.slice(before)
			.map((l) => Number(l.promptTokensEstimated) / Number(l.promptTokens) - 1);
	}

	const admin = (method: string, path: string, body?: unknown) =>
		fetch(`${gw.url}/api/v1/admin/calibration/llama2-7b${path}`, {
			method,
			headers: { "content-type": "application/json" },
			...(body === undefined ? {} : { body: JSON.stringify(body) }),
		});

	it("English chats: the median estimate error falls below 5% within 50 requests and stays there", async () => {
		const errors = await errorsOf(chats("english", 150, 3));
		// Uncalibrated, cl100k undercounts Llama 2 by more than 10%.
		expect(median(errors.slice(0, 10).map(Math.abs))).toBeGreaterThan(0.1);
		expect(Math.max(...errors.slice(0, 10))).toBeLessThan(0);
		// Every run of 20 requests ending at the 50th or later: median |error| below 5%.
		for (let end = 50; end <= 150; end++) {
			expect(median(errors.slice(end - 20, end).map(Math.abs))).toBeLessThan(0.05);
		}

		const catalogue = (await (await fetch(`${gw.url}/api/v1/models`)).json()) as {
			models: {
				id: string;
				tokenizer: string;
				chatTemplate: string;
				calibration: Record<string, unknown>;
			}[];
		};
		const entry = catalogue.models.find((m) => m.id === "llama2-7b");
		expect(entry?.tokenizer).toBe("cl100k_base");
		expect(entry?.chatTemplate).toBe("openai");
		expect(entry?.calibration).toMatchObject({ enabled: true, source: "learned", samples: 150 });
		const ratio = Number(entry?.calibration.ratio);
		expect(ratio).toBeGreaterThan(1.1);
		expect(ratio).toBeLessThan(1.25);
		const metrics = await (await fetch(`${gw.url}/metrics`)).text();
		const line = metrics
			.split("\n")
			.find((l) => l.startsWith('token_estimate_calibration_ratio{model="llama2-7b"}'));
		expect(Number(line?.split(" ")[1])).toBeCloseTo(ratio, 9);
	});

	it("chats with code: after a reset it learns again, below 5% over every 50 requests", async () => {
		const reset = await admin("DELETE", "");
		expect(reset.status).toBe(200);
		expect(((await reset.json()) as { calibration: unknown }).calibration).toMatchObject({
			ratio: 1,
			samples: 0,
			source: "none",
		});
		const errors = await errorsOf(chats("code", 150, 3));
		expect(median(errors.slice(0, 10).map(Math.abs))).toBeGreaterThan(0.1);
		for (let end = 50; end <= 150; end++) {
			expect(median(errors.slice(end - 50, end).map(Math.abs))).toBeLessThan(0.05);
		}
	});

	it("an operator pins, unpins and resets the ratio; estimates follow at once", async () => {
		const [chat] = chats("english", 1, 11);
		if (chat === undefined) throw new Error("no chat");
		const pinned = await admin("PUT", "", { ratio: 2 });
		expect(pinned.status).toBe(200);
		expect(((await pinned.json()) as { calibration: unknown }).calibration).toMatchObject({
			ratio: 2,
			source: "pinned",
			pinned: 2,
		});
		const [withPin] = await errorsOf([chat]);
		expect(withPin).toBeGreaterThan(0.5);
		expect((await admin("PUT", "", { ratio: 9 })).status).toBe(400);
		expect((await admin("PUT", "", { ratio: "x" })).status).toBe(400);
		const unpinned = await admin("DELETE", "/pin");
		expect(((await unpinned.json()) as { calibration: unknown }).calibration).toMatchObject({
			source: "learned",
			pinned: null,
		});
		const missing = await fetch(`${gw.url}/api/v1/admin/calibration/nope`);
		expect(missing.status).toBe(404);
		const audit = lines
			.map((l) => JSON.parse(l) as Record<string, unknown>)
			.filter((l) => l.msg === "audit")
			.map((l) => l.action);
		expect(audit).toEqual(["calibration.reset", "calibration.pin", "calibration.unpin"]);
	});

	it("admission uses the calibrated estimate: a budget the raw estimate overshoots by 20% is not overshot", async () => {
		// An application that sends one prompt template (with code) over and over; 40 copies
		// arrive at once while the model server holds every answer, so all are admitted or
		// refused on their estimates before anything settles.
		const [burstChat] = chats("code", 1, 99);
		if (burstChat === undefined) throw new Error("no chat");
		const actualEach = llama2ChatTokens(burstChat) + 5;
		const budget = actualEach * 12;
		const raw = await startGateway(
			config("", { "max-tokens-per-minute": budget }).replace(
				"      llama2-7b:\n",
				"      llama2-7b:\n        calibration: false\n",
			),
		);
		// Two gateways on one Redis: one learns from the application's earlier requests (a caller
		// with a budget of its own); the other, which admits the burst, gets the ratio through the
		// store.
		const redisExtra = `store: redis\nspring:\n  data:\n    redis:\n      host: 127.0.0.1\n      port: ${redis.port}\n`;
		const learner = await startGateway(config(redisExtra));
		const calibrated = await startGateway(config(redisExtra, { "max-tokens-per-minute": budget }));
		try {
			await learner.gateway.deps.calibrator.reset("llama2-7b");
			for (let i = 0; i < 30; i++) {
				const res = await send(learner.url, burstChat, "learner");
				await res.arrayBuffer();
			}
			expect(
				await within(5000, async () => calibrated.gateway.calibration("llama2-7b").samples >= 30),
			).toBe(true);
			expect(calibrated.gateway.calibration("llama2-7b").source).toBe("learned");
			mock.behavior.firstTokenDelayMs = 300;
			const admitted = async (target: RunningGateway) => {
				const statuses = await Promise.all(
					Array.from({ length: 40 }, () =>
						send(target.url, burstChat, "burst").then(async (r) => {
							await r.arrayBuffer();
							return r.status;
						}),
					),
				);
				return statuses.filter((st) => st === 200).length;
			};
			const rawAdmitted = await admitted(raw);
			const calibratedAdmitted = await admitted(calibrated);
			// The raw cl100k estimate lets through at least 20% more than the budget buys.
			expect(rawAdmitted * actualEach).toBeGreaterThanOrEqual(budget * 1.2);
			// The calibrated one spends the budget exactly.
			expect(calibratedAdmitted * actualEach).toBeLessThanOrEqual(budget);
			expect(calibratedAdmitted).toBe(12);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await raw.stop();
			await learner.stop();
			await calibrated.stop();
		}
	});
});

describe("exact mode: long prompts counted by the model server's /tokenize", () => {
	let mock: MockVllm;
	let broken: ReturnType<typeof Bun.serve>;
	beforeAll(() => {
		mock = startMockVllm({
			models: ["llama2-7b"],
			record: false,
			behavior: { outputTokens: 5 },
			promptTokens: (body) => llama2ChatTokens(body.messages as ChatMessage[]),
		});
		// A replica whose /tokenize fails and which serves completions otherwise.
		broken = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: async (req) => {
				const url = new URL(req.url);
				if (url.pathname === "/tokenize") return new Response("boom", { status: 500 });
				return fetch(`${mock.url}${url.pathname}`, {
					method: req.method,
					headers: req.headers,
					...(req.method === "POST" ? { body: await req.text() } : {}),
				});
			},
		});
	});
	afterAll(async () => {
		await broken.stop(true);
		await mock.stop();
	});

	it("admits a long prompt on the server's exact count, a short one on the estimate, and falls back when /tokenize fails", async () => {
		const lines: string[] = [];
		const exactConfig = (upstream: string) =>
			oneModelConfig(upstream, {}).replace(
				"      llama2-7b:\n",
				"      llama2-7b:\n        calibration: false\n        exact-count:\n          above-tokens: 100\n          timeout-ms: 500\n",
			);
		const gw = await startGateway(exactConfig(mock.url), {
			logger: new Logger("info", (l) => lines.push(l)),
		});
		const gwBroken = await startGateway(exactConfig(`http://127.0.0.1:${broken.port}`), {
			logger: new Logger("info", (l) => lines.push(l)),
		});
		try {
			const long = chats("code", 20, 21).find((c) => llama2ChatTokens(c) > 200);
			const short: ChatMessage[] = [{ role: "user", content: "Hello there!" }];
			if (long === undefined) throw new Error("no long chat");
			for (const [url, messages] of [
				[gw.url, long],
				[gw.url, short],
				[gwBroken.url, long],
			] as const) {
				const res = await fetch(`${url}/v1/chat/completions`, {
					method: "POST",
					headers: { "content-type": "application/json", "x-user-id": "exact" },
					body: JSON.stringify({ model: "llama2-7b", messages, max_tokens: 5 }),
				});
				expect(res.status).toBe(200);
				await res.arrayBuffer();
			}
			expect(await within(2000, async () => requestLines(lines).length === 3)).toBe(true);
			const [a, b, c] = requestLines(lines);
			expect(a).toMatchObject({
				promptTokensEstimated: llama2ChatTokens(long),
				promptTokens: llama2ChatTokens(long),
				promptCountedBy: "model-server",
			});
			expect(b?.promptCountedBy).toBeUndefined();
			expect(Number(b?.promptTokensEstimated)).not.toBe(llama2ChatTokens(short));
			expect(c?.promptCountedBy).toBeUndefined();
			expect(Number(c?.promptTokensEstimated)).toBeLessThan(llama2ChatTokens(long));
			const metrics = await (await fetch(`${gw.url}/metrics`)).text();
			expect(metrics).toContain('token_exact_count_total{model="llama2-7b",outcome="counted"} 1');
			const brokenMetrics = await (await fetch(`${gwBroken.url}/metrics`)).text();
			expect(brokenMetrics).toContain(
				'token_exact_count_total{model="llama2-7b",outcome="failed"} 1',
			);
		} finally {
			await gw.stop();
			await gwBroken.stop();
		}
	});
});
