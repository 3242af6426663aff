/**
 * Shared helpers for the k6 scripts: configuration from `-e NAME=value`, the
 * caller's identity, request bodies, and parsers for the gateway's answers
 * (chat completions, OpenAI-shaped errors, rate-limit headers, SSE streams).
 *
 * k6 runs these files as TypeScript (k6 0.57+; 0.52-0.56 need
 * `--compatibility-mode=experimental_enhanced`). Only k6's own modules exist at
 * run time, so this file imports nothing else.
 */
import http, { type RefinedResponse, type ResponseType } from "k6/http";

// k6 provides `console` (its log goes to stderr); @types/k6 does not declare it.
declare global {
	const console: {
		log(...args: unknown[]): void;
		info(...args: unknown[]): void;
		warn(...args: unknown[]): void;
		error(...args: unknown[]): void;
		debug(...args: unknown[]): void;
	};
}

/** An environment variable given with `k6 run -e NAME=value` (or the process environment). */
export function env(name: string, fallback: string): string {
	const value = __ENV[name];
	return value === undefined || value === "" ? fallback : value;
}

/** A numeric environment variable; a value that is not a number stops the test at load time. */
export function envNumber(name: string, fallback: number): number {
	const raw = __ENV[name];
	if (raw === undefined || raw === "") return fallback;
	const value = Number(raw);
	if (!Number.isFinite(value)) throw new Error(`${name} must be a number, got "${raw}"`);
	return value;
}

/** A boolean environment variable: `1`, `true`, `yes` or `0`, `false`, `no`. */
export function envFlag(name: string, fallback: boolean): boolean {
	const raw = (__ENV[name] ?? "").toLowerCase();
	if (raw === "") return fallback;
	if (raw === "1" || raw === "true" || raw === "yes") return true;
	if (raw === "0" || raw === "false" || raw === "no") return false;
	throw new Error(`${name} must be true or false, got "${raw}"`);
}

/** The gateway, without a trailing slash (`BASE_URL`, default http://localhost:8080). */
export const BASE_URL = env("BASE_URL", "http://localhost:8080").replace(/\/+$/, "");
/** Sent as `Authorization: Bearer`; when empty, callers are named by `X-User-ID` instead. */
export const API_KEY = env("API_KEY", "");
/** The model id the requests name (`MODEL`, default llama2-7b). */
export const MODEL = env("MODEL", "llama2-7b");

/** The URL of a gateway path, e.g. `url("/v1/models")`. */
export function url(path: string): string {
	return `${BASE_URL}${path}`;
}

/** The default caller of a virtual user when no API key is given. */
export function vuUser(): string {
	return `k6-user-${__VU}`;
}

/**
 * Request headers: JSON, and who is calling. With `API_KEY` every request spends
 * that key's budget (the gateway ignores `X-User-ID` outside `auth.mode: none`);
 * without it, `user` names the budget through `X-User-ID`.
 */
export function requestHeaders(user: string = vuUser()): Record<string, string> {
	const headers: Record<string, string> = { "Content-Type": "application/json" };
	if (API_KEY !== "") headers.Authorization = `Bearer ${API_KEY}`;
	else headers["X-User-ID"] = user;
	return headers;
}

export interface ChatRequest {
	readonly maxTokens: number;
	readonly stream?: boolean;
	/** Ask for the final usage event of a stream (`stream_options.include_usage`). */
	readonly includeUsage?: boolean;
	readonly prompt?: string;
}

export const DEFAULT_PROMPT = "Say hello in one short sentence.";

/** An OpenAI chat completion body for `MODEL`. */
export function chatBody(req: ChatRequest): string {
	const body: Record<string, unknown> = {
		model: MODEL,
		messages: [{ role: "user", content: req.prompt ?? DEFAULT_PROMPT }],
		max_tokens: req.maxTokens,
	};
	if (req.stream === true) {
		body.stream = true;
		if (req.includeUsage === true) body.stream_options = { include_usage: true };
	}
	return JSON.stringify(body);
}

export type Response = RefinedResponse<ResponseType | undefined>;

/** POST /v1/chat/completions as `user`, with extra metric tags. */
export function postChat(
	req: ChatRequest,
	user: string = vuUser(),
	tags: Record<string, string> = {},
): Response {
	return http.post(url("/v1/chat/completions"), chatBody(req), {
		headers: requestHeaders(user),
		tags: { endpoint: "chat", stream: String(req.stream === true), ...tags },
	});
}

/** The response body as text ("" when there is none). */
export function bodyText(res: Response): string {
	return typeof res.body === "string" ? res.body : "";
}

/** A response header by name, case-insensitively (k6 reports names in canonical form). */
export function header(res: Response, name: string): string | undefined {
	const wanted = name.toLowerCase();
	for (const key of Object.keys(res.headers)) {
		if (key.toLowerCase() === wanted) return res.headers[key];
	}
	return undefined;
}

/** A header holding a non-negative integer, else undefined. */
export function headerInt(res: Response, name: string): number | undefined {
	const value = header(res, name);
	if (value === undefined || !/^\d+$/.test(value.trim())) return undefined;
	return Number(value);
}

export function isRecord(value: unknown): value is Record<string, unknown> {
	return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** JSON.parse that answers undefined instead of throwing. */
export function parseJson(text: string): unknown {
	try {
		return JSON.parse(text);
	} catch {
		return undefined;
	}
}

export interface Usage {
	readonly promptTokens: number;
	readonly completionTokens: number;
	readonly totalTokens: number;
}

/** An OpenAI `usage` object, when it has the three counts. */
export function usageOf(value: unknown): Usage | undefined {
	if (!isRecord(value)) return undefined;
	const { prompt_tokens, completion_tokens, total_tokens } = value;
	if (
		typeof prompt_tokens !== "number" ||
		typeof completion_tokens !== "number" ||
		typeof total_tokens !== "number"
	) {
		return undefined;
	}
	return {
		promptTokens: prompt_tokens,
		completionTokens: completion_tokens,
		totalTokens: total_tokens,
	};
}

export interface ChatCompletion {
	/** `choices[0].message.content`. */
	readonly content: string;
	readonly usage: Usage | undefined;
}

/** A non-streaming chat completion: the first choice's text and the usage. */
export function chatCompletionOf(res: Response): ChatCompletion | undefined {
	const body = parseJson(bodyText(res));
	if (!isRecord(body) || body.object !== "chat.completion") return undefined;
	const choices = body.choices;
	if (!Array.isArray(choices)) return undefined;
	const first: unknown = choices[0];
	if (!isRecord(first) || !isRecord(first.message)) return undefined;
	const content = first.message.content;
	if (typeof content !== "string") return undefined;
	return { content, usage: usageOf(body.usage) };
}

/** The gateway's error body: `{"error":{"message","type","param","code"}}`. */
export interface ApiError {
	readonly message: string;
	readonly type: string;
	readonly code: string | null;
	readonly param: string | null;
}

/** The OpenAI-shaped error of a response, when its body is one. */
export function apiErrorOf(res: Response): ApiError | undefined {
	const body = parseJson(bodyText(res));
	if (!isRecord(body) || !isRecord(body.error)) return undefined;
	const { message, type, code, param } = body.error;
	if (typeof message !== "string" || typeof type !== "string") return undefined;
	if (!("code" in body.error) || !("param" in body.error)) return undefined;
	if (code !== null && typeof code !== "string") return undefined;
	if (param !== null && typeof param !== "string") return undefined;
	return { message, type, code, param };
}

/** The `x-ratelimit-*` headers of a response (the tightest token and request windows). */
export interface RateLimitHeaders {
	readonly limitTokens: number | undefined;
	readonly remainingTokens: number | undefined;
	readonly resetTokens: string | undefined;
	/** Only when the model has `max-requests-per-minute`. */
	readonly limitRequests: number | undefined;
	readonly remainingRequests: number | undefined;
}

export function rateLimitOf(res: Response): RateLimitHeaders {
	return {
		limitTokens: headerInt(res, "x-ratelimit-limit-tokens"),
		remainingTokens: headerInt(res, "x-ratelimit-remaining-tokens"),
		resetTokens: header(res, "x-ratelimit-reset-tokens"),
		limitRequests: headerInt(res, "x-ratelimit-limit-requests"),
		remainingRequests: headerInt(res, "x-ratelimit-remaining-requests"),
	};
}

/** One window of the IETF `RateLimit-Policy` header, e.g. `"tpm";q=2000;w=60`. */
export interface Policy {
	/** `tpm`, `tph`, `tpd`, `rpm` for the user; `tenant-...` and `model-...` for shared windows. */
	readonly name: string;
	/** Tokens (requests for `rpm`) per window. */
	readonly quota: number;
	readonly windowSeconds: number;
}

/** Every window of a response's `RateLimit-Policy` header. */
export function policiesOf(res: Response): Policy[] {
	const value = header(res, "ratelimit-policy") ?? "";
	const out: Policy[] = [];
	for (const item of value.split(",")) {
		const m = /^\s*"([^"]+)";q=(\d+);w=(\d+)\s*$/.exec(item);
		if (m?.[1] === undefined) continue;
		out.push({ name: m[1], quota: Number(m[2]), windowSeconds: Number(m[3]) });
	}
	return out;
}

/** What an event stream held, and whether it had the shape the gateway promises. */
export interface SseStream {
	/** Every event was one `data: <JSON object>` line followed by a blank line. */
	readonly wellFormed: boolean;
	/** The last event was `data: [DONE]` and nothing followed it. */
	readonly done: boolean;
	/** Events before `[DONE]`, parsed. */
	readonly events: readonly Record<string, unknown>[];
	/** The usage event's counts (`include_usage`), if one arrived. */
	readonly usage: Usage | undefined;
	/** The streamed text, `choices[0].delta.content` joined. */
	readonly content: string;
	/** Why the stream is not well formed, for the log. */
	readonly problem: string | undefined;
}

/**
 * Parses a complete SSE body as relayed by the gateway: `data: {...}\n\n` events
 * ending with `data: [DONE]\n\n`. Comment lines (`: ...`) are allowed.
 */
export function parseSse(text: string): SseStream {
	const events: Record<string, unknown>[] = [];
	let usage: Usage | undefined;
	let content = "";
	let done = false;
	let problem: string | undefined;
	const normalized = text.replace(/\r\n/g, "\n");
	if (!normalized.endsWith("\n\n")) problem = "the body does not end with a blank line";
	const blocks = normalized.split("\n\n");
	for (const block of blocks) {
		if (block === "") continue;
		const lines = block.split("\n").filter((line) => !line.startsWith(":"));
		if (lines.length === 0) continue;
		if (done) {
			if (problem === undefined) problem = "an event follows data: [DONE]";
			break;
		}
		const line = lines[0];
		if (lines.length !== 1 || line === undefined || !line.startsWith("data: ")) {
			if (problem === undefined)
				problem = `not one data line: ${JSON.stringify(block.slice(0, 120))}`;
			continue;
		}
		const data = line.slice("data: ".length);
		if (data === "[DONE]") {
			done = true;
			continue;
		}
		const event = parseJson(data);
		if (!isRecord(event)) {
			if (problem === undefined)
				problem = `not a JSON object: ${JSON.stringify(data.slice(0, 120))}`;
			continue;
		}
		events.push(event);
		usage = usageOf(event.usage) ?? usage;
		const choices = event.choices;
		const first: unknown = Array.isArray(choices) ? choices[0] : undefined;
		if (isRecord(first) && isRecord(first.delta) && typeof first.delta.content === "string") {
			content += first.delta.content;
		}
	}
	if (!done && problem === undefined) problem = "no data: [DONE] at the end";
	return { wellFormed: problem === undefined, done, events, usage, content, problem };
}

/** Seconds of a k6 duration string such as `30s`, `2m`, `1h30m` or `500ms`. */
export function durationSeconds(value: string): number {
	const units: Record<string, number> = { h: 3600, m: 60, s: 1, ms: 0.001 };
	const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
	let seconds = 0;
	let consumed = 0;
	for (let m = re.exec(value); m !== null; m = re.exec(value)) {
		seconds += Number(m[1]) * (units[m[2] ?? ""] ?? 0);
		consumed += m[0].length;
	}
	if (consumed === 0 || consumed !== value.length) {
		throw new Error(`not a duration: "${value}" (expected e.g. 30s, 2m, 1h30m)`);
	}
	return seconds;
}

/** A duration from the environment, validated at load time. */
export function envDuration(name: string, fallback: string): string {
	const value = env(name, fallback);
	durationSeconds(value);
	return value;
}

/**
 * Checks that the gateway is ready and serves `MODEL`; for `setup()`, so a
 * misconfigured run stops before it starts loading the cluster.
 */
export function assertGatewayReady(): void {
	const ready = http.get(url("/health/ready"), { tags: { endpoint: "setup" } });
	if (ready.status !== 200) {
		throw new Error(`${url("/health/ready")} answered ${ready.status}: ${bodyText(ready)}`);
	}
	const models = http.get(url("/v1/models"), {
		headers: requestHeaders("k6-setup"),
		tags: { endpoint: "setup" },
	});
	const list = parseJson(bodyText(models));
	const ids =
		isRecord(list) && Array.isArray(list.data)
			? list.data.map((m: unknown) => (isRecord(m) ? m.id : undefined))
			: [];
	if (models.status !== 200 || !ids.includes(MODEL)) {
		throw new Error(`${url("/v1/models")} answered ${models.status} without model ${MODEL}`);
	}
}

/** Trend statistics printed in the end-of-test summary. */
export const SUMMARY_TREND_STATS = ["avg", "min", "med", "p(90)", "p(95)", "p(99)", "max"];

/**
 * For `setup()` of the load scripts: one probe request, then a warning for every
 * window (from `RateLimit-Policy`) whose sustained rate the planned load would
 * exceed, since those 429s would be the budget's doing, not the gateway's.
 */
export function warnAboutBudgets(targetRps: number, users: number, maxTokens: number): void {
	const res = postChat({ maxTokens }, "k6-setup", { endpoint: "setup" });
	const tokens = chatCompletionOf(res)?.usage?.totalTokens;
	if (res.status !== 200 || tokens === undefined) {
		console.warn(`probe chat completion answered ${res.status}: ${bodyText(res).slice(0, 300)}`);
		return;
	}
	// With an API key every request spends the key's one budget.
	const perUser = API_KEY === "" ? targetRps / users : targetRps;
	for (const p of policiesOf(res)) {
		const shared = p.name.startsWith("model-") || p.name.startsWith("tenant-");
		const rps = shared ? targetRps : perUser;
		const requests = p.name.endsWith("rpm");
		const need = requests ? rps : rps * tokens;
		const allowed = p.quota / p.windowSeconds;
		if (need <= allowed) continue;
		console.warn(
			`window "${p.name}" (${p.quota} per ${p.windowSeconds}s, ${allowed.toFixed(1)}/s sustained): ` +
				`${targetRps} req/s would spend ${need.toFixed(1)} ${requests ? "requests" : "tokens"}/s ` +
				`per ${shared ? p.name.split("-")[0] : "user"}; expect 429s. ` +
				"Raise USERS or use an API key with larger limits.",
		);
	}
}
