import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { copyFileSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { type GatewayProcess, spawnGateway } from "./support/process.ts";
import { type RedisServer, startRedis } from "./support/redis.ts";
import { run } from "./support/run.ts";

// Builds the binary and starts real servers (mock vLLM, Redis, the binary).
setDefaultTimeout(60_000);

/**
 * The gateway as the Docker image ships it: `bun run build` compiles it into one
 * binary (bun build --compile). Copied alone into an empty directory — no
 * node_modules, no sources — and started with the example development
 * configuration, it serves chats, refuses past the budget, keeps its state in
 * Redis (the Lua scripts are embedded) and serves Swagger UI (its assets too).
 */

const ROOT = join(import.meta.dir, "..");
let dir: string;
let mock: MockVllm;
let redis: RedisServer;
let gw: GatewayProcess;

beforeAll(async () => {
	const build = await run(["bun", "run", "build"]);
	if (build.code !== 0) throw new Error(`bun run build failed: ${build.stderr}`);
	dir = mkdtempSync(join(tmpdir(), "trl-binary-"));
	copyFileSync(join(ROOT, "dist/token-rate-limiter"), join(dir, "token-rate-limiter"));
	mock = startMockVllm({ models: ["llama2-7b", "gpt-3.5-turbo"] });
	redis = await startRedis();
	// The example development configuration, with the mock's address and the Redis store.
	const example = await Bun.file(join(ROOT, "config/dev.yaml")).text();
	const yaml = example
		.replaceAll("http://localhost:8000", mock.url)
		.replace(/^server:\n {2}port: \d+\n {2}host: [^\n]+\n/m, "server:\n")
		.replace("store: memory", "store: redis");
	expect(yaml).toContain(mock.url);
	expect(yaml).toContain("store: redis");
	gw = await spawnGateway(
		yaml,
		{},
		{
			command: [join(dir, "token-rate-limiter")],
			cwd: dir,
			// Nothing of the build machine: no Bun, no NODE_PATH; the seed's Redis variables.
			env: { PATH: "/usr/bin:/bin", REDIS_HOST: "127.0.0.1", REDIS_PORT: String(redis.port) },
		},
	);
});

afterAll(async () => {
	await gw?.stop();
	await mock?.stop();
	await redis?.stop();
	if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe("the compiled binary", () => {
	it("runs from a directory holding nothing but itself", () => {
		expect(readdirSync(dir)).toEqual(["token-rate-limiter"]);
	});

	it("is ready, serves a chat, then refuses with 429 once the budget is spent", async () => {
		expect((await fetch(`${gw.url}/health/ready`)).status).toBe(200);
		const client = new OpenAI({
			baseURL: `${gw.url}/v1`,
			apiKey: "unused",
			defaultHeaders: { "x-user-id": "binary-user" },
			maxRetries: 0,
		});
		const first = await client.chat.completions.create({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hello from the binary" }],
			max_tokens: 500,
		});
		expect(first.choices[0]?.message.content).toContain("Hello");
		expect(first.usage?.completion_tokens).toBeGreaterThan(0);
		// dev.yaml gives 2,000 tokens a minute. Each call reserves its prompt plus 500 until
		// it settles to what was generated: four at once do not fit.
		mock.behavior.firstTokenDelayMs = 300;
		const outcomes = await Promise.all(
			Array.from({ length: 4 }, () =>
				client.chat.completions
					.create({
						model: "llama2-7b",
						messages: [{ role: "user", content: "again" }],
						max_tokens: 500,
					})
					.then(
						() => undefined,
						(err: unknown) => err,
					),
			),
		);
		mock.behavior.firstTokenDelayMs = 0;
		const refused = outcomes.find((o) => o !== undefined);
		expect(outcomes.filter((o) => o === undefined).length).toBe(3);
		expect(refused).toBeInstanceOf(OpenAI.RateLimitError);
		expect(refused instanceof OpenAI.RateLimitError ? refused.code : "").toBe(
			"rate_limit_exceeded",
		);
	});

	it("keeps the budget in Redis with its embedded scripts", async () => {
		const keys = (await redis.cli("--scan", "--pattern", "trl:{llama2-7b}:u:*"))
			.split("\n")
			.filter(Boolean);
		expect(keys).toEqual(["trl:{llama2-7b}:u:binary-user"]);
		expect(
			Number(await redis.cli("HGET", "trl:{llama2-7b}:u:binary-user", "minute")),
		).toBeGreaterThan(0);
		const stats = await redis.cli("INFO", "commandstats");
		expect(Number(/cmdstat_evalsha:calls=(\d+)/.exec(stats)?.[1] ?? 0)).toBeGreaterThan(0);
	});

	it("serves Swagger UI with its embedded assets, and metrics", async () => {
		const page = await fetch(`${gw.url}/swagger`);
		expect(page.status).toBe(200);
		for (const asset of ["swagger-ui.css", "swagger-ui-bundle.js"]) {
			const res = await fetch(`${gw.url}/swagger/assets/${asset}`);
			expect(res.status).toBe(200);
			expect((await res.arrayBuffer()).byteLength).toBeGreaterThan(10_000);
		}
		expect((await fetch(`${gw.url}/favicon.ico`)).status).toBe(200);
		const spec = (await (await fetch(`${gw.url}/swagger/json`)).json()) as { paths: object };
		expect(Object.keys(spec.paths)).toContain("/v1/chat/completions");
		const metrics = await (await fetch(`${gw.url}/metrics`)).text();
		expect(metrics).toContain('token_usage_total{model="llama2-7b",type="completion"}');
	});
});
