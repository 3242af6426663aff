import { stat } from "node:fs/promises";
import { join } from "node:path";
import { GenerationalCache } from "../cache.ts";
import { ConfigError } from "../config/loader.ts";
import type {
	BuiltinEncoding,
	ChatTemplateName,
	ModelConfig,
	TokenizerSpec,
} from "../config/schema.ts";
import { loadHuggingFace, loadRankFile, type TokenizerFile } from "./files.ts";
import { CHAT_FRAMINGS, type ChatFraming } from "./framing.ts";
import { builtinCounter } from "./wasm.ts";

/** Counts tokens of plain text. */
export interface TokenCounter {
	/** What counts: the encoding, or the kind and file. */
	readonly encoding: string;
	count(text: string): number;
}

type CountText = (text: string) => number;

/** How a counter counts a text of any length, now or a slice at a time. */
export interface Counting {
	/** Tokens in `text`. */
	count(text: string): number;
	/** The same count with the event loop served between slices (for very long texts). */
	countAhead(text: string): Promise<number>;
}

/**
 * A text's cache key: wyhash (64 bits) of its content mixed with its length.
 * With at most CACHE_MAX_ENTRIES texts the chance of any two colliding is
 * below 1e-10; a key costs tens of bytes where the text could be megabytes.
 */
function contentKey(text: string): bigint {
	return BigInt.asUintN(64, Bun.hash.wyhash(text, BigInt(text.length)));
}

/**
 * Tokenizers counted by a library (Hugging Face tokenizer.json files) merge in
 * time quadratic in the length of one piece, and a run of letters, symbols or
 * spaces without a break is one piece: 100 KB of "a" would hold the event loop
 * for seconds. For them, runs longer than this are counted in slices of this
 * length (a few tokens more or less at each cut, only for such runs: base64
 * blobs, repeated characters, padding). The WASM counter needs no such cut: it
 * merges long pieces in n log n and counts them exactly.
 */
export const MAX_RUN = 256;

function isSpace(code: number): boolean {
	return (
		code === 32 ||
		(code >= 9 && code <= 13) ||
		code === 0x85 ||
		code === 0xa0 ||
		code === 0x1680 ||
		(code >= 0x2000 && code <= 0x200a) ||
		code === 0x2028 ||
		code === 0x2029 ||
		code === 0x202f ||
		code === 0x205f ||
		code === 0x3000
	);
}

/** Where each run longer than MAX_RUN starts and ends (end exclusive); empty for ordinary text. */
function longRuns(text: string): [number, number][] {
	const out: [number, number][] = [];
	let start = 0;
	let space = text.length > 0 && isSpace(text.charCodeAt(0));
	for (let i = 1; i <= text.length; i++) {
		const here = i < text.length ? isSpace(text.charCodeAt(i)) : !space;
		if (here !== space) {
			if (i - start > MAX_RUN) out.push([start, i]);
			start = i;
			space = here;
		}
	}
	return out;
}

/** A cut near `at` that does not split a surrogate pair. */
function cutAt(text: string, at: number): number {
	const code = text.charCodeAt(at);
	return code >= 0xdc00 && code <= 0xdfff ? at + 1 : at;
}

/** Counts `text`, slicing runs longer than MAX_RUN (see there). */
export function countBounded(text: string, count: CountText): number {
	if (text.length <= MAX_RUN) return count(text);
	const runs = longRuns(text);
	if (runs.length === 0) return count(text);
	let n = 0;
	let from = 0;
	for (const [start, end] of runs) {
		if (start > from) n += count(text.slice(from, start));
		let at = start;
		while (at < end) {
			const next = Math.min(end, cutAt(text, at + MAX_RUN));
			n += count(text.slice(at, next));
			at = next;
		}
		from = end;
	}
	if (from < text.length) n += count(text.slice(from));
	return n;
}

/** Texts longer than this are counted ahead by `prime`, a slice at a time. */
const PRIME_ABOVE = 32_768;
/** Slice size when counting ahead: a few milliseconds of counting at worst. */
const PRIME_SLICE = 8_192;

/** Slices of `text` of about PRIME_SLICE characters, cut before a space where there is one near. */
function* slices(text: string): Iterable<string> {
	let from = 0;
	while (text.length - from > PRIME_SLICE) {
		let cut = from + PRIME_SLICE;
		const floor = cut - 1024;
		while (cut > floor && !isSpace(text.charCodeAt(cut))) cut--;
		if (cut === floor) cut = cutAt(text, from + PRIME_SLICE);
		yield text.slice(from, cut);
		from = cut;
	}
	yield text.slice(from);
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** A library's count of plain text, with long runs sliced and long texts counted ahead in slices. */
export function boundedCounting(countText: CountText): Counting {
	return {
		count: (text) => countBounded(text, countText),
		countAhead: async (text) => {
			let n = 0;
			for (const slice of slices(text)) {
				n += countBounded(slice, countText);
				await nextTurn();
			}
			return n;
		},
	};
}

/** Texts shorter than this are counted directly; caching them costs more than it saves. */
const CACHE_MIN_CHARS = 64;
const CACHE_MAX_ENTRIES = 20_000;
/** Short texts remembered at most (a few hundred KB at most). */
const SHORT_CACHE_ENTRIES = 4096;

/**
 * A token counter with the per-message count cache, whatever counts
 * underneath. Long texts are remembered (bounded, least recently used forgotten first) so a
 * chat that resends its history does not pay again for messages already
 * counted.
 */
export class CachedCounter implements TokenCounter {
	/** Counts of long texts by a 64-bit hash of their content (the texts themselves are not kept). */
	private readonly cache = new GenerationalCache<bigint, number>(CACHE_MAX_ENTRIES);
	/** Counts of short texts (roles, names, short messages), by the text. */
	private readonly short = new GenerationalCache<string, number>(SHORT_CACHE_ENTRIES);
	/** Long texts answered from the cache (a resent chat history). */
	cacheHits = 0;

	constructor(
		readonly encoding: string,
		private readonly counting: Counting,
		/** The chat template the tokenizer's own files name, if any. */
		readonly chatTemplate?: ChatTemplateName,
		/** What the counter counts with: the encoding, or a hash of the tokenizer file's content. */
		readonly fingerprint: string = encoding,
	) {}

	count(text: string): number {
		if (text.length === 0) return 0;
		if (text.length < CACHE_MIN_CHARS) {
			// Roles, names and short messages recur: remembered by the text itself.
			const known = this.short.get(text);
			if (known !== undefined) return known;
			const n = this.counting.count(text);
			this.short.set(text, n);
			return n;
		}
		const key = contentKey(text);
		const hit = this.cache.get(key);
		if (hit !== undefined) {
			this.cacheHits++;
			return hit;
		}
		const n = this.counting.count(text);
		this.remember(key, n);
		return n;
	}

	/**
	 * Counts the very long texts among `texts` ahead, a slice at a time with the
	 * event loop served in between, so that one huge prompt does not hold up
	 * every other request; `count` then answers them from the cache.
	 */
	async prime(texts: Iterable<string>): Promise<void> {
		for (const text of texts) {
			if (text.length <= PRIME_ABOVE) continue;
			const key = contentKey(text);
			if (this.cache.has(key)) continue;
			this.remember(key, await this.counting.countAhead(text));
		}
	}

	private remember(key: bigint, n: number): void {
		this.cache.set(key, n);
	}
}

/**
 * tiktoken's encodings (cl100k_base, o200k_base) counted by the WASM counter
 * (wasm/, src/tokens/wasm.ts), which counts exactly as tiktoken does. User
 * text is counted as ordinary text: special-token strings such as
 * `<|endoftext|>` are counted, never rejected.
 */
export class TiktokenCounter extends CachedCounter {
	static async load(encoding: BuiltinEncoding): Promise<TiktokenCounter> {
		return new TiktokenCounter(encoding, await builtinCounter(encoding));
	}
}

/** Loads the counter a spec names (files are read here: the boot or reload fails on a bad one). */
export async function loadCounter(spec: TokenizerSpec): Promise<CachedCounter> {
	if (spec.kind === "cl100k_base" || spec.kind === "o200k_base") {
		return TiktokenCounter.load(spec.kind);
	}
	if (spec.path === undefined) throw new Error(`${spec.kind} needs a path`);
	const file: TokenizerFile =
		spec.kind === "tiktoken-ranks"
			? await loadRankFile(spec.path, spec.pattern ?? "llama3")
			: await loadHuggingFace(spec.path);
	// The file's content, not its path: a model upgraded in place counts differently.
	const source =
		spec.kind === "huggingface" && (await stat(spec.path)).isDirectory()
			? join(spec.path, "tokenizer.json")
			: spec.path;
	const fingerprint = Bun.hash(await Bun.file(source).arrayBuffer()).toString(16);
	return new CachedCounter(spec.key, file.counting, file.chatTemplate, fingerprint);
}

/** The default chat template of a tokenizer kind, when neither the config nor the files name one. */
function defaultTemplate(spec: TokenizerSpec): ChatTemplateName {
	return spec.kind === "tiktoken-ranks" ? "llama3" : "openai";
}

/** How one model's prompts are counted: its tokenizer and its chat template's framing. */
export interface ModelCounter {
	readonly counter: CachedCounter;
	readonly framing: ChatFraming;
}

/** A loaded counter and the file state it was loaded from (to reuse it across reloads). */
interface Loaded {
	readonly counter: CachedCounter;
	readonly stamp: string;
}

async function fileStamp(spec: TokenizerSpec): Promise<string> {
	if (spec.path === undefined) return "";
	try {
		const s = await stat(spec.path);
		return `${s.size}:${s.mtimeMs}`;
	} catch {
		return "missing";
	}
}

/**
 * Every model's counter, loaded once at boot (and on reload). Models with the
 * same tokenizer share one counter; a reload reuses a counter whose file has
 * not changed.
 */
export class TokenCounters {
	private constructor(
		private readonly byModel: ReadonlyMap<string, ModelCounter>,
		private readonly byKey: ReadonlyMap<string, Loaded>,
	) {}

	/**
	 * Loads the tokenizers of `models`. A file that cannot be read or parsed is a
	 * ConfigError naming the model's `tokenizer.path` key.
	 */
	static async load(
		models: Iterable<ModelConfig>,
		previous?: TokenCounters,
	): Promise<TokenCounters> {
		const byKey = new Map<string, Loaded>();
		const byModel = new Map<string, ModelCounter>();
		const problems: string[] = [];
		for (const model of models) {
			const spec = model.tokenizer;
			let loaded = byKey.get(spec.key);
			if (loaded === undefined) {
				const stamp = await fileStamp(spec);
				const before = previous?.byKey.get(spec.key);
				if (before !== undefined && before.stamp === stamp) loaded = before;
				else {
					try {
						loaded = { counter: await loadCounter(spec), stamp };
					} catch (err) {
						problems.push(
							`${spec.where}${spec.path === undefined ? "" : ".path"}: cannot load ${spec.kind} tokenizer${spec.path === undefined ? "" : ` ${spec.path}`}: ${err instanceof Error ? err.message : String(err)}`,
						);
						continue;
					}
				}
				byKey.set(spec.key, loaded);
			}
			const template = spec.chatTemplate ?? loaded.counter.chatTemplate ?? defaultTemplate(spec);
			byModel.set(model.id, { counter: loaded.counter, framing: CHAT_FRAMINGS[template] });
		}
		if (problems.length > 0) throw new ConfigError("tokenizer files", problems);
		return new TokenCounters(byModel, byKey);
	}

	/**
	 * What a model's prompts are counted with, for self-calibration: the tokenizer
	 * (its file's content) and the template. A change of either learns anew.
	 */
	identity(modelId: string): { key: string; template: ChatTemplateName } {
		const { counter, framing } = this.of(modelId);
		return { key: `${counter.encoding}#${counter.fingerprint}`, template: framing.template };
	}

	/** The model's counter and framing. */
	of(modelId: string): ModelCounter {
		const c = this.byModel.get(modelId);
		if (c === undefined) throw new Error(`no tokenizer was loaded for model ${modelId}`);
		return c;
	}
}
