import { Tiktoken } from "@dqbd/tiktoken/lite";
import type { Tokenizer } from "../config/schema.ts";

/** Counts tokens of plain text. */
export interface TokenCounter {
	readonly encoding: Tokenizer;
	count(text: string): number;
}

interface RankFile {
	bpe_ranks: string;
	special_tokens: Record<string, number>;
	pat_str: string;
}

async function rankFile(encoding: Tokenizer): Promise<RankFile> {
	switch (encoding) {
		case "cl100k_base":
			return (await import("@dqbd/tiktoken/encoders/cl100k_base.json")).default;
		case "o200k_base":
			return (await import("@dqbd/tiktoken/encoders/o200k_base.json")).default;
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

/** Texts shorter than this are counted directly; caching them costs more than it saves. */
const CACHE_MIN_CHARS = 64;
const CACHE_MAX_ENTRIES = 20_000;

/**
 * tiktoken's WASM BPE, counting user text as ordinary text: special-token
 * strings such as `<|endoftext|>` are counted, never rejected, and the slow
 * special-token scan is skipped. Long texts are remembered (bounded, oldest
 * evicted first) so a chat that resends its history does not pay again for
 * messages already counted.
 */
export class TiktokenCounter implements TokenCounter {
	/** Counts of long texts by a 64-bit hash of their content (the texts themselves are not kept). */
	private readonly cache = new Map<bigint, number>();
	/** Long texts answered from the cache (a resent chat history). */
	cacheHits = 0;

	private constructor(
		readonly encoding: Tokenizer,
		private readonly bpe: Tiktoken,
	) {}

	static async load(encoding: Tokenizer): Promise<TiktokenCounter> {
		const ranks = await rankFile(encoding);
		return new TiktokenCounter(
			encoding,
			new Tiktoken(ranks.bpe_ranks, ranks.special_tokens, ranks.pat_str),
		);
	}

	count(text: string): number {
		if (text.length === 0) return 0;
		if (text.length < CACHE_MIN_CHARS) return this.bpe.encode_ordinary(text).length;
		const key = contentKey(text);
		const hit = this.cache.get(key);
		if (hit !== undefined) {
			this.cacheHits++;
			return hit;
		}
		const n = this.bpe.encode_ordinary(text).length;
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
