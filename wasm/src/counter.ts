// The gateway's token counter: count-only byte-pair encoding over UTF-8 text in
// this module's memory. One instance holds one encoding's rank table; the host
// writes text into a buffer it allocated here and asks for a number.
//
// Split patterns, hand-written (no regular-expression engine), each giving the
// pieces tiktoken's regular expression gives:
//   0  cl100k_base (also Llama 3's rank files):
//      (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//      | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   1  o200k_base:
//      [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|…|'d)?
//      |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|…|'d)?
//      |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Alternatives are tried in order and the first that matches wins, with the
// backtracking the expression implies (see each scanner).

import { BLOCK_SHIFT, STAGE1, STAGE2 } from "./unicode";

// Character classes (wasm/gen-unicode.ts); END stands for "no character here".
const OTHER: u32 = 0;
const LU: u32 = 1;
const LL: u32 = 2;
const LT: u32 = 3;
const LM: u32 = 4;
const LO: u32 = 5;
const MARK: u32 = 6;
const NUM: u32 = 7;
const SPACE: u32 = 8;
const END: u32 = 15;

const LETTER: u32 = (1 << LU) | (1 << LL) | (1 << LT) | (1 << LM) | (1 << LO);
/** [^\s\p{L}\p{N}]: neither space, letter nor number. */
const SYMBOL: u32 = (1 << OTHER) | (1 << MARK);
/** [^\r\n\p{L}\p{N}] apart from \r and \n themselves. */
const PREFIX: u32 = (1 << OTHER) | (1 << MARK) | (1 << SPACE);
/** o200k's [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]. */
const UPPER: u32 = (1 << LU) | (1 << LT) | (1 << LM) | (1 << LO) | (1 << MARK);
/** o200k's [\p{Ll}\p{Lm}\p{Lo}\p{M}]. */
const LOWER: u32 = (1 << LL) | (1 << LM) | (1 << LO) | (1 << MARK);

const NONE: u32 = 0xffffffff;
const DEAD: u32 = 0xfffffffe;

// ---------------------------------------------------------------------------
// Memory: a bump allocator (the host allocates the input buffer and the rank
// table once; merging scratch grows and is reused).

let top: usize = 0;

export function alloc(size: usize): usize {
	if (top == 0) top = (__heap_base + 15) & ~(<usize>15);
	const at = top;
	top = (top + size + 15) & ~(<usize>15);
	const have = (<usize>memory.size()) << 16;
	if (top > have) {
		const pages = <i32>((top - have + 0xffff) >> 16);
		if (memory.grow(pages) < 0) unreachable();
	}
	return at;
}

let scratch: usize = 0;
let scratchSize: usize = 0;

function scratchOf(size: usize): usize {
	if (size > scratchSize) {
		scratchSize = size < 4096 ? 4096 : size + (size >> 1);
		scratch = alloc(scratchSize);
	}
	return scratch;
}

// ---------------------------------------------------------------------------
// Characters

/** One past the text's last byte. */
let limit: usize = 0;
/** Whether a scanner looked at (or past) the end of the text: a cut text may go on there. */
let sawEnd: bool = false;
/** Bytes of the character `charAt` read last. */
let width: usize = 0;

/** The code point at `p`, or -1 at the end of the text (setting sawEnd). */
@inline
function charAt(p: usize): i32 {
	if (p >= limit) {
		sawEnd = true;
		width = 0;
		return -1;
	}
	const b0 = <u32>load<u8>(p);
	if (b0 < 0x80) {
		width = 1;
		return <i32>b0;
	}
	const n: usize = b0 < 0xe0 ? 2 : b0 < 0xf0 ? 3 : 4;
	if (p + n > limit) {
		// A character cut by the end of a slice.
		sawEnd = true;
		width = 0;
		return -1;
	}
	width = n;
	if (n == 2) return <i32>(((b0 & 0x1f) << 6) | (<u32>load<u8>(p + 1) & 0x3f));
	if (n == 3) {
		return <i32>(
			((b0 & 0x0f) << 12) |
			((<u32>load<u8>(p + 1) & 0x3f) << 6) |
			(<u32>load<u8>(p + 2) & 0x3f)
		);
	}
	return <i32>(
		((b0 & 0x07) << 18) |
		((<u32>load<u8>(p + 1) & 0x3f) << 12) |
		((<u32>load<u8>(p + 2) & 0x3f) << 6) |
		(<u32>load<u8>(p + 3) & 0x3f)
	);
}

@inline
function classOf(c: i32): u32 {
	if (c < 0) return END;
	const cp = <u32>c;
	const block = <usize>load<u8>(STAGE1 + <usize>(cp >> BLOCK_SHIFT));
	return <u32>load<u8>(STAGE2 + (block << BLOCK_SHIFT) + <usize>(cp & ((1 << BLOCK_SHIFT) - 1)));
}

@inline
function is(cls: u32, set: u32): bool {
	return ((1 << cls) & set) != 0;
}

// ---------------------------------------------------------------------------
// Scanners shared by both patterns. Each returns where its run ends.

/** Characters of `set` from `p` on. */
function runOf(p: usize, set: u32): usize {
	while (true) {
		const c = charAt(p);
		if (!is(classOf(c), set)) return p;
		p += width;
	}
}

/** \r and \n from `p` on (and `/` when `slash`). */
function breaksFrom(p: usize, slash: bool): usize {
	while (true) {
		const c = charAt(p);
		if (c == 10 || c == 13 || (slash && c == 47)) p += 1;
		else return p;
	}
}

/** (?i:'s|'t|'re|'ve|'m|'ll|'d) at `p` (which holds an apostrophe): its end, or 0. */
function contraction(p: usize): usize {
	const c1 = charAt(p + 1);
	// Case-insensitive as tiktoken's expression: `s` also matches U+017F (long s).
	if (
		c1 == 115 || c1 == 83 || c1 == 0x17f || c1 == 116 || c1 == 84 ||
		c1 == 109 || c1 == 77 || c1 == 100 || c1 == 68
	) {
		return p + 1 + width;
	}
	if (c1 == 114 || c1 == 82 || c1 == 118 || c1 == 86) {
		const c2 = charAt(p + 2);
		return c2 == 101 || c2 == 69 ? p + 3 : 0;
	}
	if (c1 == 108 || c1 == 76) {
		const c2 = charAt(p + 2);
		return c2 == 108 || c2 == 76 ? p + 3 : 0;
	}
	return 0;
}

/** \p{N}{1,3}, the first number at `p` being `w` bytes. */
function digits(p: usize, w: usize): usize {
	let q = p + w;
	for (let n = 1; n < 3; n++) {
		const c = charAt(q);
		if (classOf(c) != NUM) return q;
		q += width;
	}
	return q;
}

/** \s*[\r\n]+|\s+(?!\S)|\s+ at `p`, a space of `w` bytes. */
function spaces(p: usize, w: usize): usize {
	let q = p + w;
	let last = p;
	let breakEnd: usize = 0;
	const c0 = charAt(p);
	if (c0 == 10 || c0 == 13) breakEnd = q;
	let atEnd = false;
	while (true) {
		const c = charAt(q);
		if (c < 0) {
			atEnd = true;
			break;
		}
		if (classOf(c) != SPACE) break;
		last = q;
		q += width;
		if (c == 10 || c == 13) breakEnd = q;
	}
	// \s*[\r\n]+: up to the run's last line break.
	if (breakEnd != 0) return breakEnd;
	// \s+(?!\S): the whole run at the end of the text, else all but its last space.
	if (atEnd || last == p) return q;
	return last;
}

// ---------------------------------------------------------------------------
// The patterns: where the piece starting at `p` ends.

function pieceCl100k(p: usize): usize {
	const c0 = charAt(p);
	const w0 = width;
	const k0 = classOf(c0);
	if (c0 == 39) {
		const end = contraction(p);
		if (end != 0) return end;
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if (is(k0, LETTER)) return runOf(p + w0, LETTER);
	if (is(k0, PREFIX) && c0 != 10 && c0 != 13) {
		const c1 = charAt(p + w0);
		const w1 = width;
		if (is(classOf(c1), LETTER)) return runOf(p + w0 + w1, LETTER);
	}
	// \p{N}{1,3}
	if (k0 == NUM) return digits(p, w0);
	// ' ?[^\s\p{L}\p{N}]+[\r\n]*'
	if (c0 == 32) {
		const c1 = charAt(p + 1);
		if (is(classOf(c1), SYMBOL)) return breaksFrom(runOf(p + 1 + width, SYMBOL), false);
	}
	if (is(k0, SYMBOL)) return breaksFrom(runOf(p + w0, SYMBOL), false);
	return spaces(p, w0);
}

/**
 * [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+ at `p`: the greedy
 * first part gives back characters until the second can start, so the second
 * starts at the first character after the first part's run if that is a
 * lower-case letter, else at the run's last character that is in both sets.
 * Its end, or 0.
 */
function o200kLowerWord(p: usize): usize {
	let q = p;
	let lastBoth: usize = 0;
	let both = false;
	while (true) {
		const c = charAt(q);
		const k = classOf(c);
		if (!is(k, UPPER)) {
			if (is(k, LOWER)) return runOf(q, LOWER);
			break;
		}
		if (is(k, LOWER)) {
			lastBoth = q;
			both = true;
		}
		q += width;
	}
	return both ? runOf(lastBoth, LOWER) : 0;
}

/** [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]* at `p`: its end, or 0. */
function o200kUpperWord(p: usize): usize {
	const q = runOf(p, UPPER);
	return q == p ? 0 : runOf(q, LOWER);
}

/** The optional (?i:'s|'t|'re|'ve|'m|'ll|'d) after a word ending at `p`. */
function withContraction(p: usize): usize {
	if (charAt(p) != 39) return p;
	const end = contraction(p);
	return end != 0 ? end : p;
}

function pieceO200k(p: usize): usize {
	const c0 = charAt(p);
	const w0 = width;
	const k0 = classOf(c0);
	const prefix = is(k0, PREFIX) && c0 != 10 && c0 != 13;
	let end: usize = 0;
	if (prefix) end = o200kLowerWord(p + w0);
	if (end == 0) end = o200kLowerWord(p);
	if (end == 0 && prefix) end = o200kUpperWord(p + w0);
	if (end == 0) end = o200kUpperWord(p);
	if (end != 0) return withContraction(end);
	if (k0 == NUM) return digits(p, w0);
	// ' ?[^\s\p{L}\p{N}]+[\r\n/]*'
	if (c0 == 32) {
		const c1 = charAt(p + 1);
		if (is(classOf(c1), SYMBOL)) return breaksFrom(runOf(p + 1 + width, SYMBOL), true);
	}
	if (is(k0, SYMBOL)) return breaksFrom(runOf(p + w0, SYMBOL), true);
	return spaces(p, w0);
}

// ---------------------------------------------------------------------------
// Ranks: every token's bytes end to end, where each starts (by rank, one more
// entry than tokens), and an open-addressing table of rank + 1 by the bytes' hash.

let tokenBytes: usize = 0;
let tokenStarts: usize = 0;
let table: usize = 0;
let tableMask: u32 = 0;

@inline
function hashOf(p: usize, n: usize): u32 {
	let h: u32 = (<u32>n) * 0x9e3779b1;
	let i: usize = 0;
	while (i + 4 <= n) {
		h = rotl<u32>((h ^ load<u32>(p + i)) * 0x85ebca77, 13);
		i += 4;
	}
	while (i < n) {
		h = (h ^ <u32>load<u8>(p + i)) * 0xc2b2ae3d;
		i++;
	}
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	return h;
}

@inline
function sameBytes(a: usize, b: usize, n: usize): bool {
	let i: usize = 0;
	while (i + 4 <= n) {
		if (load<u32>(a + i) != load<u32>(b + i)) return false;
		i += 4;
	}
	while (i < n) {
		if (load<u8>(a + i) != load<u8>(b + i)) return false;
		i++;
	}
	return true;
}

/** The rank of bytes [p, p + n), or NONE. */
function rankOf(p: usize, n: usize): u32 {
	let i = hashOf(p, n) & tableMask;
	while (true) {
		const slot = load<u32>(table + ((<usize>i) << 2));
		if (slot == 0) return NONE;
		const rank = slot - 1;
		const start = load<u32>(tokenStarts + ((<usize>rank) << 2));
		const end = load<u32>(tokenStarts + ((<usize>rank + 1) << 2));
		if (<usize>(end - start) == n && sameBytes(tokenBytes + <usize>start, p, n)) return rank;
		i = (i + 1) & tableMask;
	}
}

/**
 * Takes the ranks the host wrote: `count` tokens' bytes at `bytes`, at `starts`
 * where each begins (count + 1 u32s, the last the total; a rank with no token is
 * an empty one), and the lookup table built with the same hash
 * (src/tokens/ranks.ts): `size` u32 slots of rank + 1, 0 for none. The built-in
 * encodings ship their table in their `.ranks` file, so loading one computes
 * nothing at boot.
 */
export function useRanks(bytes: usize, starts: usize, count: u32, tableAt: usize, size: u32): void {
	tokenBytes = bytes;
	tokenStarts = starts;
	table = tableAt;
	tableMask = size - 1;
}

// ---------------------------------------------------------------------------
// Byte-pair merging, counting what is left: tiktoken's rule (merge the pair of
// lowest rank, the leftmost of equals, until no pair has a rank).

/** Pieces longer than this merge with a heap (n log n) instead of scanning for the lowest rank. */
const SCAN_MAX: usize = 96;

function mergeCount(p: usize, n: usize): u32 {
	if (n == 1) return 1;
	if (rankOf(p, n) != NONE) return 1;
	return n <= SCAN_MAX ? mergeByScan(p, n) : mergeByHeap(p, n);
}

/** tiktoken's own loop: boundaries and the rank of the pair starting at each. */
function mergeByScan(p: usize, n: usize): u32 {
	const starts = scratchOf((n + 1) << 3);
	const ranks = starts + ((n + 1) << 2);
	for (let i: usize = 0; i <= n; i++) store<u32>(starts + (i << 2), <u32>i);
	for (let i: usize = 0; i + 1 < n; i++) store<u32>(ranks + (i << 2), rankOf(p + i, 2));
	store<u32>(ranks + ((n - 1) << 2), NONE);
	store<u32>(ranks + (n << 2), NONE);
	let m = n + 1;
	while (true) {
		let best = NONE;
		let at: usize = 0;
		for (let i: usize = 0; i + 1 < m; i++) {
			const r = load<u32>(ranks + (i << 2));
			if (r < best) {
				best = r;
				at = i;
			}
		}
		if (best == NONE) break;
		const s = load<u32>(starts + (at << 2));
		store<u32>(
			ranks + (at << 2),
			at + 3 < m ? rankOf(p + <usize>s, <usize>(load<u32>(starts + ((at + 3) << 2)) - s)) : NONE,
		);
		if (at > 0) {
			const b = load<u32>(starts + ((at - 1) << 2));
			store<u32>(
				ranks + ((at - 1) << 2),
				rankOf(p + <usize>b, <usize>(load<u32>(starts + ((at + 2) << 2)) - b)),
			);
		}
		// Remove boundary at + 1.
		const tail = (m - at - 2) << 2;
		memory.copy(starts + ((at + 1) << 2), starts + ((at + 2) << 2), tail);
		memory.copy(ranks + ((at + 1) << 2), ranks + ((at + 2) << 2), tail);
		m--;
	}
	return <u32>(m - 1);
}

/**
 * The same merges for long pieces: parts as a linked list over byte offsets,
 * pairs in a min-heap by (rank, offset), stale entries skipped when popped.
 */
function mergeByHeap(p: usize, n: usize): u32 {
	const words = (n + 1) << 2;
	const heapCap: usize = n * 3 + 4;
	const base = scratchOf(3 * words + (heapCap << 3));
	const next = base;
	const prev = base + words;
	const pair = base + 2 * words;
	const heap = base + 3 * words;
	let size: usize = 0;
	for (let i: usize = 0; i < n; i++) {
		store<u32>(next + (i << 2), <u32>(i + 1));
		store<u32>(prev + (i << 2), <u32>(i - 1));
		const r = i + 2 <= n ? rankOf(p + i, 2) : NONE;
		store<u32>(pair + (i << 2), r);
		if (r != NONE) size = heapPush(heap, size, ((<u64>r) << 32) | <u64>i);
	}
	let parts = <u32>n;
	while (size > 0) {
		const first = load<u64>(heap);
		size = heapPop(heap, size);
		const r = <u32>(first >> 32);
		const i = <usize>(<u32>first);
		if (load<u32>(pair + (i << 2)) != r) continue;
		const j = <usize>load<u32>(next + (i << 2));
		const k = <usize>load<u32>(next + (j << 2));
		store<u32>(next + (i << 2), <u32>k);
		if (k < n) store<u32>(prev + (k << 2), <u32>i);
		store<u32>(pair + (j << 2), DEAD);
		parts--;
		const after = k < n ? rankOf(p + i, <usize>load<u32>(next + (k << 2)) - i) : NONE;
		store<u32>(pair + (i << 2), after);
		if (after != NONE) size = heapPush(heap, size, ((<u64>after) << 32) | <u64>i);
		if (i > 0) {
			const h = <usize>load<u32>(prev + (i << 2));
			const before = rankOf(p + h, k - h);
			store<u32>(pair + (h << 2), before);
			if (before != NONE) size = heapPush(heap, size, ((<u64>before) << 32) | <u64>h);
		}
	}
	return parts;
}

function heapPush(heap: usize, size: usize, key: u64): usize {
	let i = size;
	while (i > 0) {
		const parent = (i - 1) >> 1;
		const up = load<u64>(heap + (parent << 3));
		if (up <= key) break;
		store<u64>(heap + (i << 3), up);
		i = parent;
	}
	store<u64>(heap + (i << 3), key);
	return size + 1;
}

function heapPop(heap: usize, size: usize): usize {
	const n = size - 1;
	if (n == 0) return 0;
	const key = load<u64>(heap + (n << 3));
	let i: usize = 0;
	while (true) {
		let child: usize = i * 2 + 1;
		if (child >= n) break;
		let c = load<u64>(heap + (child << 3));
		if (child + 1 < n) {
			const d = load<u64>(heap + ((child + 1) << 3));
			if (d < c) {
				c = d;
				child++;
			}
		}
		if (key <= c) break;
		store<u64>(heap + (i << 3), c);
		i = child;
	}
	store<u64>(heap + (i << 3), key);
	return n;
}

// ---------------------------------------------------------------------------
// Counting

let consumed: usize = 0;

/**
 * How far a piece is looked for. Scanning stops this many bytes after a piece's
 * start; a piece that reaches that far (a run of letters, symbols or spaces with
 * no break for 16 KB: padding, a blob, repeated characters, never prose) is
 * merged up to there, cut where a character starts, and the text is split again
 * from the cut. This bounds the time one merge holds the thread (a few ms) and
 * the scratch memory, which a module cannot give back, and makes a piece depend
 * only on the 16 KB after its start, so that counting slice by slice gives the
 * whole text's count. Such a run's count may differ from tiktoken's by a token or
 * so per cut; every other text counts exactly as tiktoken.
 */
const MAX_PIECE: usize = 16384;

/** Where to cut a long piece starting at `p`: MAX_PIECE bytes on, moved back to a character's start. */
function cutOf(p: usize): usize {
	let cut = p + MAX_PIECE;
	while ((load<u8>(cut) & 0xc0) == 0x80) cut--;
	return cut;
}

/**
 * Tokens in the UTF-8 text at [ptr, ptr + len), split by `pattern` (0 cl100k,
 * 1 o200k). When `last` is false the text is a slice that goes on: counting
 * stops before the first piece whose extent depends on what follows, and
 * `consumedBytes()` says where (the next slice starts there).
 */
export function count(ptr: usize, len: usize, last: bool, pattern: i32): u32 {
	limit = ptr + len;
	let p = ptr;
	let total: u32 = 0;
	const textEnd = limit;
	while (p < textEnd) {
		const cap = p + MAX_PIECE;
		const capped = cap < textEnd;
		limit = capped ? cap : textEnd;
		sawEnd = false;
		const end = pattern == 0 ? pieceCl100k(p) : pieceO200k(p);
		if (sawEnd) {
			if (capped) {
				// A piece that runs 16 KB without a break: merged up to the cut.
				const cut = cutOf(p);
				total += mergeCount(p, cut - p);
				p = cut;
				continue;
			}
			// The piece may go on past this slice: the next slice starts with it.
			if (!last) break;
		}
		total += mergeCount(p, end - p);
		p = end;
	}
	limit = textEnd;
	consumed = p - ptr;
	return total;
}

export function consumedBytes(): usize {
	return consumed;
}

/** Tokens of one piece the host split itself (a split pattern given as a regular expression). */
export function countPiece(ptr: usize, len: usize): u32 {
	return len == 0 ? 0 : mergeCount(ptr, len);
}
