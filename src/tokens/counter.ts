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
	private readonly cache = new Map<string, number>();

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
		const hit = this.cache.get(text);
		if (hit !== undefined) return hit;
		const n = this.bpe.encode_ordinary(text).length;
		if (this.cache.size >= CACHE_MAX_ENTRIES) {
			const oldest = this.cache.keys().next();
			if (oldest.done !== true) this.cache.delete(oldest.value);
		}
		this.cache.set(text, n);
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
