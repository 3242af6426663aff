import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import fc from "fast-check";
import { CHAT_TEMPLATES } from "../src/config/schema.ts";
import {
	type CalibrationBatch,
	type CalibrationState,
	calibrationStoreKey,
	MemoryCalibration,
} from "../src/limits/calibration.ts";
import { RedisLimitStore } from "../src/limits/redis-store.ts";
import { Logger } from "../src/log.ts";
import { Calibrator } from "../src/tokens/calibration.ts";
import type { PromptParts } from "../src/tokens/estimate.ts";
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
	const steps = fc.array(
		fc.record({
			kind: fc.constantFrom(
				"fold",
				"fold",
				"fold",
				"retry",
				"read",
				"pin",
				"unpin",
				"reset",
				"stale",
			),
			xs: fc.array(
				fc.tuple(
					fc.double({ min: -1.3, max: 1.3, noNaN: true }),
					fc.double({ min: 0, max: 1.3, noNaN: true }),
				),
				{ minLength: 1, maxLength: 8 },
			),
			pin: fc.double({ min: 0.25, max: 4, noNaN: true }),
		}),
		{ minLength: 1, maxLength: 30 },
	);

	for (const which of ["standalone", "cluster"] as const) {
		it(`${which}: same state after any sequence of batches, retries, pins, resets and stale batches`, async () => {
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
					fc.asyncProperty(steps, async (list) => {
						const key = calibrationStoreKey(freshModel(), "t");
						const memory = new MemoryCalibration();
						let seq = 0;
						let last: CalibrationBatch | undefined;
						let epoch = 0;
						for (const step of list) {
							let a: CalibrationState;
							let b: CalibrationState;
							if (step.kind === "pin" || step.kind === "unpin") {
								const ratio = step.kind === "pin" ? step.pin : undefined;
								a = await memory.pin(key, ratio);
								b = await store.calibration.pin(key, ratio);
							} else if (step.kind === "reset") {
								a = await memory.reset(key);
								b = await store.calibration.reset(key);
							} else if (step.kind === "read") {
								a = await memory.read(key);
								b = await store.calibration.read(key);
							} else {
								const batch: CalibrationBatch =
									step.kind === "retry" && last !== undefined
										? last
										: {
												sender: "s",
												seq: ++seq,
												epoch: step.kind === "stale" ? epoch - 1 : epoch,
												count: step.xs.length,
												meanSums: [0, 1, 2].map((i) =>
													step.xs.reduce((t, [m]) => t + m * (i + 1) * 0.3, 0),
												),
												residualSums: [0, 1, 2].map((i) =>
													step.xs.reduce((t, [, r]) => t + r / (i + 1), 0),
												),
											};
								last = batch;
								a = await memory.fold(key, batch);
								b = await store.calibration.fold(key, batch);
							}
							epoch = a.epoch;
							expect({ samples: b.samples, epoch: b.epoch }).toEqual({
								samples: a.samples,
								epoch: a.epoch,
							});
							expect(b.means).toHaveLength(a.means.length);
							for (const [i, m] of a.means.entries()) expect(b.means[i]).toBeCloseTo(m, 12);
							for (const [i, r] of a.residuals.entries()) expect(b.residuals[i]).toBeCloseTo(r, 12);
							if (a.pinned === undefined) expect(b.pinned).toBeUndefined();
							else expect(b.pinned).toBeCloseTo(a.pinned, 12);
						}
					}),
					{ numRuns: 25 },
				);
			} finally {
				await store.close();
			}
		});
	}
});

/** A chat prompt's parts: `content` counted tokens, 2 tokens of framing per template. */
const parts = (content: number): PromptParts => ({
	content,
	framings: CHAT_TEMPLATES.map(() => 2),
	configured: 0,
	exact: 0,
});

const calibrated = (
	id: string,
	direction: "up" | "both" = "up",
	extra: { enabled?: boolean; ratio?: number } = {},
) => ({
	id,
	calibration: { enabled: extra.enabled ?? true, ratio: extra.ratio, direction },
	tokenizer: { key: "cl100k_base" },
});

describe("replicas share what any of them learned", () => {
	it("a second replica applies the first one's ratio after a sync; pins and resets reach both", async () => {
		const config = redisStoreConfig({ url: redis.url });
		const storeA = await RedisLimitStore.standalone(config, { timeoutMs: 2000 });
		const storeB = await RedisLimitStore.standalone(config, { timeoutMs: 2000 });
		const model = freshModel();
		const a = new Calibrator(storeA.calibration);
		const b = new Calibrator(storeB.calibration);
		a.configure([calibrated(model)]);
		b.configure([calibrated(model)]);
		try {
			// The server counts 2 framing + 1.25 per content token.
			for (let i = 0; i < 30; i++) a.observe(model, parts(100), 127);
			expect(a.apply(model, parts(200)).tokens).toBe(252);
			expect(b.apply(model, parts(200)).tokens).toBe(202);
			await a.sync();
			await b.sync();
			expect(b.apply(model, parts(200)).tokens).toBe(252);
			expect(b.view(model)?.samples).toBe(30);

			// B's own samples join the shared state; A sees them on its next sync.
			for (let i = 0; i < 30; i++) b.observe(model, parts(100), 137);
			await b.sync();
			await a.sync();
			expect(a.view(model)?.samples).toBe(60);
			expect(a.view(model)?.ratio).toBeCloseTo(b.view(model)?.ratio ?? 0, 9);
			expect(a.view(model)?.ratio).toBeGreaterThan(1.25);

			await a.pin(model, 2);
			await b.sync();
			expect(b.apply(model, parts(100)).tokens).toBe(204);
			expect(b.view(model)?.source).toBe("pinned");
			await b.pin(model, undefined);
			await a.sync();
			expect(a.view(model)?.source).toBe("learned");

			// A reset on A is not undone by samples B learned before it and had not sent.
			for (let i = 0; i < 12; i++) b.observe(model, parts(100), 150);
			await a.reset(model);
			await b.sync();
			await a.sync();
			expect(b.view(model)).toMatchObject({ ratio: 1, samples: 0, source: "none" });
			expect(a.view(model)).toMatchObject({ ratio: 1, samples: 0, source: "none" });
		} finally {
			await storeA.close();
			await storeB.close();
		}
	});

	it("applies a learned ratio only after ten samples, and lowers estimates only with direction both", () => {
		const model = freshModel();
		const up = new Calibrator(new MemoryCalibration());
		const both = new Calibrator(new MemoryCalibration());
		up.configure([calibrated(model)]);
		both.configure([calibrated(model, "both")]);
		for (let i = 0; i < 9; i++) {
			up.observe(model, parts(100), 82);
			both.observe(model, parts(100), 82);
		}
		expect(both.apply(model, parts(100)).tokens).toBe(102);
		up.observe(model, parts(100), 82);
		both.observe(model, parts(100), 82);
		expect(both.apply(model, parts(100)).tokens).toBe(82);
		expect(up.apply(model, parts(100)).tokens).toBe(102);
		expect(up.view(model)?.learnedRatio).toBeCloseTo(0.8, 9);
		const off = new Calibrator(new MemoryCalibration());
		off.configure([calibrated(model, "up", { enabled: false })]);
		for (let i = 0; i < 20; i++) off.observe(model, parts(100), 152);
		expect(off.apply(model, parts(100)).tokens).toBe(102);
		expect(off.view(model)?.learnedRatio).toBeCloseTo(1.5, 9);
		const fixed = new Calibrator(new MemoryCalibration());
		fixed.configure([calibrated(model, "up", { ratio: 1.1 })]);
		expect(fixed.view(model)).toMatchObject({ ratio: 1.1, source: "config" });
		expect(fixed.apply(model, parts(100)).tokens).toBe(Math.ceil(102 * 1.1));
	});

	it("learns which template's framing fits, and starts anew when the tokenizer changes", () => {
		const model = freshModel();
		const c = new Calibrator(new MemoryCalibration());
		c.configure([calibrated(model)]);
		// Framing differs per template; the server's count fits template 2 (llama3) exactly.
		const chat = (content: number): PromptParts => ({
			content,
			framings: [7, 20, 9, 12, 11],
			configured: 0,
			exact: 0,
		});
		for (let i = 0; i < 40; i++) {
			const content = 20 + ((i * 37) % 300);
			c.observe(model, chat(content), 9 + Math.round(content * 1.2));
		}
		expect(c.view(model)?.template).toBe("llama3");
		expect(c.view(model)?.ratio).toBeCloseTo(1.2, 2);
		expect(c.apply(model, chat(50)).tokens).toBe(9 + 60);
		c.configure([{ ...calibrated(model), tokenizer: { key: "huggingface:/models/x" } }]);
		expect(c.view(model)).toMatchObject({ samples: 0, source: "none", template: "openai" });
	});

	it("applies a batch once when a sync timed out but landed, and keeps learning while the store is away", async () => {
		const model = freshModel();
		const shared = new MemoryCalibration();
		let mode: "down" | "lands-then-fails" | "up" = "down";
		const flaky = {
			fold: async (key: string, batch: CalibrationBatch) => {
				if (mode === "down") throw new Error("store down");
				const state = await shared.fold(key, batch);
				if (mode === "lands-then-fails") throw new Error("timed out after it ran");
				return state;
			},
			read: (key: string) => shared.read(key),
			pin: (key: string, r: number | undefined) => shared.pin(key, r),
			reset: (key: string) => shared.reset(key),
		};
		const errors: string[] = [];
		const c = new Calibrator(flaky, { onSyncError: (m) => errors.push(m) });
		c.configure([calibrated(model)]);
		for (let i = 0; i < 12; i++) c.observe(model, parts(100), 122);
		await c.sync();
		expect(errors).toEqual([model]);
		expect(c.view(model)?.ratio).toBeCloseTo(1.2, 9);
		mode = "lands-then-fails";
		await c.sync();
		await c.sync();
		mode = "up";
		for (let i = 0; i < 3; i++) c.observe(model, parts(100), 122);
		await c.sync();
		// 12 applied once despite two failed (but landed) sends, plus 3 not yet sent.
		expect(c.view(model)?.samples).toBe(15);
		await c.sync();
		expect(c.view(model)?.samples).toBe(15);
		expect(errors).toHaveLength(3);
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
		// Every configured model has its series from the start.
		expect(await (await fetch(`${gw.url}/metrics`)).text()).toContain(
			'token_estimate_calibration_ratio{model="llama2-7b"} 1\n',
		);
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

	it("short chats: it learns the Llama 2 template's framing, below 5% over every 20 requests from the 50th", async () => {
		expect((await admin("DELETE", "")).status).toBe(200);
		const errors = await errorsOf(chats("short", 150, 5));
		expect(median(errors.slice(0, 10).map(Math.abs))).toBeGreaterThan(0.1);
		for (let end = 50; end <= 150; end++) {
			expect(median(errors.slice(end - 20, end).map(Math.abs))).toBeLessThan(0.05);
		}
		expect(gw.gateway.calibration("llama2-7b")).toMatchObject({
			template: "llama2",
			source: "learned",
		});
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
		expect(audit).toEqual([
			"calibration.reset",
			"calibration.reset",
			"calibration.pin",
			"calibration.unpin",
		]);
	});

	it("never charges more generated tokens than the request allowed when it counts them itself", async () => {
		expect((await admin("PUT", "", { ratio: 2 })).status).toBe(200);
		mock.behavior.mode = "no-usage";
		try {
			const before = requestLines(lines).length;
			const res = await fetch(`${gw.url}/v1/chat/completions`, {
				method: "POST",
				headers: { "content-type": "application/json", "x-user-id": "capped" },
				body: JSON.stringify({
					model: "llama2-7b",
					messages: [{ role: "user", content: "Hello there!" }],
					max_tokens: 4,
					stream: true,
				}),
			});
			expect(res.status).toBe(200);
			await res.text();
			expect(await within(2000, async () => requestLines(lines).length === before + 1)).toBe(true);
			// Four words streamed, counted at the pinned ratio of 2: 8, but at most max_tokens.
			expect(requestLines(lines).at(-1)).toMatchObject({
				completionTokens: 4,
				usageFallback: "missing",
			});
		} finally {
			mock.behavior.mode = "ok";
			expect((await admin("DELETE", "/pin")).status).toBe(200);
		}
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
