/**
 * Reads vLLM's server-sent events as they are relayed, without re-splitting the
 * whole stream per chunk: only the unfinished tail of the previous chunk is kept.
 *
 * It finds the usage event (`stream_options.include_usage`), optionally removes
 * it when the client did not ask for it, and keeps the streamed events so that
 * the generated text can be counted when no usage arrives (an upstream that
 * ignores include_usage, or a stream cut short by a disconnect).
 */

export interface Usage {
	readonly promptTokens: number;
	readonly completionTokens: number;
}

const LF_LF = Buffer.from("\n\n");
const CRLF_CRLF = Buffer.from("\r\n\r\n");
const USAGE_KEY = Buffer.from('"usage"');
const EMPTY_CHOICES = Buffer.from('"choices":[]');
const DONE = Buffer.from("data: [DONE]");
/** Past this many retained bytes the reader stops keeping events for the fallback count. */
const MAX_RETAINED_BYTES = 8 * 1024 * 1024;

/** Parses an OpenAI `usage` object; undefined when it is not one. */
export function usageFrom(value: unknown): Usage | undefined {
	if (value === null || typeof value !== "object") return undefined;
	const u = value as Record<string, unknown>;
	const prompt = u.prompt_tokens;
	const completion = u.completion_tokens;
	if (typeof prompt !== "number" || !Number.isFinite(prompt) || prompt < 0) return undefined;
	const completionTokens =
		typeof completion === "number" && Number.isFinite(completion) && completion >= 0
			? completion
			: 0;
	return { promptTokens: Math.round(prompt), completionTokens: Math.round(completionTokens) };
}

/**
 * Where the event starting at `from` ends, and the next begins. `crlf` says
 * whether `buf` holds a carriage return at or after `from` at all: vLLM ends
 * its events with `\n\n`, and then only that is looked for.
 */
function eventEnd(
	buf: Buffer,
	from: number,
	crlf: boolean,
): { end: number; next: number } | undefined {
	const a = buf.indexOf(LF_LF, from);
	if (!crlf) return a < 0 ? undefined : { end: a, next: a + 2 };
	const b = buf.indexOf(CRLF_CRLF, from);
	if (a < 0 && b < 0) return undefined;
	if (b < 0 || (a >= 0 && a < b)) return { end: a, next: a + 2 };
	return { end: b, next: b + 4 };
}

/** Whether `buf` begins with `prefix`. */
function startsWith(buf: Buffer, prefix: Buffer): boolean {
	if (buf.length < prefix.length) return false;
	for (let i = 0; i < prefix.length; i++) if (buf[i] !== prefix[i]) return false;
	return true;
}

/** The JSON text of an event's `data:` lines. */
function dataOf(event: Buffer): string {
	const text = event.toString("utf8");
	let out = "";
	for (const line of text.split(/\r?\n/)) {
		if (line.startsWith("data:")) out += line.slice(line.charAt(5) === " " ? 6 : 5);
	}
	return out;
}

function hasUsageObject(event: Buffer): boolean {
	let at = event.indexOf(USAGE_KEY);
	while (at >= 0) {
		let i = at + USAGE_KEY.length;
		while (event[i] === 0x20) i++;
		if (event[i] === 0x3a /* : */) {
			i++;
			while (event[i] === 0x20) i++;
			if (event[i] === 0x7b /* { */) return true;
		}
		at = event.indexOf(USAGE_KEY, at + 1);
	}
	return false;
}

export class SseUsageReader {
	/** Bytes of the unfinished event at the end of what was read so far. */
	private pendingParts: Buffer[] = [];
	private pendingBytes = 0;
	private usageEvent: Buffer | undefined;
	private retained: Buffer[] = [];
	private retainedBytes = 0;
	private retaining = true;
	/** Events with generated output seen, for when nothing else can be counted. */
	eventsSeen = 0;
	sawDone = false;

	/**
	 * @param stripUsageEvent remove the final usage event (`"choices": []`) that
	 *   the gateway asked for on the client's behalf.
	 */
	constructor(private readonly stripUsageEvent: boolean) {}

	/** Takes one upstream chunk; returns what to send to the client now. */
	feed(chunk: Uint8Array): Uint8Array[] {
		if (chunk.byteLength === 0) return [];
		const view = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
		if (this.pendingParts.length > 0 && !this.completesEvent(view)) {
			// Still inside one long event: keep the piece, search nothing twice.
			this.pendingParts.push(Buffer.from(view));
			this.pendingBytes += view.length;
			return this.stripUsageEvent ? [] : chunk.byteLength > 0 ? [chunk] : [];
		}
		const buf =
			this.pendingParts.length === 0
				? view
				: Buffer.concat([...this.pendingParts, view], this.pendingBytes + view.length);
		this.pendingParts = [];
		this.pendingBytes = 0;
		const out: Uint8Array[] = [];
		let start = 0;
		let flushFrom = 0;
		const crlf = buf.indexOf(0x0d) >= 0;
		for (;;) {
			const found = eventEnd(buf, start, crlf);
			if (found === undefined) break;
			const event = buf.subarray(start, found.end);
			if (this.inspect(event)) {
				// Drop this event (and its blank line) from what the client gets.
				if (start > flushFrom) out.push(buf.subarray(flushFrom, start));
				flushFrom = found.next;
			}
			start = found.next;
		}
		if (start < buf.length) {
			const rest = Buffer.from(buf.subarray(start));
			this.pendingParts.push(rest);
			this.pendingBytes = rest.length;
		}
		if (!this.stripUsageEvent) {
			// Relay the chunk exactly as it came; the scan above only observes.
			return chunk.byteLength > 0 ? [chunk] : [];
		}
		if (start > flushFrom) out.push(buf.subarray(flushFrom, start));
		return out;
	}

	/** Whether `next` holds an event separator, also one split across the previous piece. */
	private completesEvent(next: Buffer): boolean {
		if (next.indexOf(LF_LF) >= 0 || next.indexOf(CRLF_CRLF) >= 0) return true;
		// The last three bytes read so far, across pieces however short.
		const tail: Buffer[] = [];
		let need = 3;
		for (let i = this.pendingParts.length - 1; i >= 0 && need > 0; i--) {
			const part = this.pendingParts[i];
			if (part === undefined) continue;
			const take = part.subarray(Math.max(0, part.length - need));
			tail.unshift(take);
			need -= take.length;
		}
		if (tail.length === 0) return false;
		const seam = Buffer.concat([...tail, next.subarray(0, Math.min(3, next.length))]);
		return seam.indexOf(LF_LF) >= 0 || seam.indexOf(CRLF_CRLF) >= 0;
	}

	/** Called when the upstream ends; returns any unterminated final event. */
	end(): Uint8Array[] {
		const tail = Buffer.concat(this.pendingParts, this.pendingBytes);
		this.pendingParts = [];
		this.pendingBytes = 0;
		if (tail.length === 0) return [];
		// Whole events first (when pieces came faster than their separators were seen), then the rest.
		const out: Uint8Array[] = [];
		let start = 0;
		for (;;) {
			const found = eventEnd(tail, start, true);
			if (found === undefined) break;
			if (!this.inspect(tail.subarray(start, found.end))) {
				out.push(tail.subarray(start, found.next));
			}
			start = found.next;
		}
		if (start < tail.length && !this.inspect(tail.subarray(start))) out.push(tail.subarray(start));
		return this.stripUsageEvent ? out : [];
	}

	/** Records what an event says; true when it must be dropped. */
	private inspect(event: Buffer): boolean {
		if (event.length === 0) return false;
		if (startsWith(event, DONE)) {
			this.sawDone = true;
			return false;
		}
		if (hasUsageObject(event)) {
			this.usageEvent = Buffer.from(event);
			if (this.stripUsageEvent && event.indexOf(EMPTY_CHOICES) >= 0) return true;
		}
		this.eventsSeen++;
		if (this.retaining) {
			this.retainedBytes += event.length;
			if (this.retainedBytes > MAX_RETAINED_BYTES) {
				this.retaining = false;
				this.retained = [];
			} else {
				// A copy: the chunk's memory belongs to the stream it was relayed on.
				this.retained.push(Buffer.from(event));
			}
		}
		return false;
	}

	/** The usage of the last usage-bearing event, if any. */
	usage(): Usage | undefined {
		if (this.usageEvent === undefined) return undefined;
		try {
			const parsed: unknown = JSON.parse(dataOf(this.usageEvent));
			if (parsed !== null && typeof parsed === "object" && "usage" in parsed) {
				return usageFrom(parsed.usage);
			}
		} catch {
			return undefined;
		}
		return undefined;
	}

	/**
	 * The text generated so far, per choice, from the retained events; undefined
	 * when the stream was too large to keep.
	 */
	generatedText(): string | undefined {
		if (!this.retaining) return undefined;
		let text = "";
		for (const event of this.retained) {
			let parsed: unknown;
			try {
				parsed = JSON.parse(dataOf(event));
			} catch {
				continue;
			}
			text += textOfChunk(parsed);
		}
		return text;
	}
}

/** Generated text in one chat or text completion chunk (all choices). */
export function textOfChunk(chunk: unknown): string {
	if (chunk === null || typeof chunk !== "object" || !("choices" in chunk)) return "";
	const choices = chunk.choices;
	if (!Array.isArray(choices)) return "";
	let text = "";
	for (const choice of choices) {
		if (choice === null || typeof choice !== "object") continue;
		const c = choice as Record<string, unknown>;
		if (typeof c.text === "string") text += c.text;
		const delta = (c.delta ?? c.message) as Record<string, unknown> | undefined;
		if (delta !== null && typeof delta === "object") {
			if (typeof delta.content === "string") text += delta.content;
			if (typeof delta.reasoning_content === "string") text += delta.reasoning_content;
			if (Array.isArray(delta.tool_calls)) text += JSON.stringify(delta.tool_calls);
		}
	}
	return text;
}
