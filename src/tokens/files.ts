import { stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Tokenizer } from "@huggingface/tokenizers";
import { isPlainObject } from "../config/loader.ts";
import type { ChatTemplateName } from "../config/schema.ts";
import { boundedCounting, type Counting } from "./counter.ts";
import { parseRankFile } from "./ranks.ts";
import { type Split, WasmCounter } from "./wasm.ts";

/** A tokenizer read from files: how it counts, and the chat template its files name. */
export interface TokenizerFile {
	readonly counting: Counting;
	readonly chatTemplate?: ChatTemplateName;
}

/**
 * The split applied before merging: Llama 3's (its tokenizer.json's
 * pre-tokenizer, the same expression as cl100k_base's) and the two built-in
 * encodings' are done inside the WASM counter; anything else is a regular
 * expression applied here, its pieces merged by the counter.
 */
function splitPattern(pattern: string): Split {
	if (pattern === "llama3" || pattern === "cl100k_base") return "cl100k_base";
	if (pattern === "o200k_base") return "o200k_base";
	return new RegExp(pattern, "gu");
}

/**
 * A tiktoken rank file (`<base64 of the token's bytes> <rank>` per line, the
 * format of tiktoken's `.tiktoken` files and Llama 3's `tokenizer.model`),
 * loaded into its own instance of the WASM counter: the same code that counts
 * cl100k_base, so it counts as tiktoken would with these ranks. `pattern` is the
 * split applied before merging (llama3, the default; cl100k_base; o200k_base; or
 * a regular expression).
 */
export async function loadRankFile(path: string, pattern: string): Promise<TokenizerFile> {
	const ranks = parseRankFile(await Bun.file(path).text());
	return { counting: await WasmCounter.load(ranks, splitPattern(pattern)) };
}

/** SentencePiece's word marker: a space in the normalised text. */
const METASPACE = "\u2581";
/** The normalised text's words: a run of markers and what follows up to the next marker. */
const METASPACE_WORDS = /\u2581*[^\u2581]+|\u2581+/gu;

/** Texts a fast path must count exactly as the library's full encode before it is used. */
const PROBES = [
	"Hello world! The quick brown fox jumps over the lazy dog.",
	"  two spaces,   three,\tand a tab\n\nand blank lines\n",
	"안녕하세요! 토큰 사용량을 제한합니다. 한국어 텍스트입니다.",
	'function add(a: number, b: number): number {\n\treturn a + b; // sum\n}\n{"k": [1, 2.5, null]}',
	"emoji 🎉🚀, accents ümlaut ß, and 中文字符 mixed in.",
	" leading and trailing space ",
];

/**
 * Whether no BPE merge joins a piece ending in a normal character to one that
 * starts with the word marker: then merges never cross the start of a word,
 * and counting word by word gives the count of the whole text.
 */
function mergesStayInWords(model: Record<string, unknown>): boolean {
	if (model.type !== "BPE" || !Array.isArray(model.merges)) return false;
	for (const merge of model.merges) {
		const pair =
			typeof merge === "string" ? merge.split(" ", 2) : Array.isArray(merge) ? merge : undefined;
		const [left, right] = pair ?? [];
		if (typeof left !== "string" || typeof right !== "string") return false;
		if (!left.endsWith(METASPACE) && right.startsWith(METASPACE)) return false;
	}
	return true;
}

/** The chat template family a tokenizer_config.json's `chat_template` is written for. */
export function templateOf(config: Record<string, unknown>): ChatTemplateName | undefined {
	const raw = config.chat_template;
	const text =
		typeof raw === "string"
			? raw
			: Array.isArray(raw)
				? raw
						.map((t) => (isPlainObject(t) && typeof t.template === "string" ? t.template : ""))
						.join()
				: "";
	if (text.includes("<|start_header_id|>")) return "llama3";
	if (text.includes("<|im_start|>")) return "chatml";
	if (text.includes("<<SYS>>")) return "llama2";
	if (text.includes("[INST]")) return "mistral";
	return undefined;
}

async function readJson(path: string, what: string): Promise<Record<string, unknown>> {
	let text: string;
	try {
		text = await Bun.file(path).text();
	} catch (err) {
		throw new Error(`${what} ${path} cannot be read (${err instanceof Error ? err.message : err})`);
	}
	let parsed: unknown;
	try {
		parsed = JSON.parse(text);
	} catch (err) {
		throw new Error(`${what} ${path} is not JSON (${err instanceof Error ? err.message : err})`);
	}
	if (!isPlainObject(parsed)) throw new Error(`${what} ${path} is not a JSON object`);
	return parsed;
}

/**
 * A Hugging Face `tokenizer.json` (with `tokenizer_config.json` beside it when
 * there is one), counted by `@huggingface/tokenizers`, the pure-JavaScript
 * tokenizers of transformers.js. `path` is the file or the model directory.
 *
 * SentencePiece BPE models (Llama 2, Mistral: no pre-tokenizer, `▁` for
 * spaces) are merged word by word when their merges never cross a word's start
 * and the probe texts count the same both ways: the library's word cache then
 * serves recurring words, which is 10-20 times faster than merging a whole
 * message at once. Text is counted without special tokens (no BOS).
 */
export async function loadHuggingFace(path: string): Promise<TokenizerFile> {
	const isDir = (await stat(path)).isDirectory();
	const jsonPath = isDir ? join(path, "tokenizer.json") : path;
	const configPath = join(isDir ? path : dirname(path), "tokenizer_config.json");
	const json = await readJson(jsonPath, "tokenizer.json");
	if (!isPlainObject(json.model) || typeof json.model.type !== "string") {
		throw new Error(`${jsonPath} is not a Hugging Face tokenizer.json (it has no model.type)`);
	}
	const config = (await Bun.file(configPath).exists())
		? await readJson(configPath, "tokenizer_config.json")
		: {};
	// Loaded only by a gateway with a tokenizer.json model.
	const { Tokenizer } = await import("@huggingface/tokenizers");
	let tokenizer: Tokenizer;
	try {
		tokenizer = new Tokenizer(
			{
				normalizer: null,
				pre_tokenizer: null,
				post_processor: null,
				decoder: null,
				added_tokens: [],
				...json,
			},
			config,
		);
	} catch (err) {
		throw new Error(
			`${jsonPath} could not be loaded (${err instanceof Error ? err.message : String(err)})`,
		);
	}
	const full = (text: string) => tokenizer.encode(text, { add_special_tokens: false }).ids.length;
	const { normalizer, model } = tokenizer;
	let count = full;
	if (normalizer !== null && model !== null && json.pre_tokenizer == null) {
		if (mergesStayInWords(json.model)) {
			const byWords = (text: string) => model(normalizer(text).match(METASPACE_WORDS) ?? []).length;
			if (PROBES.every((p) => byWords(p) === full(p))) count = byWords;
		}
	}
	// A tokenizer that cannot count is refused at load, not on the first request.
	for (const p of PROBES) count(p);
	const chatTemplate = templateOf(config);
	const counting = boundedCounting(count);
	return chatTemplate === undefined ? { counting } : { counting, chatTemplate };
}
