/**
 * Byte-pair ranks in the form the WASM counter takes: every token's bytes end
 * to end, and where each starts, by rank (one more entry than ranks, the last
 * the total; a rank with no token is empty).
 *
 * Built-in encodings ship as `.ranks` files (wasm/gen-ranks.ts): a u32 count,
 * the starts, then the bytes, little-endian. Rank files of the tiktoken format
 * (`<base64 token> <rank>` per line: `.tiktoken`, Llama 3's `tokenizer.model`)
 * are read with `parseRankFile`.
 */
export interface Ranks {
	readonly count: number;
	readonly starts: Uint32Array;
	readonly bytes: Uint8Array;
}

/** The `.ranks` file form of `ranks`. */
export function encodeRanks(ranks: Ranks): Uint8Array {
	const out = new Uint8Array(4 + ranks.starts.byteLength + ranks.bytes.byteLength);
	const view = new DataView(out.buffer);
	view.setUint32(0, ranks.count, true);
	for (let i = 0; i < ranks.starts.length; i++) {
		view.setUint32(4 + 4 * i, ranks.starts[i] ?? 0, true);
	}
	out.set(ranks.bytes, 4 + ranks.starts.byteLength);
	return out;
}

/** Reads a `.ranks` file, checking that it holds what its header says. */
export function decodeRanks(file: Uint8Array): Ranks {
	const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
	const count = file.byteLength >= 4 ? view.getUint32(0, true) : 0;
	const startsBytes = 4 * (count + 1);
	if (count === 0 || file.byteLength < 4 + startsBytes) throw new Error("not a ranks file");
	const starts = new Uint32Array(count + 1);
	for (let i = 0; i <= count; i++) starts[i] = view.getUint32(4 + 4 * i, true);
	const bytes = file.subarray(4 + startsBytes);
	if (starts[count] !== bytes.byteLength) throw new Error("ranks file is cut short");
	return { count, starts, bytes };
}

/** Ranks from `(bytes, rank)` pairs; ranks may have gaps. */
export function ranksFrom(tokens: Iterable<readonly [Uint8Array, number]>): Ranks {
	const byRank: Uint8Array[] = [];
	let total = 0;
	for (const [token, rank] of tokens) {
		byRank[rank] = token;
		total += token.byteLength;
	}
	const count = byRank.length;
	const starts = new Uint32Array(count + 1);
	const bytes = new Uint8Array(total);
	let at = 0;
	for (let rank = 0; rank < count; rank++) {
		starts[rank] = at;
		const token = byRank[rank];
		if (token !== undefined) {
			bytes.set(token, at);
			at += token.byteLength;
		}
	}
	starts[count] = at;
	return { count, starts, bytes };
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * A tiktoken rank file: `<base64 of the token's bytes> <rank>` per line. Throws
 * naming the first line that is not of that form, or when it has fewer than the
 * 256 single bytes.
 */
export function parseRankFile(text: string): Ranks {
	const tokens: [Uint8Array, number][] = [];
	let lineNo = 0;
	for (const line of text.split("\n")) {
		lineNo++;
		const trimmed = line.trim();
		if (trimmed === "") continue;
		const space = trimmed.indexOf(" ");
		const rank = space < 0 ? Number.NaN : Number(trimmed.slice(space + 1));
		const token = space < 0 ? "" : trimmed.slice(0, space);
		if (!Number.isInteger(rank) || rank < 0 || rank > 0x3fffffff || !BASE64.test(token)) {
			throw new Error(
				`line ${lineNo} is not "<base64 token> <rank>" (not a tiktoken rank file?): ${JSON.stringify(trimmed.slice(0, 60))}`,
			);
		}
		tokens.push([Buffer.from(token, "base64"), rank]);
	}
	if (tokens.length < 256) {
		throw new Error(`${tokens.length} tokens: a rank file has at least the 256 single bytes`);
	}
	return ranksFrom(tokens);
}
