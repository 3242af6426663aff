import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import counterWasm from "../../wasm/counter.wasm" with { type: "file" };
import cl100kRanks from "../../wasm/ranks/cl100k_base.ranks" with { type: "file" };
import o200kRanks from "../../wasm/ranks/o200k_base.ranks" with { type: "file" };
import { decodeRanks, type Ranks } from "./ranks.ts";

/**
 * The token counter of wasm/ (its source: wasm/src/counter.ts): byte-pair
 * ranks in the module's memory, text written in as UTF-8, a count out. One
 * instance per encoding, shared by every model that uses it.
 */

/** A split the module does itself, or a regular expression applied here. */
export type Split = "cl100k_base" | "o200k_base" | RegExp;

const PATTERN_ID = { cl100k_base: 0, o200k_base: 1 } as const;

interface CounterExports {
	readonly memory: WebAssembly.Memory;
	alloc(size: number): number;
	useRanks(bytes: number, starts: number, count: number, table: number, size: number): void;
	count(ptr: number, len: number, last: number, pattern: number): number;
	consumedBytes(): number;
	countPiece(ptr: number, len: number): number;
}

type Fn = (...args: number[]) => number;

function exportsOf(instance: WebAssembly.Instance): CounterExports {
	const e = instance.exports;
	const fn = (name: string): Fn => {
		const f = e[name];
		if (typeof f !== "function") throw new Error(`wasm/counter.wasm does not export ${name}`);
		return (...args: number[]) => Number(f(...args));
	};
	const memory = e.memory;
	if (!(memory instanceof WebAssembly.Memory)) {
		throw new Error("wasm/counter.wasm does not export its memory");
	}
	const alloc = fn("alloc");
	const useRanks = fn("useRanks");
	const count = fn("count");
	const consumedBytes = fn("consumedBytes");
	const countPiece = fn("countPiece");
	return {
		memory,
		alloc,
		useRanks: (b, s, c, t, n) => {
			useRanks(b, s, c, t, n);
		},
		count,
		consumedBytes,
		countPiece,
	};
}

let compiled: WebAssembly.Module | undefined;

async function counterModule(): Promise<WebAssembly.Module> {
	compiled ??= new WebAssembly.Module(await Bun.file(counterWasm).arrayBuffer());
	return compiled;
}

/** Bytes of text the module reads at a time (it grows only for a single longer piece). */
const WINDOW = 32 * 1024;

const encoder = new TextEncoder();

/** One encoding loaded into one instance of the counter. */
export class WasmCounter {
	private input: number;
	private capacity: number;
	private bytes: Uint8Array;

	private constructor(
		private readonly wasm: CounterExports,
		private readonly split: Split,
		/** Bytes read at a time. */
		private readonly window: number,
	) {
		this.capacity = window;
		this.input = wasm.alloc(window);
		this.bytes = new Uint8Array(wasm.memory.buffer);
	}

	/** Loads `ranks` into a new instance counting with `split`, reading `window` bytes at a time. */
	static async load(ranks: Ranks, split: Split, window = WINDOW): Promise<WasmCounter> {
		const instance = new WebAssembly.Instance(await counterModule(), {});
		const wasm = exportsOf(instance);
		const asBytes = (words: Uint32Array) =>
			new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
		const bytesAt = wasm.alloc(ranks.bytes.byteLength);
		const startsAt = wasm.alloc(ranks.starts.byteLength);
		const tableAt = wasm.alloc(ranks.table.byteLength);
		const memory = new Uint8Array(wasm.memory.buffer);
		memory.set(ranks.bytes, bytesAt);
		memory.set(asBytes(ranks.starts), startsAt);
		memory.set(asBytes(ranks.table), tableAt);
		wasm.useRanks(bytesAt, startsAt, ranks.count, tableAt, ranks.table.length);
		return new WasmCounter(wasm, split, window);
	}

	/**
	 * Loads a `.ranks` file (src/tokens/ranks.ts) by reading it straight into the
	 * instance's memory, where it is used in place: no copy of it stays behind in
	 * the JavaScript heap.
	 */
	static async loadFile(path: string, split: Split, window = WINDOW): Promise<WasmCounter> {
		const instance = new WebAssembly.Instance(await counterModule(), {});
		const wasm = exportsOf(instance);
		let fd: number;
		try {
			fd = openSync(path, "r");
		} catch {
			// Where the file cannot be opened as one (an embedded file on some platforms): read it whole.
			return WasmCounter.load(decodeRanks(await Bun.file(path).bytes()), split, window);
		}
		try {
			const size = fstatSync(fd).size;
			const at = wasm.alloc(size);
			const into = new Uint8Array(wasm.memory.buffer, at, size);
			let read = 0;
			while (read < size) {
				const n = readSync(fd, into, read, size - read, read);
				if (n === 0) break;
				read += n;
			}
			const { count, starts, table, bytes } = decodeRanks(into.subarray(0, read));
			if (starts.buffer !== wasm.memory.buffer || table.buffer !== wasm.memory.buffer) {
				throw new Error(`${path}: the ranks were not read in place`);
			}
			wasm.useRanks(bytes.byteOffset, starts.byteOffset, count, table.byteOffset, table.length);
		} finally {
			closeSync(fd);
		}
		return new WasmCounter(wasm, split, window);
	}

	/** Bytes of linear memory this encoding holds (ranks, lookup table, buffers). */
	get memoryBytes(): number {
		return this.wasm.memory.buffer.byteLength;
	}

	/** The input buffer as bytes, kept until the memory grows or the buffer moves. */
	private inputView: Uint8Array | undefined;

	private inputBytes(): Uint8Array {
		const view = this.view();
		if (this.inputView === undefined || this.inputView.buffer !== view.buffer) {
			this.inputView = view.subarray(this.input, this.input + this.capacity);
		}
		return this.inputView;
	}

	/** The module's memory as bytes (a new view after the memory has grown). */
	private view(): Uint8Array {
		if (this.bytes.byteLength === 0 || this.bytes.buffer !== this.wasm.memory.buffer) {
			this.bytes = new Uint8Array(this.wasm.memory.buffer);
		}
		return this.bytes;
	}

	private grow(atLeast: number): void {
		let capacity = this.capacity;
		while (capacity < atLeast) capacity *= 2;
		this.input = this.wasm.alloc(capacity);
		this.capacity = capacity;
		this.inputView = undefined;
	}

	/** Tokens in `text`, exactly as tiktoken counts it with these ranks (special-token strings as text). */
	count(text: string): number {
		if (typeof this.split !== "string") return this.countByRegExp(text, this.split);
		if (text.length === 0) return 0;
		if (text.length * 3 <= this.capacity) {
			const { written } = encoder.encodeInto(text, this.inputBytes());
			return this.wasm.count(this.input, written, 1, PATTERN_ID[this.split]);
		}
		let total = 0;
		for (const n of this.windows(encoder.encode(text))) total += n;
		return total;
	}

	/**
	 * The same count a window at a time, the event loop served between windows,
	 * so a huge prompt does not hold up other requests.
	 */
	async countAhead(text: string): Promise<number> {
		if (typeof this.split !== "string") return this.count(text);
		let total = 0;
		for (const n of this.windows(encoder.encode(text))) {
			total += n;
			await new Promise<void>((resolve) => setImmediate(resolve));
		}
		return total;
	}

	/** Counts of successive windows of `utf8`, each ending where a piece ends. */
	private *windows(utf8: Uint8Array): Iterable<number> {
		if (typeof this.split !== "string") throw new Error("windows need the module's own split");
		const pattern = PATTERN_ID[this.split];
		let at = 0;
		let window = this.window;
		while (at < utf8.byteLength) {
			const n = Math.min(window, utf8.byteLength - at);
			const last = at + n === utf8.byteLength;
			if (n > this.capacity) this.grow(n);
			this.view().set(utf8.subarray(at, at + n), this.input);
			const tokens = this.wasm.count(this.input, n, last ? 1 : 0, pattern);
			const used = last ? n : this.wasm.consumedBytes();
			if (used === 0) {
				// One piece longer than the window: read it whole.
				window *= 2;
				continue;
			}
			window = this.window;
			at += used;
			yield tokens;
		}
	}

	private countByRegExp(text: string, split: RegExp): number {
		let total = 0;
		for (const match of text.matchAll(split)) {
			const piece = match[0];
			if (piece.length === 0) continue;
			if (piece.length * 3 > this.capacity) this.grow(piece.length * 3);
			const { written } = encoder.encodeInto(piece, this.inputBytes());
			total += this.wasm.countPiece(this.input, written);
		}
		return total;
	}
}

const BUILTIN_RANKS = { cl100k_base: cl100kRanks, o200k_base: o200kRanks } as const;
const builtins = new Map<string, Promise<WasmCounter>>();

/** tiktoken's cl100k_base or o200k_base, loaded once per process. */
export function builtinCounter(encoding: "cl100k_base" | "o200k_base"): Promise<WasmCounter> {
	let loaded = builtins.get(encoding);
	if (loaded === undefined) {
		loaded = WasmCounter.loadFile(BUILTIN_RANKS[encoding], encoding);
		builtins.set(encoding, loaded);
		loaded.catch(() => builtins.delete(encoding));
	}
	return loaded;
}
