import { stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { BytePairEncodingCore } from "gpt-tokenizer/BytePairEncodingCore";
import {
	CL100K_TOKEN_SPLIT_REGEX,
	O200K_TOKEN_SPLIT_REGEX,
} from "gpt-tokenizer/encodingParams/constants";
import { isPlainObject } from "../config/loader.ts";
import type { ChatTemplateName } from "../config/schema.ts";

/** A tokenizer read from files: how it counts, and the chat template its files name. */
export interface TokenizerFile {
	readonly count: (text: string) => number;
	readonly chatTemplate?: ChatTemplateName;
}

/** Byte-pair merges remembered per rank file (bounded; words recur across texts). */
const MERGE_CACHE_ENTRIES = 50_000;

/** Stands for "no special tokens": user text is counted as ordinary text. */
const NO_SPECIAL = "<|token-rate-limiter:none|>";

/**
 * Llama 3's split (its tokenizer.json's pre-tokenizer): cl100k's, except that a
 * run of line breaks stays one piece.
 */
export const LLAMA3_SPLIT_REGEX =
	/'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

function splitPattern(pattern: string): RegExp {
	if (pattern === "llama3") return LLAMA3_SPLIT_REGEX;
	if (pattern === "cl100k_base") return CL100K_TOKEN_SPLIT_REGEX;
	if (pattern === "o200k_base") return O200K_TOKEN_SPLIT_REGEX;
	return new RegExp(pattern, "gu");
}

/** Keeps a leading byte-order mark: Llama 3 has tokens that start with one. */
const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function utf8(bytes: Uint8Array): string | undefined {
	try {
		return STRICT_UTF8.decode(bytes);
	} catch {
		return undefined;
	}
}

/**
 * A tiktoken rank file (`<base64 of the token's bytes> <rank>` per line, the
 * format of tiktoken's `.tiktoken` files and Llama 3's `tokenizer.model`),
 * merged by gpt-tokenizer's byte-pair encoder: the same code that counts
 * cl100k_base, so it counts as tiktoken would with these ranks. `pattern` is
 * the split applied before merging (llama3, the default; cl100k_base; o200k_base; or a regular expression).
 */
export async function loadRankFile(path: string, pattern: string): Promise<TokenizerFile> {
	const text = await Bun.file(path).text();
	const ranks: (string | number[])[] = [];
	let lineNo = 0;
	let count = 0;
	for (const line of text.split("\n")) {
		lineNo++;
		const trimmed = line.trim();
		if (trimmed === "") continue;
		const space = trimmed.indexOf(" ");
		const rank = space < 0 ? Number.NaN : Number(trimmed.slice(space + 1));
		const token = space < 0 ? "" : trimmed.slice(0, space);
		if (!Number.isInteger(rank) || rank < 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(token)) {
			throw new Error(
				`line ${lineNo} is not "<base64 token> <rank>" (not a tiktoken rank file?): ${JSON.stringify(trimmed.slice(0, 60))}`,
			);
		}
		const bytes = Buffer.from(token, "base64");
		// Tokens that are whole UTF-8 text are looked up as strings, the others as bytes.
		ranks[rank] = utf8(bytes) ?? [...bytes];
		count++;
	}
	if (count < 256) {
		throw new Error(`${count} tokens: a rank file has at least the 256 single bytes`);
	}
	const core = new BytePairEncodingCore({
		bytePairRankDecoder: ranks,
		tokenSplitRegex: splitPattern(pattern),
		specialTokensEncoder: new Map([[NO_SPECIAL, ranks.length]]),
		mergeCacheSize: MERGE_CACHE_ENTRIES,
	});
	return { count: (t) => core.countNative(t) };
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
	return chatTemplate === undefined ? { count } : { count, chatTemplate };
}
