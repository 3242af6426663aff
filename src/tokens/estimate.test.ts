import { beforeAll, describe, expect, it } from "bun:test";
import { get_encoding } from "@dqbd/tiktoken";
import { countTokens } from "gpt-tokenizer/encoding/cl100k_base";
import { CHAT_TEMPLATES } from "../config/schema.ts";
import { countBounded, MAX_RUN, TiktokenCounter } from "./counter.ts";
import {
	chatPromptParts,
	chatPromptTokens,
	completionPromptParts,
	completionPromptTokens,
	estimate,
	rawPromptTokens,
	scaled,
} from "./estimate.ts";
import { CHAT_FRAMINGS } from "./framing.ts";

let cl100k: TiktokenCounter;
let o200k: TiktokenCounter;

beforeAll(async () => {
	cl100k = await TiktokenCounter.load("cl100k_base");
	o200k = await TiktokenCounter.load("o200k_base");
});

describe("token counting", () => {
	it("counts cl100k tokens as tiktoken does", () => {
		expect(cl100k.count("hello world")).toBe(2);
		expect(cl100k.count("")).toBe(0);
		// The encodings differ on the same text.
		const korean = "안녕하세요! 토큰 사용량을 제한합니다.";
		expect(cl100k.count(korean)).not.toBe(o200k.count(korean));
	});

	it("counts special-token text such as <|endoftext|> as ordinary text instead of rejecting it", () => {
		expect(() => cl100k.count("a <|endoftext|> b")).not.toThrow();
		expect(cl100k.count("<|endoftext|>")).toBeGreaterThan(1);
	});

	it("gives the same count from the cache as from a fresh count for long texts", async () => {
		const text = "The quick brown fox jumps over the lazy dog. ".repeat(10);
		const fresh = await TiktokenCounter.load("cl100k_base");
		const first = cl100k.count(text);
		expect(cl100k.count(text)).toBe(first);
		expect(first).toBe(fresh.count(text));
		expect(first).toBeGreaterThan(90);
	});

	it("does not count a resent chat history again, and keeps texts of the same length apart", async () => {
		const counter = await TiktokenCounter.load("cl100k_base");
		const long = (i: number) =>
			`Message ${i}: ${"tokens are spent per model and per user. ".repeat(4)}`;
		const history: { role: "user" | "assistant"; content: string }[] = [];
		let total = 0;
		for (let turn = 0; turn < 5; turn++) {
			history.push({ role: turn % 2 === 0 ? "user" : "assistant", content: long(turn) });
			total += chatPromptTokens(counter, { model: "m", messages: [...history] });
		}
		// Turn n resends n earlier messages: 0 + 1 + 2 + 3 + 4 hits.
		expect(counter.cacheHits).toBe(10);
		expect(total).toBe(
			[1, 2, 3, 4, 5].reduce(
				(n, k) => n + chatPromptTokens(cl100k, { model: "m", messages: history.slice(0, k) }),
				0,
			),
		);
		const a = "a ".repeat(60);
		const b = "ab".repeat(60);
		expect(a.length).toBe(b.length);
		expect(counter.count(a)).not.toBe(counter.count(b));
		expect(counter.count(b)).toBe(cl100k.count(b));
	});
});

describe("chat estimate (OpenAI's framing: 3 per message + role, 3 to prime the reply)", () => {
	it("counts one short user message as 8 tokens", () => {
		expect(
			chatPromptTokens(cl100k, { model: "m", messages: [{ role: "user", content: "hi" }] }),
		).toBe(8);
	});

	it("adds one token and the name for a named message", () => {
		const plain = chatPromptTokens(cl100k, {
			model: "m",
			messages: [{ role: "user", content: "hi" }],
		});
		const named = chatPromptTokens(cl100k, {
			model: "m",
			messages: [{ role: "user", content: "hi", name: "bob" }],
		});
		expect(named).toBe(plain + 1 + cl100k.count("bob"));
	});

	it("counts the text parts of array content and ignores null content", () => {
		const parts = chatPromptTokens(cl100k, {
			model: "m",
			messages: [
				{
					role: "user",
					content: [{ type: "text", text: "hello world" }, { type: "image_url" }],
				},
				{ role: "assistant", content: null },
			],
		});
		expect(parts).toBe(3 + (3 + 1 + 2) + (3 + cl100k.count("assistant")));
	});

	it("charges tool definitions and tool calls", () => {
		const base = chatPromptTokens(cl100k, {
			model: "m",
			messages: [{ role: "user", content: "hi" }],
		});
		const withTools = chatPromptTokens(cl100k, {
			model: "m",
			messages: [{ role: "user", content: "hi" }],
			tools: [
				{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } },
			],
		});
		expect(withTools).toBeGreaterThan(base + 5);
	});
});

describe("completion estimate", () => {
	it("counts text prompts and takes token-id prompts as they are", () => {
		expect(completionPromptTokens(cl100k, { model: "m", prompt: "hello world" })).toBe(2);
		expect(completionPromptTokens(cl100k, { model: "m", prompt: ["hello world", "hi"] })).toBe(3);
		expect(completionPromptTokens(cl100k, { model: "m", prompt: [1, 2, 3, 4] })).toBe(4);
		expect(completionPromptTokens(cl100k, { model: "m", prompt: [[1, 2], [3]] })).toBe(3);
	});
});

describe("completion allowance", () => {
	it("prefers max_completion_tokens, then max_tokens, then the model default", () => {
		expect(estimate(10, { max_completion_tokens: 7, max_tokens: 50 }, 64).maxCompletionTokens).toBe(
			7,
		);
		expect(estimate(10, { max_tokens: 50 }, 64).maxCompletionTokens).toBe(50);
		const defaulted = estimate(10, {}, 64);
		expect(defaulted.maxCompletionTokens).toBe(64);
		expect(defaulted.defaultedMaxTokens).toBe(true);
		expect(estimate(10, { max_tokens: null }, 64).defaultedMaxTokens).toBe(true);
	});

	it("reserves the allowance once per requested choice", () => {
		const e = estimate(8, { max_tokens: 10, n: 3 }, 64);
		expect(e.totalTokens).toBe(8 + 3 * 10);
	});
});

describe("prompt parts and calibration", () => {
	it("keeps token ids apart from counted text, and frames nothing for text completions", () => {
		const text = completionPromptParts(cl100k, { model: "m", prompt: ["hello world"] });
		expect({ content: text.content, exact: text.exact }).toEqual({ content: 2, exact: 0 });
		expect(text.framings.every((f) => f === 0)).toBe(true);
		const ids = completionPromptParts(cl100k, { model: "m", prompt: [[1, 2, 3]] });
		expect({ content: ids.content, exact: ids.exact }).toEqual({ content: 0, exact: 3 });
	});

	it("gives each chat template's framing; the model's own makes the plain count", () => {
		const body = {
			model: "m",
			messages: [
				{ role: "system" as const, content: "Be brief." },
				{ role: "user" as const, content: "hello world" },
			],
		};
		const parts = chatPromptParts(cl100k, body);
		expect(parts.framings).toHaveLength(CHAT_TEMPLATES.length);
		expect(rawPromptTokens(parts)).toBe(chatPromptTokens(cl100k, body));
		const llama2 = chatPromptParts(cl100k, body, CHAT_FRAMINGS.llama2);
		expect(CHAT_TEMPLATES[llama2.configured]).toBe("llama2");
		// Llama 2: the system prompt's <<SYS>> markers (13) and one [INST] turn (8).
		expect(llama2.framings[llama2.configured]).toBe(13 + 8);
		expect(rawPromptTokens(llama2)).toBe(chatPromptTokens(cl100k, body, CHAT_FRAMINGS.llama2));
	});

	it("admits what calibration applied, and records the parts it came from", () => {
		const parts = { content: 2, framings: [0, 0, 0, 0, 0], configured: 0, exact: 3 };
		const e = estimate(parts, { max_tokens: 10 }, 64, 2, { tokens: 6, ratio: 1.5 });
		expect(e.promptTokens).toBe(6);
		expect(e.countedPromptTokens).toBe(2);
		expect(e.exactPromptTokens).toBe(3);
		expect(e.ratio).toBe(1.5);
		expect(e.parts).toBe(parts);
		expect(e.totalTokens).toBe(6 + 2 * 10);
		expect(estimate(parts, {}, 64).promptTokens).toBe(5);
	});

	it("rounds up, without floating-point dust adding a token", () => {
		expect(scaled(87, 117 / 87)).toBe(117);
		expect(scaled(87, Math.exp(Math.log(117 / 87)))).toBe(117);
		expect(scaled(10, 1.21)).toBe(13);
	});
});

describe("very long runs and very long prompts", () => {
	const letters = (n: number, seed = 7) => {
		let x = seed;
		let s = "";
		for (let i = 0; i < n; i++) {
			x = (x * 1103515245 + 12345) % 2 ** 31;
			s += String.fromCharCode(97 + (x % 26));
		}
		return s;
	};

	it("counts ordinary text exactly as the tokenizer, whatever its length", () => {
		const text = Array.from({ length: 2000 }, (_, i) => `word${i} and some more text.`).join(" ");
		const plain = (t: string) => countTokens(t);
		expect(countBounded(text, plain)).toBe(plain(text));
	});

	it("slices runs longer than MAX_RUN, staying within 1% of the exact count", () => {
		const plain = (t: string) => countTokens(t);
		for (const text of [
			letters(4 * MAX_RUN + 17),
			" ".repeat(3000),
			"🎉".repeat(2000),
			`x ${letters(5000)} y`,
		]) {
			const exact = plain(text);
			expect(Math.abs(countBounded(text, plain) - exact)).toBeLessThanOrEqual(
				Math.max(2, exact * 0.01),
			);
		}
	});

	it("counts a long text ahead, a slice at a time, and answers it from the cache after", async () => {
		const counter = await TiktokenCounter.load("cl100k_base");
		const text = `${letters(50_000)} ${ENGLISH_PARAGRAPHS.repeat(5)}`;
		// Another task, rescheduling itself, runs between the windows (about 220 KB / 32 KB of them).
		let turns = 0;
		let ticking = true;
		const tick = () => {
			if (!ticking) return;
			turns++;
			setImmediate(tick);
		};
		setImmediate(tick);
		await counter.prime([text, "short"]);
		ticking = false;
		expect(turns).toBeGreaterThanOrEqual(5);
		const hits = counter.cacheHits;
		const primed = counter.count(text);
		expect(counter.cacheHits).toBe(hits + 1);
		// Counted ahead window by window, the count is exactly the whole text's.
		const tiktoken = get_encoding("cl100k_base");
		expect(primed).toBe(tiktoken.encode_ordinary(text).length);
		tiktoken.free();
	});
});

const ENGLISH_PARAGRAPHS = Array.from(
	{ length: 400 },
	(_, i) => `Paragraph ${i}: the gateway reserves tokens before the call and settles after it.`,
).join("\n\n");
