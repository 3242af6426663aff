import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { join } from "node:path";
import fc from "fast-check";
import { ConfigError, parseConfig } from "../src/config/loader.ts";
import type { ModelConfig } from "../src/config/schema.ts";
import { TokenCounters } from "../src/tokens/counter.ts";
import { chatPromptTokens } from "../src/tokens/estimate.ts";
import {
	type ChatMessage,
	llama2ChatTokens,
	llama3ChatTokens,
	mistralChatTokens,
	referenceText,
} from "./support/chat-templates.ts";
import { CORPUS, corpusPieces } from "./support/corpus.ts";
import { type TokenizerFixtures, writeTokenizerFixtures } from "./support/tokenizer-fixtures.ts";

// Loading the vocabularies takes a second or two.
setDefaultTimeout(60_000);

let fx: TokenizerFixtures;

beforeAll(async () => {
	fx = await writeTokenizerFixtures();
});
afterAll(() => fx.remove());

/** A configuration with one model per tokenizer form, pointing at the fixture files. */
function tokenizerConfig(models: Record<string, string>): string {
	const entries = Object.entries(models)
		.map(([id, tokenizer]) => `      ${id}:\n        max-tokens-per-minute: 1000\n${tokenizer}`)
		.join("\n");
	const services = Object.keys(models)
		.map((id) => `    ${id}: http://127.0.0.1:9`)
		.join("\n");
	return `token:\n  rate-limit:\n    models:\n${entries}\nvllm:\n  services:\n${services}\n`;
}

function modelsOf(yaml: string): ModelConfig[] {
	return [...parseConfig(yaml, {}, "test").models.values()];
}

async function loadAll(): Promise<TokenCounters> {
	return TokenCounters.load(
		modelsOf(
			tokenizerConfig({
				"llama-2": `        tokenizer:\n          kind: huggingface\n          path: ${fx.llama2Dir}`,
				"llama-3": `        tokenizer:\n          kind: tiktoken-ranks\n          path: ${fx.llama3Ranks}`,
				"llama-3-hf": `        tokenizer:\n          kind: huggingface\n          path: ${fx.llama3Json}\n          chat-template: llama3`,
				mistral: `        tokenizer:\n          kind: huggingface\n          path: ${fx.mistralJson}\n          chat-template: mistral`,
				gpt: "        tokenizer: cl100k_base",
			}),
		),
	);
}

describe("per-model tokenizers count exactly as the model's own tokenizer", () => {
	let counters: TokenCounters;
	beforeAll(async () => {
		counters = await loadAll();
	});

	const cases = [
		["Llama 2 (tokenizer.json)", "llama-2", referenceText.llama2],
		["Llama 3 (tiktoken rank file)", "llama-3", referenceText.llama3],
		["Llama 3 (byte-level tokenizer.json)", "llama-3-hf", referenceText.llama3],
		["Mistral 7B (tokenizer.json)", "mistral", referenceText.mistral],
	] as const;

	for (const [name, id, reference] of cases) {
		it(`${name}: every text of the corpus (English, Korean, code, JSON), whole and by paragraph and line`, () => {
			const { counter } = counters.of(id);
			const texts = [...Object.values(CORPUS), ...corpusPieces()];
			const ours = texts.map((t) => counter.count(t));
			expect(ours).toEqual(texts.map(reference));
			// The corpus is not trivially small.
			expect(ours.reduce((a, b) => a + b, 0)).toBeGreaterThan(1000);
		});

		it(`${name}: random text of letters, Hangul, digits, punctuation, spaces, newlines and emoji`, () => {
			const { counter } = counters.of(id);
			const pieces = [
				"a",
				"the",
				" ",
				"  ",
				"\n",
				"\n\n",
				"\t",
				"토큰",
				"한",
				"7",
				"2024",
				".",
				"!?",
				"{",
				'"',
				"'s",
				"🎉",
				"é",
				"ß",
				"中",
				"_x",
			];
			fc.assert(
				fc.property(fc.array(fc.constantFrom(...pieces), { maxLength: 40 }), (parts) => {
					const text = parts.join("");
					expect(counter.count(text)).toBe(reference(text));
				}),
				{ numRuns: 300 },
			);
		});
	}

	it("counts special-token strings in user text as ordinary text (at worst a few tokens over)", () => {
		const { counter } = counters.of("llama-3");
		const text = "<|begin_of_text|>";
		expect(counter.count(text)).toBe(
			referenceText.llama3("<|") + referenceText.llama3("begin_of_text|>"),
		);
		const l2 = counters.of("llama-2").counter;
		expect(l2.count("<s>hi</s>")).toBe(referenceText.llama2("<s>hi</s>"));
	});

	it("differs from cl100k_base as the model does: Llama 2 counts a fifth to a half more", () => {
		const gpt = counters.of("gpt").counter;
		const llama2 = counters.of("llama-2").counter;
		const more = (text: string) => llama2.count(text) / gpt.count(text) - 1;
		expect(more(CORPUS.english ?? "")).toBeGreaterThan(0.1);
		expect(more(CORPUS.korean ?? "")).toBeGreaterThan(0.3);
	});
});

describe("the chat template's framing follows the model family", () => {
	let counters: TokenCounters;
	beforeAll(async () => {
		counters = await loadAll();
	});

	const english: ChatMessage[][] = [
		[{ role: "user", content: "Hello there, how are you?" }],
		[
			{ role: "system", content: "You are a helpful assistant." },
			{ role: "user", content: "Summarise the rate limiter in one line." },
		],
		[
			{ role: "user", content: "hi" },
			{ role: "assistant", content: "Hello! What can I do for you?" },
			{ role: "user", content: "Explain GCRA." },
		],
		[
			{ role: "system", content: "Answer in JSON." },
			{ role: "user", content: "List three colours." },
			{ role: "assistant", content: "Red, green and blue." },
			{ role: "user", content: "Now as an array, please." },
		],
	];
	const mixed: ChatMessage[][] = [
		...english,
		[
			{ role: "system", content: "You are terse." },
			{ role: "user", content: CORPUS.korean ?? "" },
			{ role: "assistant", content: "토큰 버킷과 비슷합니다." },
			{ role: "user", content: CORPUS.typescript ?? "" },
		],
		[{ role: "user", content: CORPUS.json ?? "" }],
	];
	const families = [
		["llama2", "llama-2", llama2ChatTokens],
		["mistral", "mistral", mistralChatTokens],
		["llama3", "llama-3", llama3ChatTokens],
	] as const;

	for (const [family, id, rendered] of families) {
		it(`${family}: English chats are counted exactly as the rendered template`, () => {
			const { counter, framing } = counters.of(id);
			expect(framing.template).toBe(family);
			for (const messages of english) {
				expect(chatPromptTokens(counter, { model: id, messages }, framing)).toBe(
					rendered(messages),
				);
			}
		});

		it(`${family}: any chat is within one token per message of the rendered template`, () => {
			// SentencePiece joins a word to the space before it; text that starts a line, or
			// Hangul, which does not join, may differ by that one marker.
			const { counter, framing } = counters.of(id);
			for (const messages of mixed) {
				const ours = chatPromptTokens(counter, { model: id, messages }, framing);
				expect(Math.abs(ours - rendered(messages))).toBeLessThanOrEqual(messages.length);
			}
		});
	}

	it("takes the template from tokenizer_config.json's chat_template when the config names none", async () => {
		const dir = join(fx.dir, "llama-3-with-config");
		await Bun.write(join(dir, "tokenizer.json"), Bun.file(fx.llama3Json));
		await Bun.write(
			join(dir, "tokenizer_config.json"),
			JSON.stringify({
				chat_template:
					"{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>{% endfor %}",
			}),
		);
		const counters = await TokenCounters.load(
			modelsOf(
				tokenizerConfig({
					m: `        tokenizer:\n          kind: huggingface\n          path: ${dir}`,
				}),
			),
		);
		expect(counters.of("m").framing.template).toBe("llama3");
	});

	it("keeps OpenAI's framing for the built-in encodings", async () => {
		const counters = await TokenCounters.load(
			modelsOf(tokenizerConfig({ m: "        tokenizer: o200k_base" })),
		);
		expect(counters.of("m").framing.template).toBe("openai");
		expect(counters.of("m").counter.encoding).toBe("o200k_base");
	});
});

describe("a missing or unreadable tokenizer file stops the boot, naming the key", () => {
	const problemsOf = (fn: () => unknown): string[] => {
		try {
			fn();
		} catch (err) {
			if (err instanceof ConfigError) return [...err.problems];
			throw err;
		}
		return [];
	};

	it("names a missing file, a directory given for a rank file, a missing path and a bad pattern", () => {
		const problems = problemsOf(() =>
			modelsOf(
				tokenizerConfig({
					a: "        tokenizer:\n          kind: huggingface\n          path: /nonexistent/tokenizer.json",
					b: `        tokenizer:\n          kind: tiktoken-ranks\n          path: ${fx.dir}`,
					c: "        tokenizer:\n          kind: tiktoken-ranks",
					d: `        tokenizer:\n          kind: tiktoken-ranks\n          path: ${fx.llama3Ranks}\n          pattern: "([a-z"`,
				}),
			),
		);
		expect(problems.some((p) => p.startsWith("token.rate-limit.models.a.tokenizer.path:"))).toBe(
			true,
		);
		expect(problems.some((p) => p.includes("no such file: /nonexistent/tokenizer.json"))).toBe(
			true,
		);
		expect(
			problems.some(
				(p) => p.startsWith("token.rate-limit.models.b.tokenizer.path:") && p.includes("directory"),
			),
		).toBe(true);
		expect(
			problems.some(
				(p) => p.startsWith("token.rate-limit.models.c.tokenizer.path:") && p.includes("required"),
			),
		).toBe(true);
		expect(problems.some((p) => p.startsWith("token.rate-limit.models.d.tokenizer.pattern:"))).toBe(
			true,
		);
		// An unknown kind is a schema error, reported before the files are looked at.
		const kind = problemsOf(() =>
			modelsOf(
				tokenizerConfig({
					e: "        tokenizer:\n          kind: sentencepiece\n          path: /x",
				}),
			),
		);
		expect(kind).toEqual([
			'token.rate-limit.models.e.tokenizer.kind: expected one of cl100k_base, o200k_base, tiktoken-ranks, huggingface, got "sentencepiece"',
		]);
	});

	it("refuses at load a file that is not a tokenizer, naming the model's key and the file", async () => {
		const notRanks = join(fx.dir, "not-ranks.model");
		const notJson = join(fx.dir, "broken", "tokenizer.json");
		const notTokenizer = join(fx.dir, "other", "tokenizer.json");
		await Bun.write(notRanks, "this is not a rank file\n");
		await Bun.write(notJson, "{ not json");
		await Bun.write(notTokenizer, JSON.stringify({ hello: "world" }));
		const models = modelsOf(
			tokenizerConfig({
				r: `        tokenizer:\n          kind: tiktoken-ranks\n          path: ${notRanks}`,
				j: `        tokenizer:\n          kind: huggingface\n          path: ${notJson}`,
				o: `        tokenizer:\n          kind: huggingface\n          path: ${notTokenizer}`,
			}),
		);
		let error: unknown;
		try {
			await TokenCounters.load(models);
		} catch (err) {
			error = err;
		}
		expect(error).toBeInstanceOf(ConfigError);
		const problems = error instanceof ConfigError ? error.problems : [];
		expect(problems).toHaveLength(3);
		expect(problems[0]).toStartWith("token.rate-limit.models.r.tokenizer.path: cannot load");
		expect(problems[0]).toContain("not a tiktoken rank file");
		expect(problems[1]).toStartWith("token.rate-limit.models.j.tokenizer.path: cannot load");
		expect(problems[1]).toContain("is not JSON");
		expect(problems[2]).toStartWith("token.rate-limit.models.o.tokenizer.path: cannot load");
		expect(problems[2]).toContain("not a Hugging Face tokenizer.json");
	});

	it("names what it counts with by the file's content, so a file replaced in place calibrates anew", async () => {
		const path = join(fx.dir, "in-place", "tokenizer.json");
		await Bun.write(path, Bun.file(fx.llama2Json));
		const yaml = tokenizerConfig({
			m: `        tokenizer:\n          kind: huggingface\n          path: ${path}\n          chat-template: llama2`,
		});
		const first = await TokenCounters.load(modelsOf(yaml));
		const same = await TokenCounters.load(modelsOf(yaml));
		expect(same.identity("m")).toEqual(first.identity("m"));
		await Bun.write(path, Bun.file(fx.llama3Json));
		const replaced = await TokenCounters.load(modelsOf(yaml), first);
		expect(replaced.identity("m").key).not.toBe(first.identity("m").key);
		expect(replaced.identity("m").template).toBe("llama2");
	});

	it("shares one counter between models with the same tokenizer, and reuses it on reload", async () => {
		const yaml = tokenizerConfig({
			a: `        tokenizer:\n          kind: huggingface\n          path: ${fx.llama2Dir}`,
			b: `        tokenizer:\n          kind: huggingface\n          path: ${fx.llama2Dir}`,
		});
		const first = await TokenCounters.load(modelsOf(yaml));
		expect(first.of("a").counter).toBe(first.of("b").counter);
		const again = await TokenCounters.load(modelsOf(yaml), first);
		expect(again.of("a").counter).toBe(first.of("a").counter);
	});
});
