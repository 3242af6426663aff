import type { Tokenizer } from "../config/schema.ts";

/** Counts tokens of plain text. */
export interface TokenCounter {
	readonly encoding: Tokenizer;
	count(text: string): number;
}

type CountTokens = (text: string, options: { disallowedSpecial: Set<string> }) => number;

/** Byte-pair merges remembered per encoding by gpt-tokenizer (bounded; words recur across texts). */
const MERGE_CACHE_ENTRIES = 50_000;

async function countFunction(encoding: Tokenizer): Promise<CountTokens> {
	switch (encoding) {
		case "cl100k_base": {
			const m = await import("gpt-tokenizer/encoding/cl100k_base");
			m.setMergeCacheSize(MERGE_CACHE_ENTRIES);
			return m.countTokens;
		}
		case "o200k_base": {
			const m = await import("gpt-tokenizer/encoding/o200k_base");
			m.setMergeCacheSize(MERGE_CACHE_ENTRIES);
			return m.countTokens;
		}
	}
}

/**
 * A text's cache key: wyhash (64 bits) of its content mixed with its length.
 * With at most CACHE_MAX_ENTRIES texts the chance of any two colliding is
 * below 1e-10; a key costs tens of bytes where the text could be megabytes.
 */
function contentKey(text: string): bigint {
	return BigInt.asUintN(64, Bun.hash.wyhash(text, BigInt(text.length)));
}

/** No special tokens: their strings in user text are ordinary text. */
const ORDINARY = { disallowedSpecial: new Set<string>() };

/** Texts shorter than this are counted directly; caching them costs more than it saves. */
const CACHE_MIN_CHARS = 64;
const CACHE_MAX_ENTRIES = 20_000;

/**
 * tiktoken's encodings (cl100k_base, o200k_base) counted by gpt-tokenizer, a
 * pure-JavaScript BPE that counts exactly as tiktoken does and, with its merge
 * cache, 3-4 times faster than tiktoken's WASM build (perf/tokens-bench.ts).
 * User text is counted as ordinary text: special-token strings such as
 * `<|endoftext|>` are counted, never rejected. Long texts are remembered
 * (bounded, oldest evicted first) so a chat that resends its history does not
 * pay again for messages already counted.
 */
export class TiktokenCounter implements TokenCounter {
	/** Counts of long texts by a 64-bit hash of their content (the texts themselves are not kept). */
	private readonly cache = new Map<bigint, number>();
	/** Long texts answered from the cache (a resent chat history). */
	cacheHits = 0;

	private constructor(
		readonly encoding: Tokenizer,
		private readonly countTokens: CountTokens,
	) {}

	static async load(encoding: Tokenizer): Promise<TiktokenCounter> {
		return new TiktokenCounter(encoding, await countFunction(encoding));
	}

	private encode(text: string): number {
		return this.countTokens(text, ORDINARY);
	}

	count(text: string): number {
		if (text.length === 0) return 0;
		if (text.length < CACHE_MIN_CHARS) return this.encode(text);
		const key = contentKey(text);
		const hit = this.cache.get(key);
		if (hit !== undefined) {
			this.cacheHits++;
			return hit;
		}
		const n = this.encode(text);
		if (this.cache.size >= CACHE_MAX_ENTRIES) {
			const oldest = this.cache.keys().next();
			if (oldest.done !== true) this.cache.delete(oldest.value);
		}
		this.cache.set(key, n);
		return n;
	}
}

/** One counter per encoding, loaded once at boot. */
export class TokenCounters {
	private constructor(private readonly byEncoding: ReadonlyMap<Tokenizer, TokenCounter>) {}

	static async load(encodings: Iterable<Tokenizer>): Promise<TokenCounters> {
		const map = new Map<Tokenizer, TokenCounter>();
		for (const encoding of new Set(encodings))
			map.set(encoding, await TiktokenCounter.load(encoding));
		return new TokenCounters(map);
	}

	get(encoding: Tokenizer): TokenCounter {
		const counter = this.byEncoding.get(encoding);
		if (counter === undefined) throw new Error(`tokenizer ${encoding} was not loaded at boot`);
		return counter;
	}
}
