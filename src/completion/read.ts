import type { Principal } from "../auth/principal.ts";
import { isPlainObject } from "../config/loader.ts";
import { bodyTooLarge, invalidRequest } from "../errors.ts";
import { ChatCompletionRequest, CompletionRequest, parseBody } from "../openai.ts";
import type { Exchange, ParsedRequest } from "./exchange.ts";

/** Deeper JSON than this is refused before it is validated. */
const MAX_JSON_DEPTH = 32;

export interface ReadLimits {
	readonly maxBodyBytes: number;
	readonly maxMessages: number;
}

/** What the read stage gives the rest: who is calling, and the validated body. */
export interface ReadResult {
	readonly principal: Principal;
	readonly parsed: ParsedRequest;
	/** Characters of the body as received (a long one is counted a slice at a time). */
	readonly bodyChars: number;
}

/**
 * Read: identify the caller, read the body within the size limit, parse the
 * JSON (depth-checked) and validate it against the endpoint's schema. The
 * seed's path names the model, which replaces the body's.
 */
export async function readRequest(
	x: Exchange,
	authenticate: (request: Request) => Promise<Principal>,
	limits: ReadLimits,
	/** Checked once the caller is known, before the body is read (a draining replica refuses). */
	admitting: () => void,
): Promise<ReadResult> {
	const principal = await authenticate(x.request);
	x.caller = principal;
	x.identifiedAt = performance.now();
	admitting();
	const text = await readBodyText(x.request, limits.maxBodyBytes);
	x.clock?.begin("read");
	const json = parseJson(text);
	if (isPlainObject(json)) {
		if (x.pathModel !== undefined) json.model = x.pathModel;
		if (typeof json.model === "string") x.modelName = json.model;
	} else if (x.pathModel !== undefined) {
		x.modelName = x.pathModel;
	}
	const parsed: ParsedRequest =
		x.kind === "chat"
			? { kind: "chat", body: parseBody(ChatCompletionRequest, json) }
			: { kind: "completion", body: parseBody(CompletionRequest, json) };
	if (parsed.kind === "chat" && parsed.body.messages.length > limits.maxMessages) {
		throw invalidRequest(
			`Too many messages: at most ${limits.maxMessages} per request.`,
			"messages",
			"too_many_messages",
		);
	}
	x.clock?.end();
	return { principal, parsed, bodyChars: text.length };
}

/**
 * Reads the body as text, refusing more than `limitBytes` (413) without
 * reading past the limit.
 */
export async function readBodyText(request: Request, limitBytes: number): Promise<string> {
	const declared = request.headers.get("content-length");
	if (declared !== null && Number(declared) > limitBytes) throw bodyTooLarge(limitBytes);
	if (request.body === null) return "";
	// A declared length is what the server reads, and it was checked above.
	if (declared !== null) return request.text();
	const reader = request.body.getReader();
	const parts: Uint8Array[] = [];
	let total = 0;
	for (;;) {
		const { done, value } = await reader.read();
		if (done) break;
		total += value.byteLength;
		if (total > limitBytes) {
			await reader.cancel().catch(() => {});
			throw bodyTooLarge(limitBytes);
		}
		parts.push(value);
	}
	return Buffer.concat(parts).toString("utf8");
}

/** Whether a parsed value nests arrays/objects deeper than `max` (iteratively, no recursion). */
function tooDeep(value: unknown, max: number): boolean {
	const stack: [unknown, number][] = [[value, 1]];
	while (stack.length > 0) {
		const top = stack.pop();
		if (top === undefined) break;
		const [v, depth] = top;
		if (v === null || typeof v !== "object") continue;
		if (depth > max) return true;
		for (const child of Array.isArray(v) ? v : Object.values(v)) {
			if (child !== null && typeof child === "object") stack.push([child, depth + 1]);
		}
	}
	return false;
}

/** Whether `text` has more than `max` opening brackets in all (then it may nest deeper than `max`). */
function manyBrackets(text: string, max: number): boolean {
	let n = 0;
	for (let i = text.indexOf("{"); i >= 0; i = text.indexOf("{", i + 1)) if (++n > max) return true;
	for (let i = text.indexOf("["); i >= 0; i = text.indexOf("[", i + 1)) if (++n > max) return true;
	return false;
}

function parseJson(text: string): unknown {
	if (text.trim() === "") {
		throw invalidRequest("The request body is empty; send a JSON object.", null, "invalid_json");
	}
	let value: unknown;
	try {
		value = JSON.parse(text);
	} catch (err) {
		const detail = err instanceof Error ? err.message : String(err);
		throw invalidRequest(
			`We could not parse the JSON body of your request (${detail}).`,
			null,
			"invalid_json",
		);
	}
	if (manyBrackets(text, MAX_JSON_DEPTH) && tooDeep(value, MAX_JSON_DEPTH)) {
		throw invalidRequest(
			`The JSON body nests deeper than ${MAX_JSON_DEPTH} levels.`,
			null,
			"invalid_json",
		);
	}
	return value;
}
