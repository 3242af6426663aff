import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { oneModelConfig } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { type GatewayProcess, spawnGateway } from "./support/process.ts";
import { within } from "./support/wait.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/** Hot reload: a valid edit is in force without a restart; a bad one is refused and says why. */

let mock: MockVllm;
let gw: GatewayProcess;

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"], record: false, behavior: { outputTokens: 0 } });
	gw = await spawnGateway(oneModelConfig(mock.url).replace("level: silent", "level: info"));
});

afterAll(async () => {
	await gw.stop();
	await mock.stop();
});

const ask = (maxTokens: number) =>
	fetch(`${gw.url}/v1/chat/completions`, {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": "reloader" },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
			max_tokens: maxTokens,
		}),
	});

describe("configuration hot reload", () => {
	it("puts a valid edit in force on SIGHUP without a restart", async () => {
		// 10,000 per minute: 8 + 20,000 can never fit.
		expect((await ask(20_000)).status).toBe(400);
		const text = readFileSync(gw.configFile, "utf8");
		writeFileSync(
			gw.configFile,
			text.replace("max-tokens-per-minute: 10000", "max-tokens-per-minute: 30000"),
		);
		gw.proc.kill("SIGHUP");
		expect(await within(3000, async () => (await ask(20_000)).status === 200)).toBe(true);
		expect(gw.output()).toContain('"msg":"config reloaded"');
		const models = (await (await fetch(`${gw.url}/api/v1/models`)).json()) as {
			models: { limits: Record<string, number> }[];
		};
		expect(models.models[0]?.limits["max-tokens-per-minute"]).toBe(30_000);
	});

	it("keeps the configuration in force when the edited file is invalid, and names the problem", async () => {
		const text = readFileSync(gw.configFile, "utf8");
		writeFileSync(
			gw.configFile,
			text.replace("max-tokens-per-minute: 30000", "max-tokens-per-minute: -5"),
		);
		gw.proc.kill("SIGHUP");
		expect(
			await within(3000, async () =>
				gw
					.output()
					.includes('"msg":"config reload rejected; the previous configuration stays in force"'),
			),
		).toBe(true);
		expect(gw.output()).toContain(
			"token.rate-limit.models.llama2-7b.max-tokens-per-minute: expected a positive integer, got -5",
		);
		expect((await ask(20_000)).status).toBe(200);
		expect(gw.proc.exitCode).toBeNull();
	});

	it("notices an edit of the file without a signal", async () => {
		const text = readFileSync(gw.configFile, "utf8");
		writeFileSync(
			gw.configFile,
			text.replace("max-tokens-per-minute: -5", "max-tokens-per-minute: 5000"),
		);
		// 5,000 per minute: 8 + 6,000 no longer fits.
		expect(await within(3000, async () => (await ask(6_000)).status === 400)).toBe(true);
	});

	it("keeps noticing edits saved the way editors save them (write a new file, rename it over)", async () => {
		for (const [limit, fits, refused] of [
			[30_000, 20_000, 40_000],
			[50_000, 40_000, 60_000],
		] as const) {
			const text = readFileSync(gw.configFile, "utf8").replace(
				/max-tokens-per-minute: \d+/,
				`max-tokens-per-minute: ${limit}`,
			);
			writeFileSync(`${gw.configFile}.tmp`, text);
			renameSync(`${gw.configFile}.tmp`, gw.configFile);
			expect(await within(3000, async () => (await ask(fits)).status === 200)).toBe(true);
			expect((await ask(refused)).status).toBe(400);
		}
	});
});

describe("configuration hot reload of a mistyped key", () => {
	it("refuses it, naming the key and the closest valid one, and keeps the configuration in force", async () => {
		const before = readFileSync(gw.configFile, "utf8");
		writeFileSync(
			gw.configFile,
			before.replace("max-tokens-per-day:", "max-tokens-per-dya: 5\n        max-tokens-per-day:"),
		);
		gw.proc.kill("SIGHUP");
		expect(
			await within(3000, async () =>
				gw.output().includes("max-tokens-per-dya: unknown key; did you mean max-tokens-per-day?"),
			),
		).toBe(true);
		expect(gw.proc.exitCode).toBeNull();
		writeFileSync(gw.configFile, before);
	});
});
