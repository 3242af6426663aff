/**
 * Writes wasm/ranks/<encoding>.ranks for the built-in encodings, from the
 * ranks tiktoken ships (@dqbd/tiktoken's encoder files, the reference the
 * counter must match). `bun wasm/build.ts --check` proves they regenerate byte
 * for byte.
 *
 *   bun wasm/gen-ranks.ts   (run by wasm/build.ts)
 */
import { writeFileSync } from "node:fs";
import { encodeRanks, ranksFrom } from "../src/tokens/ranks.ts";

export const BUILTIN = ["cl100k_base", "o200k_base"] as const;

/** tiktoken's packed form: lines of `<ignored> <first rank> <base64 token> <base64 token> …`. */
export async function builtinRanks(encoding: (typeof BUILTIN)[number]): Promise<Uint8Array> {
	const file = Bun.file(
		new URL(`../node_modules/@dqbd/tiktoken/encoders/${encoding}.json`, import.meta.url),
	);
	const json: unknown = await file.json();
	if (typeof json !== "object" || json === null || !("bpe_ranks" in json)) {
		throw new Error(`${encoding}: no bpe_ranks`);
	}
	const packed = json.bpe_ranks;
	if (typeof packed !== "string") throw new Error(`${encoding}: bpe_ranks is not text`);
	const tokens: [Uint8Array, number][] = [];
	for (const line of packed.split("\n")) {
		if (line === "") continue;
		const [, first, ...items] = line.split(" ");
		const offset = Number(first);
		items.forEach((b64, i) => {
			tokens.push([Buffer.from(b64, "base64"), offset + i]);
		});
	}
	return encodeRanks(ranksFrom(tokens));
}

if (import.meta.main) {
	for (const encoding of BUILTIN) {
		const out = new URL(`./ranks/${encoding}.ranks`, import.meta.url);
		writeFileSync(out, await builtinRanks(encoding));
		console.log(`wrote ${out.pathname}`);
	}
}
