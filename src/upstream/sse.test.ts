import { describe, expect, it } from "bun:test";
import fc from "fast-check";
import { SseUsageReader, type Usage } from "./sse.ts";

const encoder = new TextEncoder();

type Sep = "\n\n" | "\r\n\r\n";

interface StreamSpec {
	readonly contents: readonly string[];
	/** Final usage event (`"choices":[]`) after the last chunk. */
	readonly usage?: { readonly prompt: number; readonly completion: number };
	/** vLLM continuous_usage_stats: usage on every content chunk too. */
	readonly continuous?: boolean;
	readonly sep?: Sep;
	/** Leave the last event ([DONE], or the usage event when there is no [DONE]) unterminated. */
	readonly unterminated?: boolean;
	readonly done?: boolean;
}

interface BuiltStream {
	readonly text: string;
	readonly bytes: Uint8Array;
	/** The usage event including its blank line, exactly as it appears in `text`. */
	readonly usageEvent: string | undefined;
}

const ID = "chatcmpl-5f1c0a3e9b7d4c2a8e6f";

function usageObject(prompt: number, completion: number) {
	return {
		prompt_tokens: prompt,
		total_tokens: prompt + completion,
		completion_tokens: completion,
	};
}

/** A stream in vLLM's /v1/chat/completions format (stream_options.include_usage). */
function vllmStream(spec: StreamSpec): BuiltStream {
	const sep = spec.sep ?? "\n\n";
	const events: string[] = [];
	const base = {
		id: ID,
		object: "chat.completion.chunk",
		created: 1_718_000_000,
		model: "llama2-7b",
	};
	const prompt = spec.usage?.prompt ?? 12;
	events.push(
		`data: ${JSON.stringify({
			...base,
			choices: [
				{
					index: 0,
					delta: { role: "assistant", content: "" },
					logprobs: null,
					finish_reason: null,
				},
			],
			...(spec.continuous ? { usage: usageObject(prompt, 0) } : {}),
		})}`,
	);
	spec.contents.forEach((content, i) => {
		events.push(
			`data: ${JSON.stringify({
				...base,
				choices: [{ index: 0, delta: { content }, logprobs: null, finish_reason: null }],
				...(spec.continuous ? { usage: usageObject(prompt, i + 1) } : {}),
			})}`,
		);
	});
	events.push(
		`data: ${JSON.stringify({
			...base,
			choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: "stop", stop_reason: null }],
			...(spec.continuous ? { usage: usageObject(prompt, spec.contents.length) } : {}),
		})}`,
	);
	let usageIndex = -1;
	if (spec.usage !== undefined) {
		usageIndex = events.length;
		events.push(
			`data: ${JSON.stringify({
				...base,
				choices: [],
				usage: usageObject(spec.usage.prompt, spec.usage.completion),
			})}`,
		);
	}
	if (spec.done ?? true) events.push("data: [DONE]");
	const withSep = events.map((e, i) =>
		spec.unterminated && i === events.length - 1 ? e : `${e}${sep}`,
	);
	const text = withSep.join("");
	return {
		text,
		bytes: encoder.encode(text),
		usageEvent: usageIndex >= 0 ? withSep[usageIndex] : undefined,
	};
}

interface ReadResult {
	readonly out: Buffer;
	readonly usage: Usage | undefined;
	readonly text: string | undefined;
	readonly sawDone: boolean;
	readonly eventsSeen: number;
}

/** Feeds fresh copies of the chunks (as a network read would give), then end(). */
function read(strip: boolean, chunks: readonly Uint8Array[]): ReadResult {
	const reader = new SseUsageReader(strip);
	const out: Buffer[] = [];
	for (const chunk of chunks) {
		for (const piece of reader.feed(chunk.slice())) out.push(Buffer.from(piece));
	}
	for (const piece of reader.end()) out.push(Buffer.from(piece));
	return {
		out: Buffer.concat(out),
		usage: reader.usage(),
		text: reader.generatedText(),
		sawDone: reader.sawDone,
		eventsSeen: reader.eventsSeen,
	};
}

/** The stream cut at the given byte offsets (duplicates give empty chunks). */
function cut(bytes: Uint8Array, offsets: readonly number[]): Uint8Array[] {
	const sorted = [...offsets].sort((a, b) => a - b);
	const chunks: Uint8Array[] = [];
	let from = 0;
	for (const at of sorted) {
		chunks.push(bytes.subarray(from, at));
		from = at;
	}
	chunks.push(bytes.subarray(from));
	return chunks;
}

function without(text: string, part: string | undefined): Buffer {
	if (part === undefined) throw new Error("no usage event in the fixture");
	const at = text.indexOf(part);
	expect(at).toBeGreaterThanOrEqual(0);
	expect(text.indexOf(part, at + 1)).toBe(-1);
	return Buffer.from(encoder.encode(text.slice(0, at) + text.slice(at + part.length)));
}

const KOREAN = ["안녕하세요", ", 세계", "! ", "토큰 ", "제한 게이트웨이", " 🙂"];
const SEED_USAGE = { prompt: 12, completion: 7 };

describe("SseUsageReader on a vLLM chat stream with a final usage event", () => {
	const stream = vllmStream({ contents: KOREAN, usage: SEED_USAGE });

	it("relays the stream byte-identically when the usage event is not stripped, and reads usage", () => {
		const r = read(false, [stream.bytes]);
		expect(r.out).toEqual(Buffer.from(stream.bytes));
		expect(r.usage).toEqual({ promptTokens: 12, completionTokens: 7 });
		expect(r.sawDone).toBe(true);
		expect(r.text).toBe(KOREAN.join(""));
	});

	it("removes exactly the usage event and its blank line when stripping, and still reads usage", () => {
		const r = read(true, [stream.bytes]);
		expect(r.out).toEqual(without(stream.text, stream.usageEvent));
		expect(r.out.toString("utf8")).not.toContain('"usage"');
		expect(
			r.out
				.toString("utf8")
				.endsWith('"finish_reason":"stop","stop_reason":null}]}\n\ndata: [DONE]\n\n'),
		).toBe(true);
		expect(r.usage).toEqual({ promptTokens: 12, completionTokens: 7 });
		expect(r.sawDone).toBe(true);
		expect(r.text).toBe(KOREAN.join(""));
	});

	it("keeps the usage event when the client asked for it, even when it is the only event", () => {
		const only = `data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n`;
		expect(read(false, [encoder.encode(only)]).out.toString("utf8")).toBe(only);
		const stripped = read(true, [encoder.encode(only)]);
		expect(stripped.out.length).toBe(0);
		expect(stripped.usage).toEqual({ promptTokens: 3, completionTokens: 4 });
	});

	it("gives the same bytes and the same usage however the stream is split (property)", () => {
		const specArb = fc.record({
			contents: fc.oneof(
				fc.constant(KOREAN),
				fc.array(
					fc.oneof(fc.constantFrom(...KOREAN), fc.string({ unit: "grapheme", maxLength: 6 })),
					{
						maxLength: 8,
					},
				),
			),
			usage: fc.option(
				fc.record({
					prompt: fc.integer({ min: 0, max: 100_000 }),
					completion: fc.integer({ min: 0, max: 100_000 }),
				}),
				{ nil: undefined },
			),
			continuous: fc.boolean(),
			sep: fc.constantFrom<Sep>("\n\n", "\r\n\r\n"),
			unterminated: fc.boolean(),
			done: fc.boolean(),
		});
		fc.assert(
			fc.property(
				specArb,
				fc.array(fc.nat(), { maxLength: 24 }),
				fc.boolean(),
				(spec, rawCuts, strip) => {
					const stream = vllmStream(spec);
					const cuts = rawCuts.map((c) => c % (stream.bytes.length + 1));
					const whole = read(strip, [stream.bytes]);
					const split = read(strip, cut(stream.bytes, cuts));
					expect(split.out).toEqual(whole.out);
					expect(split.usage).toEqual(whole.usage);
					expect(split.text).toEqual(whole.text);
					expect(split.sawDone).toBe(whole.sawDone);
					expect(split.eventsSeen).toBe(whole.eventsSeen);
					// And "whole" is itself right.
					if (!strip || stream.usageEvent === undefined) {
						expect(whole.out).toEqual(Buffer.from(stream.bytes));
					} else {
						expect(whole.out).toEqual(without(stream.text, stream.usageEvent));
					}
					expect(whole.text).toBe(spec.contents.join(""));
					const last =
						spec.usage ??
						(spec.continuous ? { prompt: 12, completion: spec.contents.length } : undefined);
					expect(whole.usage).toEqual(
						last === undefined
							? undefined
							: { promptTokens: last.prompt, completionTokens: last.completion },
					);
					expect(whole.sawDone).toBe(spec.done);
				},
			),
			{ numRuns: 200 },
		);
	});

	it("splits inside every multi-byte UTF-8 character without changing a byte", () => {
		const bytes = stream.bytes;
		for (let at = 1; at < bytes.length; at++) {
			const b = bytes[at];
			// A continuation byte: the cut falls inside a character.
			if (b === undefined || (b & 0xc0) !== 0x80) continue;
			for (const strip of [false, true]) {
				const r = read(strip, [bytes.subarray(0, at), bytes.subarray(at)]);
				const want = strip ? without(stream.text, stream.usageEvent) : Buffer.from(bytes);
				if (!r.out.equals(want))
					throw new Error(`output differs when cut at byte ${at} (strip=${strip})`);
				expect(r.usage).toEqual({ promptTokens: 12, completionTokens: 7 });
			}
		}
	});

	it("relays one byte at a time identically", () => {
		const bytes = stream.bytes;
		const oneByOne = Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));
		const r = read(true, oneByOne);
		expect(r.out).toEqual(without(stream.text, stream.usageEvent));
		expect(r.usage).toEqual({ promptTokens: 12, completionTokens: 7 });
		expect(r.text).toBe(KOREAN.join(""));
	});
});

describe("SseUsageReader without a usage event", () => {
	it("has no usage, and generatedText() is the concatenated delta contents", () => {
		const stream = vllmStream({ contents: KOREAN });
		for (const strip of [false, true]) {
			const r = read(strip, [stream.bytes]);
			expect(r.usage).toBeUndefined();
			expect(r.text).toBe("안녕하세요, 세계! 토큰 제한 게이트웨이 🙂");
			expect(r.out).toEqual(Buffer.from(stream.bytes));
			// role chunk + 6 content chunks + finish chunk; [DONE] is not counted.
			expect(r.eventsSeen).toBe(8);
		}
	});

	it("collects the text of /v1/completions chunks (choices[].text) too", () => {
		const text = [
			`data: ${JSON.stringify({ id: "cmpl-1", object: "text_completion", choices: [{ index: 0, text: "Once" }] })}`,
			`data: ${JSON.stringify({ id: "cmpl-1", object: "text_completion", choices: [{ index: 0, text: " upon" }] })}`,
			"data: [DONE]",
			"",
		].join("\n\n");
		expect(read(false, [encoder.encode(text)]).text).toBe("Once upon");
	});

	it('does not take "usage": null on ordinary chunks for a usage event, nor strip them', () => {
		const text = `data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\ndata: {"choices":[],"usage":null}\n\ndata: [DONE]\n\n`;
		const r = read(true, [encoder.encode(text)]);
		expect(r.usage).toBeUndefined();
		expect(r.out.toString("utf8")).toBe(text);
		expect(r.text).toBe("a");
	});
});

describe("SseUsageReader framing", () => {
	it("handles \\r\\n\\r\\n separators, stripping the usage event with its \\r\\n\\r\\n", () => {
		const stream = vllmStream({
			contents: ["a", "b"],
			usage: { prompt: 5, completion: 2 },
			sep: "\r\n\r\n",
		});
		const kept = read(false, [stream.bytes]);
		expect(kept.out).toEqual(Buffer.from(stream.bytes));
		expect(kept.usage).toEqual({ promptTokens: 5, completionTokens: 2 });
		expect(kept.text).toBe("ab");
		const stripped = read(true, [stream.bytes]);
		expect(stripped.out).toEqual(without(stream.text, stream.usageEvent));
		expect(stripped.out.toString("utf8")).toEndWith(
			'"stop_reason":null}]}\r\n\r\ndata: [DONE]\r\n\r\n',
		);
		expect(stripped.usage).toEqual({ promptTokens: 5, completionTokens: 2 });
	});

	it("reads multi-line data events and CRLF line ends within an event", () => {
		const text =
			'data: {"choices":[{"delta":{"content":"x"}}],\r\ndata: "usage":{"prompt_tokens":9,"completion_tokens":1}}\r\n\r\n';
		const r = read(false, [encoder.encode(text)]);
		expect(r.usage).toEqual({ promptTokens: 9, completionTokens: 1 });
		expect(r.text).toBe("x");
	});

	it("handles an unterminated final [DONE] in end(): relayed once, counted as done", () => {
		const stream = vllmStream({ contents: ["hi"], usage: SEED_USAGE, unterminated: true });
		expect(stream.text.endsWith("data: [DONE]")).toBe(true);
		const kept = read(false, [stream.bytes]);
		expect(kept.out).toEqual(Buffer.from(stream.bytes)); // not duplicated by end()
		expect(kept.sawDone).toBe(true);
		const stripped = read(true, [stream.bytes]);
		expect(stripped.out).toEqual(without(stream.text, stream.usageEvent));
		expect(stripped.out.toString("utf8")).toEndWith("data: [DONE]");
		expect(stripped.sawDone).toBe(true);
		expect(stripped.usage).toEqual({ promptTokens: 12, completionTokens: 7 });
	});

	it("reads an unterminated final usage event in end(), dropping it only when stripping", () => {
		const stream = vllmStream({
			contents: ["hi"],
			usage: SEED_USAGE,
			unterminated: true,
			done: false,
		});
		const usageEvent = stream.usageEvent;
		expect(usageEvent !== undefined && stream.text.endsWith(usageEvent)).toBe(true);
		const kept = read(false, [stream.bytes]);
		expect(kept.out).toEqual(Buffer.from(stream.bytes));
		expect(kept.usage).toEqual({ promptTokens: 12, completionTokens: 7 });
		expect(kept.sawDone).toBe(false);
		const stripped = read(true, [stream.bytes]);
		expect(stripped.out).toEqual(without(stream.text, usageEvent));
		expect(stripped.usage).toEqual({ promptTokens: 12, completionTokens: 7 });
	});

	it("counts the text of an unterminated final content event (a stream cut short)", () => {
		const text =
			'data: {"choices":[{"delta":{"content":"one"}}]}\n\ndata: {"choices":[{"delta":{"content":" two"}}]}';
		const reader = new SseUsageReader(true);
		const first = reader.feed(encoder.encode(text));
		expect(Buffer.concat(first).toString("utf8")).toBe(
			'data: {"choices":[{"delta":{"content":"one"}}]}\n\n',
		);
		const rest = reader.end();
		expect(Buffer.concat(rest).toString("utf8")).toBe(
			'data: {"choices":[{"delta":{"content":" two"}}]}',
		);
		expect(reader.generatedText()).toBe("one two");
		expect(reader.end()).toEqual([]); // nothing left twice
	});
});

describe("SseUsageReader with continuous usage", () => {
	it("reports the last usage when every event carries usage", () => {
		const stream = vllmStream({ contents: ["a", "b", "c"], continuous: true });
		const r = read(true, [stream.bytes]);
		expect(r.usage).toEqual({ promptTokens: 12, completionTokens: 3 });
		// Usage on chunks with choices is not the final usage event: nothing is stripped.
		expect(r.out).toEqual(Buffer.from(stream.bytes));
	});

	it("prefers the final usage event over the running ones, and strips only it", () => {
		const stream = vllmStream({
			contents: ["a", "b", "c"],
			continuous: true,
			usage: { prompt: 12, completion: 4 },
		});
		const r = read(true, [stream.bytes]);
		expect(r.usage).toEqual({ promptTokens: 12, completionTokens: 4 });
		expect(r.out).toEqual(without(stream.text, stream.usageEvent));
		expect(r.text).toBe("abc");
	});
});

describe("SseUsageReader robustness", () => {
	it("relays a huge single event (9 MB) intact, whole or in 1 MB chunks, and stops retaining it", () => {
		const content = "가".repeat(3_000_000); // 9,000,000 bytes of UTF-8
		const usageEvent =
			'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":3000000}}\n\n';
		const text = `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content } }] })}\n\n${usageEvent}data: [DONE]\n\n`;
		const bytes = encoder.encode(text);
		const chunks: Uint8Array[] = [];
		for (let i = 0; i < bytes.length; i += 1_000_000) chunks.push(bytes.subarray(i, i + 1_000_000));
		for (const input of [[bytes], chunks]) {
			const kept = read(false, input);
			expect(kept.out.equals(Buffer.from(bytes))).toBe(true);
			expect(kept.usage).toEqual({ promptTokens: 1, completionTokens: 3_000_000 });
			// Too large to keep for a fallback count: says so rather than undercounting.
			expect(kept.text).toBeUndefined();
			const stripped = read(true, input);
			expect(stripped.out.equals(without(text, usageEvent))).toBe(true);
			expect(stripped.usage).toEqual({ promptTokens: 1, completionTokens: 3_000_000 });
		}
	});

	it("keeps the text of a large (1 MB) event split in 64 KB chunks", () => {
		const content = "토".repeat(350_000);
		const bytes = encoder.encode(
			`data: ${JSON.stringify({ choices: [{ delta: { content } }] })}\n\n`,
		);
		const chunks: Uint8Array[] = [];
		for (let i = 0; i < bytes.length; i += 65_536) chunks.push(bytes.subarray(i, i + 65_536));
		const r = read(true, chunks);
		expect(r.out.equals(Buffer.from(bytes))).toBe(true);
		expect(r.text).toBe(content);
	});

	it("never throws on invalid UTF-8 and relays it unchanged", () => {
		const bad = Buffer.concat([
			Buffer.from('data: {"choices":[{"delta":{"content":"'),
			Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82, 0xed, 0xa0, 0x80]),
			Buffer.from(
				'"}}]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":\xff}}\n\n',
			),
			Buffer.from([0x80, 0x80, 0x0a, 0x0a, 0xf0, 0x9f]),
		]);
		for (const strip of [false, true]) {
			const r = read(strip, [bad]);
			if (!strip) expect(r.out.equals(bad)).toBe(true);
			expect(typeof r.text).toBe("string");
		}
	});

	it("sees a separator split across an empty piece, so no event is held back or dropped with the usage event", () => {
		// Found by the property below: "\r" | "" | "\n\r\n" once hid the separator, and the
		// held-back events went out as one, dropped whole for its usage object.
		const bytes = encoder.encode('{"choices":[]}\r\n\r\ndata: {"usage":{"prompt_tokens":1}');
		const at = bytes.indexOf(0x0d);
		for (const strip of [true, false]) {
			const whole = read(strip, [bytes]);
			const split = read(strip, [
				bytes.subarray(0, at + 1),
				bytes.subarray(at + 1, at + 1),
				bytes.subarray(at + 1),
			]);
			expect(split.out).toEqual(whole.out);
			expect(whole.out.length).toBeGreaterThan(0);
		}
	});

	it("never throws on arbitrary bytes split anywhere, and relays them unchanged when not stripping (property)", () => {
		const noise = fc.uint8Array({ maxLength: 300 });
		const sseish = fc
			.array(
				fc.oneof(
					fc.constantFrom(
						"data: ",
						"\n\n",
						"\r\n\r\n",
						"\n",
						'"usage":{',
						'"choices":[]',
						"data: [DONE]",
						'{"prompt_tokens":1}',
						"}",
					),
					fc.string({ unit: "binary", maxLength: 10 }),
				),
				{ maxLength: 30 },
			)
			.map((parts) => encoder.encode(parts.join("")));
		fc.assert(
			fc.property(
				fc.oneof(noise, sseish),
				fc.array(fc.nat(), { maxLength: 10 }),
				fc.boolean(),
				(bytes, rawCuts, strip) => {
					const cuts = rawCuts.map((c) => c % (bytes.length + 1));
					const whole = read(strip, [bytes]);
					const split = read(strip, cut(bytes, cuts));
					expect(split.out).toEqual(whole.out);
					expect(split.usage).toEqual(whole.usage);
					if (!strip) expect(whole.out).toEqual(Buffer.from(bytes));
					else expect(whole.out.length).toBeLessThanOrEqual(bytes.length);
				},
			),
			{ numRuns: 200 },
		);
	});
});
