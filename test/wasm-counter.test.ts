import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { get_encoding, Tiktoken } from "@dqbd/tiktoken";
import fc from "fast-check";
import { decodeRanks, parseRankFile } from "../src/tokens/ranks.ts";
import { builtinCounter, WasmCounter } from "../src/tokens/wasm.ts";
import { CORPUS } from "./support/corpus.ts";
import { llama3RankFile } from "./support/tokenizer-fixtures.ts";

// Loading three vocabularies into tiktoken and into the counter takes a few seconds.
setDefaultTimeout(120_000);

/** tiktoken's own split for cl100k_base, which Llama 3's rank file is used with. */
const CL100K_PATTERN =
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

interface Pair {
	readonly name: string;
	readonly ours: WasmCounter;
	/** The same ranks, split and counted by tiktoken. */
	readonly reference: (text: string) => number;
	/** The same counter reading its text a few bytes at a time. */
	readonly narrow: WasmCounter;
}

const pairs: Pair[] = [];
const frees: (() => void)[] = [];

beforeAll(async () => {
	for (const encoding of ["cl100k_base", "o200k_base"] as const) {
		const tk = get_encoding(encoding);
		frees.push(() => tk.free());
		const file = await Bun.file(
			new URL(`../wasm/ranks/${encoding}.ranks`, import.meta.url),
		).bytes();
		pairs.push({
			name: encoding,
			ours: await builtinCounter(encoding),
			reference: (t) => tk.encode_ordinary(t).length,
			narrow: await WasmCounter.load(decodeRanks(file), encoding, 16),
		});
	}
	// Llama 3's tokenizer.model, through the rank-file path, against tiktoken given the same ranks.
	const text = llama3RankFile();
	const ranks = parseRankFile(text);
	const tk = new Tiktoken(text, {}, CL100K_PATTERN);
	frees.push(() => tk.free());
	pairs.push({
		name: "llama3 rank file",
		ours: await WasmCounter.load(ranks, "cl100k_base"),
		reference: (t) => tk.encode_ordinary(t).length,
		narrow: await WasmCounter.load(ranks, "cl100k_base", 16),
	});
});

afterAll(() => {
	for (const free of frees) free();
});

const cp = (min: number, max: number) =>
	fc.integer({ min, max }).map((c) => String.fromCodePoint(c));

/** Characters that exercise every branch of the splits. */
const unit = fc.oneof(
	{
		weight: 6,
		arbitrary: fc.constantFrom(..."abcXYZ 019 .,;:!?'\"-_/\\\n\r\t(){}[]<>=+*&^%$#@~`|"),
	},
	{
		weight: 3,
		arbitrary: fc.constantFrom(
			"'s",
			"'S",
			"'t",
			"'re",
			"'VE",
			"'m",
			"'ll",
			"'Ll",
			"'d",
			"'\u017f",
			"\r\n",
			"  ",
			"\u00a0",
			"\u0085",
			"\ufeff",
			"\u3000",
			"\u2028",
			"\u200b",
			"\u200d",
			"\ufe0f",
			"\u01c5",
			"\u02b0",
			"\u00aa",
			"\u00b2",
			"\u2162",
			"\u0660",
			"\uff11",
			"\u00df",
			"\u0130",
			"\u212a",
		),
	},
	{ weight: 2, arbitrary: cp(0x300, 0x36f) }, // combining marks
	{ weight: 2, arbitrary: cp(0xac00, 0xd7a3) }, // Hangul syllables
	{ weight: 1, arbitrary: cp(0x1100, 0x11ff) }, // Hangul jamo
	{ weight: 2, arbitrary: cp(0x4e00, 0x9fff) }, // CJK
	{ weight: 2, arbitrary: cp(0x1f300, 0x1faff) }, // emoji
	{ weight: 1, arbitrary: cp(0x1f3fb, 0x1f3ff) }, // skin tones
	{ weight: 1, arbitrary: cp(0x0, 0x1f) }, // control characters
	{ weight: 1, arbitrary: cp(0x7f, 0x9f) },
	{ weight: 2, arbitrary: cp(0xa0, 0x24f) }, // Latin-1, Latin Extended
	{ weight: 1, arbitrary: cp(0x370, 0x52f) }, // Greek, Cyrillic
	{ weight: 1, arbitrary: cp(0x600, 0x6ff) }, // Arabic
	{ weight: 1, arbitrary: cp(0x900, 0xdff) }, // Indic
	{ weight: 2, arbitrary: cp(0x10000, 0x10ffff) }, // astral planes
	{ weight: 2, arbitrary: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) }, // lone surrogates too
);

const texts = fc.oneof(
	{ weight: 8, arbitrary: fc.string({ unit, maxLength: 120 }) },
	{ weight: 1, arbitrary: fc.json({ maxDepth: 3 }) },
	{
		weight: 2,
		arbitrary: fc
			.tuple(
				fc.constantFrom("a", "Z", "0", " ", "=", "ab", "é", "가", "\n", " \n", "-", "🙂"),
				fc.integer({ min: 1, max: 3000 }),
			)
			.map(([s, n]) => s.repeat(n)),
	},
	{
		weight: 1,
		arbitrary: fc
			.uint8Array({ minLength: 100, maxLength: 4000 })
			.map((b) => Buffer.from(b).toString("base64")),
	},
);

describe("the WASM counter counts exactly as tiktoken", () => {
	it("on the corpora (English, Korean, TypeScript, JSON)", () => {
		for (const pair of pairs) {
			for (const [name, text] of Object.entries(CORPUS)) {
				expect(`${pair.name} ${name}: ${pair.ours.count(text)}`).toBe(
					`${pair.name} ${name}: ${pair.reference(text)}`,
				);
			}
		}
	});

	it("on random Unicode, code, JSON and long runs without spaces", () => {
		for (const pair of pairs) {
			fc.assert(
				fc.property(texts, (text) => {
					expect(pair.ours.count(text)).toBe(pair.reference(text));
				}),
				{ numRuns: 400 },
			);
		}
	});

	it("reading a few bytes at a time gives the whole text's count", async () => {
		for (const pair of pairs) {
			await fc.assert(
				fc.asyncProperty(texts, async (text) => {
					expect(await pair.narrow.countAhead(text)).toBe(pair.ours.count(text));
				}),
				{ numRuns: 200 },
			);
		}
	});

	it("counts a 1 MB prompt a window at a time to the same total", async () => {
		const prompt = Object.values(CORPUS).join("\n").repeat(400).slice(0, 1_000_000);
		for (const pair of pairs) {
			expect(await pair.ours.countAhead(prompt)).toBe(pair.reference(prompt));
		}
	});

	it("counts runs of over 16 KB without a break in bounded time and memory, close to tiktoken", async () => {
		let x = 11;
		let run = "";
		for (let i = 0; i < 40_000; i++) {
			x = (x * 1103515245 + 12345) % 2 ** 31;
			run += String.fromCharCode(97 + (x % 26));
		}
		const [cl100k] = pairs;
		if (cl100k === undefined) throw new Error("cl100k_base was not loaded");
		// Merged 16 KB at a time: at most a token or so off per cut (two cuts here).
		expect(Math.abs(cl100k.ours.count(run) - cl100k.reference(run))).toBeLessThanOrEqual(2);
		for (const pair of pairs) {
			const huge = `${run.repeat(25)} and then words`;
			expect(await pair.narrow.countAhead(huge)).toBe(pair.ours.count(huge));
			expect(pair.ours.memoryBytes).toBeLessThanOrEqual(8 * 1024 * 1024);
		}
	});

	it("counts special-token strings as ordinary text", () => {
		const text = "<|endoftext|> and <|fim_prefix|> are text here";
		for (const pair of pairs) expect(pair.ours.count(text)).toBe(pair.reference(text));
	});

	it("holds each encoding in a few MB of linear memory", () => {
		for (const pair of pairs) expect(pair.ours.memoryBytes).toBeLessThanOrEqual(8 * 1024 * 1024);
	});
});
