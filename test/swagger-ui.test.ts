import { afterAll, beforeAll, describe, expect, it } from "bun:test";
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import {
	type Browser,
	type BrowserContext,
	chromium,
	type Locator,
	type Page,
} from "playwright-core";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";

/**
 * Swagger UI at /swagger, driven in headless Chromium: the page loads from the
 * gateway alone (no CDN), "Authorize" with an API key makes "Execute" on
 * POST /v1/chat/completions succeed once with the example body, the next
 * Execute is refused with 429, and without authorizing it is refused with 401.
 */

const API_KEY = "trl_swagger_5b1e0c9d8a7f6e5d4c3b2a190817263544";
const sha = (key: string) => `sha256:${createHash("sha256").update(key).digest("hex")}`;
const OUT_DIR = join(import.meta.dir, "..", "test-output");
const CHAT_OP = "#operations-OpenAI-postV1ChatCompletions";
const STEP_MS = 10_000;
/** Loading and rendering the 1.5 MB bundle and the spec takes a few seconds on a busy 2-core box. */
const LOAD_MS = 15_000;

let mock: MockVllm;
let gw: RunningGateway;
let browser: Browser | undefined;
const contexts: BrowserContext[] = [];

beforeAll(async () => {
	mkdirSync(OUT_DIR, { recursive: true });
	// 200 tokens generated, so a max_tokens 100 call spends its whole allowance.
	mock = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 200 } });
	// The example body (max_tokens 100 plus a short prompt) fits 150 tokens per minute once.
	gw = await startGateway(
		oneModelConfig(
			mock.url,
			{ "max-tokens-per-minute": 150 },
			`auth:
  mode: api-key
  api-keys:
    - id: swagger
      hash: ${sha(API_KEY)}
      user: swagger-user
`,
		),
	);
	browser = await chromium.launch({
		executablePath: "/usr/bin/chromium",
		args: [
			"--no-sandbox",
			"--disable-gpu",
			"--disable-quic",
			"--no-first-run",
			"--disable-background-networking",
			"--disable-component-update",
			"--disable-sync",
		],
	});
});

afterAll(async () => {
	for (const c of contexts) await c.close().catch(() => {});
	await browser?.close().catch(() => {});
	await gw?.stop().catch(() => {});
	await mock?.stop().catch(() => {});
});

interface OpenedPage {
	readonly page: Page;
	/** Requests for anything not served by the gateway (there must be none). */
	readonly foreign: string[];
	/** Requests that failed at the network level. */
	readonly failed: string[];
	/** Uncaught exceptions in the page. */
	readonly errors: string[];
}

/** A fresh context (no stored authorization) with Swagger UI rendered. */
async function openSwagger(): Promise<OpenedPage> {
	if (browser === undefined) throw new Error("browser did not start");
	const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
	contexts.push(context);
	const page = await context.newPage();
	page.setDefaultTimeout(STEP_MS);
	const opened: OpenedPage = { page, foreign: [], failed: [], errors: [] };
	page.on("request", (r) => {
		if (!r.url().startsWith(gw.url) && !r.url().startsWith("data:")) opened.foreign.push(r.url());
	});
	page.on("requestfailed", (r) => opened.failed.push(`${r.url()}: ${r.failure()?.errorText}`));
	page.on("pageerror", (e) => opened.errors.push(String(e)));
	const res = await page.goto(`${gw.url}/swagger`, { waitUntil: "load", timeout: LOAD_MS });
	expect(res?.status()).toBe(200);
	await page.locator(CHAT_OP).waitFor({ state: "visible", timeout: LOAD_MS });
	return opened;
}

/** Expands POST /v1/chat/completions and makes sure "Try it out" is on. */
async function openChatOperation(page: Page): Promise<Locator> {
	const op = page.locator(CHAT_OP);
	await op.locator(".opblock-summary-control").click();
	await op.locator(".opblock-body").waitFor({ state: "visible" });
	// The page sets tryItOutEnabled, so the button may already read "Cancel".
	const tryOut = op.locator("button.try-out__btn");
	await tryOut.waitFor({ state: "visible" });
	if ((await tryOut.textContent())?.trim() === "Try it out") await tryOut.click();
	await op.locator("button.execute").waitFor({ state: "visible" });
	const body: unknown = JSON.parse(await op.locator("textarea.body-param__text").inputValue());
	expect(body).toMatchObject({ model: "llama2-7b", max_tokens: 100 });
	return op;
}

interface Shown {
	/** The status in the live response section. */
	readonly status: string;
	/** The response body shown under it. */
	readonly body: string;
	/** The X-API-Key header the browser sent. */
	readonly apiKey: string | undefined;
}

/** Clicks Execute and reads the live response once Swagger UI shows it. */
async function execute(page: Page, op: Locator): Promise<Shown> {
	const [response] = await Promise.all([
		page.waitForResponse(
			(r) => r.url() === `${gw.url}/v1/chat/completions` && r.request().method() === "POST",
			{ timeout: STEP_MS },
		),
		op.locator("button.execute").click(),
	]);
	const row = op.locator(".live-responses-table tbody tr.response");
	// Wait until the row shows this response (a previous one may still be on screen).
	const status = row.locator("td.response-col_status");
	await status
		.filter({ hasText: new RegExp(`^\\s*${response.status()}\\s*$`) })
		.waitFor({ state: "visible" });
	const body = row.locator(".response-col_description .highlight-code pre").first();
	await body.waitFor({ state: "visible" });
	await row.scrollIntoViewIfNeeded();
	return {
		status: ((await status.textContent()) ?? "").trim(),
		body: (await body.textContent()) ?? "",
		apiKey: response.request().headers()["x-api-key"],
	};
}

function shot(name: string): string {
	return join(OUT_DIR, `swagger-${name}.png`);
}

describe("Swagger UI", () => {
	it("loads from the gateway alone and rejects Execute without credentials (401)", async () => {
		const { page, foreign, failed, errors } = await openSwagger();
		await page.screenshot({ path: shot("01-page") });
		const op = await openChatOperation(page);
		const shown = await execute(page, op);
		await op.locator(".live-responses-table").screenshot({ path: shot("02-unauthorized-401") });
		expect(shown.status).toBe("401");
		expect(shown.apiKey).toBeUndefined();
		expect(shown.body).toContain("authentication_error");
		expect(foreign).toEqual([]);
		expect(failed).toEqual([]);
		expect(errors).toEqual([]);
	}, 25_000);

	it("authorizes with an API key, then Execute gives 200 and, over budget, 429", async () => {
		const { page, foreign, failed, errors } = await openSwagger();

		await page.locator(".auth-wrapper button.authorize").click();
		const dialog = page.locator(".dialog-ux .modal-ux");
		await dialog.waitFor({ state: "visible" });
		// The apiKey scheme's form (X-API-Key); once applied its input turns into "******".
		const apiKeyForm = dialog.locator(".auth-container").filter({ hasText: "X-API-Key" });
		await apiKeyForm.locator("input#api_key_value").fill(API_KEY);
		await apiKeyForm.locator('button[aria-label="Apply credentials"]').click();
		// Once applied, the form says "Authorized" and offers Logout instead of Authorize.
		await apiKeyForm.locator("h6", { hasText: "Authorized" }).waitFor();
		await apiKeyForm.locator("button", { hasText: "Logout" }).waitFor();
		await page.screenshot({ path: shot("03-authorized") });
		await apiKeyForm.locator("button.btn-done").click();
		await dialog.waitFor({ state: "detached" });
		await page.locator(".auth-wrapper button.authorize.locked").waitFor();

		const op = await openChatOperation(page);

		const first = await execute(page, op);
		await op.locator(".live-responses-table").screenshot({ path: shot("04-authorized-200") });
		expect(first.apiKey).toBe(API_KEY);
		expect(first.status).toBe("200");
		expect(first.body).toContain("chat.completion");

		const second = await execute(page, op);
		await op.locator(".live-responses-table").screenshot({ path: shot("05-over-budget-429") });
		expect(second.apiKey).toBe(API_KEY);
		expect(second.status).toBe("429");
		expect(second.body).toContain("rate_limit_exceeded");

		expect(mock.requests.length).toBe(1);
		expect(foreign).toEqual([]);
		expect(failed).toEqual([]);
		expect(errors).toEqual([]);
	}, 25_000);
});
