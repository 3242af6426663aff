/**
 * Byte-pair ranks in the form the WASM counter takes: every token's bytes end
 * to end, where each starts, by rank (one more entry than ranks, the last the
 * total; a rank with no token is empty), and the lookup table (rank + 1 at each
 * token's slot by `hashOf`, open addressing; 0 for an empty slot).
 *
 * Built-in encodings ship as `.ranks` files (wasm/gen-ranks.ts): a u32 count,
 * a u32 table size, the starts, the table, then the bytes, little-endian (the
 * byte order of every platform Bun runs on, which lets them be read in place):
 * loading one is a copy, with nothing to compute at boot. Rank files of the tiktoken format
 * (`<base64 token> <rank>` per line: `.tiktoken`, Llama 3's `tokenizer.model`)
 * are read with `parseRankFile`.
 */
export interface Ranks {
	readonly count: number;
	readonly starts: Uint32Array;
	readonly bytes: Uint8Array;
	readonly table: Uint32Array;
}

/** The `.ranks` file form of `ranks`. */
export function encodeRanks(ranks: Ranks): Uint8Array {
	const words = 2 + ranks.starts.length + ranks.table.length;
	const out = new Uint8Array(4 * words + ranks.bytes.byteLength);
	const view = new DataView(out.buffer);
	view.setUint32(0, ranks.count, true);
	view.setUint32(4, ranks.table.length, true);
	let at = 8;
	for (const list of [ranks.starts, ranks.table]) {
		for (const v of list) {
			view.setUint32(at, v, true);
			at += 4;
		}
	}
	out.set(ranks.bytes, at);
	return out;
}

/** Reads a `.ranks` file, checking that it holds what its header says. */
export function decodeRanks(file: Uint8Array): Ranks {
	const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
	const count = file.byteLength >= 8 ? view.getUint32(0, true) : 0;
	const size = file.byteLength >= 8 ? view.getUint32(4, true) : 0;
	const head = 4 * (2 + count + 1 + size);
	if (count === 0 || size !== tableSize(count) || file.byteLength < head) {
		throw new Error("not a ranks file");
	}
	// Views where the file's buffer allows it (read in place, not copied).
	const words = (at: number, n: number) =>
		(file.byteOffset + at) % 4 === 0
			? new Uint32Array(file.buffer, file.byteOffset + at, n)
			: Uint32Array.from({ length: n }, (_, i) => view.getUint32(at + 4 * i, true));
	const starts = words(8, count + 1);
	const table = words(8 + 4 * (count + 1), size);
	const bytes = file.subarray(head);
	if (starts[count] !== bytes.byteLength) throw new Error("ranks file is cut short");
	return { count, starts, bytes, table };
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
	const table = new Uint32Array(tableSize(count));
	fillTable(table, { count, starts, bytes });
	return { count, starts, bytes, table };
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

/**
 * The hash the WASM counter looks tokens up by (wasm/src/counter.ts, `hashOf`):
 * the same arithmetic on 32-bit words, so a table built here is read there.
 */
export function hashOf(bytes: Uint8Array, at: number, n: number): number {
	let h = Math.imul(n, 0x9e3779b1);
	let i = 0;
	for (; i + 4 <= n; i += 4) {
		const p = at + i;
		const word =
			(bytes[p] ?? 0) |
			((bytes[p + 1] ?? 0) << 8) |
			((bytes[p + 2] ?? 0) << 16) |
			((bytes[p + 3] ?? 0) << 24);
		const x = Math.imul(h ^ word, 0x85ebca77);
		h = (x << 13) | (x >>> 19);
	}
	for (; i < n; i++) h = Math.imul(h ^ (bytes[at + i] ?? 0), 0xc2b2ae3d);
	h ^= h >>> 16;
	h = Math.imul(h, 0x7feb352d);
	h ^= h >>> 15;
	return h >>> 0;
}

/** Slots of the lookup table for `count` tokens: a power of two, at least twice as many. */
export function tableSize(count: number): number {
	let size = 1024;
	while (size < count * 2) size *= 2;
	return size;
}

/**
 * Fills `table` (zeroed, tableSize(count) slots) with rank + 1 at each token's
 * slot, by open addressing on hashOf. Empty ranks are left out.
 */
function fillTable(table: Uint32Array, ranks: Omit<Ranks, "table">): void {
	const mask = table.length - 1;
	const { starts, bytes, count } = ranks;
	for (let rank = 0; rank < count; rank++) {
		const start = starts[rank] ?? 0;
		const n = (starts[rank + 1] ?? 0) - start;
		if (n === 0) continue;
		let i = hashOf(bytes, start, n) & mask;
		while (table[i] !== 0) i = (i + 1) & mask;
		table[i] = rank + 1;
	}
}
