/**
 * `bun perf/tokenizers-bench.ts [rounds=5]`: counting speed of every tokenizer
 * kind a model can be configured with, side by side in one process, one core,
 * on chat-message-sized texts of four kinds (English, TypeScript, JSON, Korean
 * with code), next to the reference tokenizers the tests compare them with.
 *
 *   cl100k_base            gpt-tokenizer with its merge cache (the built-in encoding)
 *   tiktoken-ranks         Llama 3's tokenizer.model, merged by the same BPE code
 *   huggingface (Llama 2)  tokenizer.json through @huggingface/tokenizers
 *   huggingface (Mistral)  the real Mistral 7B tokenizer.json
 *   huggingface (Llama 3)  byte-level tokenizer.json (the Qwen / Llama 3 shape)
 *
 * Texts are counted as they arrive (no per-message cache: every text is new to
 * the counter; the per-message cache in front of every kind is measured at the
 * end on a chat that resends its history).
 */
import llama2 from "llama-tokenizer-js";
import llama3 from "llama3-tokenizer-js";
import mistral from "mistral-tokenizer-js";
import type { ChatCompletionBody } from "../src/openai.ts";
import { CachedCounter, TiktokenCounter, type TokenCounter } from "../src/tokens/counter.ts";
import { chatPromptTokens } from "../src/tokens/estimate.ts";
import { loadHuggingFace, loadRankFile } from "../src/tokens/files.ts";
import { CORPUS } from "../test/support/corpus.ts";
import { writeTokenizerFixtures } from "../test/support/tokenizer-fixtures.ts";
import { pieces } from "./pieces.ts";

const rounds = Number(Bun.argv[2] ?? 5);
const ROOT = `${import.meta.dir}/..`;

const read = (p: string) => Bun.file(`${ROOT}/${p}`).text();
const sets = [
	{ kind: "English", texts: pieces(await read("README.md")) },
	{ kind: "TypeScript", texts: pieces(await read("src/completion/pipeline.ts")) },
	{
		kind: "JSON",
		texts: pieces(await read("deploy/monitoring/grafana-dashboard.json"), 1200, /\n/),
	},
	{ kind: "Korean + code", texts: pieces(Array(8).fill(CORPUS.korean).join("\n\n"), 800) },
];

interface Kind {
	readonly name: string;
	readonly loadMs: number;
	readonly count: (text: string) => number;
	/** The reference tokenizer's count of the same text, when there is one. */
	readonly reference?: { readonly name: string; readonly count: (text: string) => number };
}

const fx = await writeTokenizerFixtures();
const timed = async <T>(load: () => Promise<T>): Promise<[T, number]> => {
	const start = performance.now();
	const value = await load();
	return [value, performance.now() - start];
};
const [cl100k, cl100kMs] = await timed(() => TiktokenCounter.load("cl100k_base"));
const [ranks, ranksMs] = await timed(() => loadRankFile(fx.llama3Ranks, "llama3"));
const [l2, l2Ms] = await timed(() => loadHuggingFace(fx.llama2Dir));
const [mi, miMs] = await timed(() => loadHuggingFace(fx.mistralJson));
const [l3, l3Ms] = await timed(() => loadHuggingFace(fx.llama3Json));
const kinds: Kind[] = [
	// The built-in counter's count function without its per-message cache: a fresh
	// CachedCounter per text would cost more than it measures, so texts are made unique.
	{ name: "cl100k_base (built in)", loadMs: cl100kMs, count: (t) => cl100k.count(t) },
	{
		name: "tiktoken-ranks (Llama 3 tokenizer.model)",
		loadMs: ranksMs,
		count: (t) => ranks.counting.count(t),
		reference: {
			name: "llama3-tokenizer-js",
			count: (t) => llama3.encode(t, { bos: false, eos: false }).length,
		},
	},
	{
		name: "huggingface (Llama 2 tokenizer.json)",
		loadMs: l2Ms,
		count: (t) => l2.counting.count(t),
		reference: { name: "llama-tokenizer-js", count: (t) => llama2.encode(t, false, true).length },
	},
	{
		name: "huggingface (Mistral 7B tokenizer.json)",
		loadMs: miMs,
		count: (t) => mi.counting.count(t),
		reference: {
			name: "mistral-tokenizer-js",
			count: (t) => mistral.encode(t, false, true).length,
		},
	},
	{
		name: "huggingface (Llama 3 byte-level tokenizer.json)",
		loadMs: l3Ms,
		count: (t) => l3.counting.count(t),
		reference: {
			name: "llama3-tokenizer-js",
			count: (t) => llama3.encode(t, { bos: false, eos: false }).length,
		},
	},
];

/** Unique texts each pass (a numbered prefix), so no per-message cache can answer. */
let pass = 0;
function tokensPerSecond(count: (t: string) => number, texts: string[], minMs: number): number {
	let tokens = 0;
	const start = performance.now();
	let elapsed = 0;
	while (elapsed < minMs) {
		pass++;
		for (const t of texts) tokens += count(`${pass} ${t}`);
		elapsed = performance.now() - start;
	}
	return tokens / (elapsed / 1000);
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

const all = sets.flatMap((s) => s.texts);
for (const k of kinds) {
	if (k.reference === undefined) continue;
	const wrong = all.filter((t) => k.count(t) !== k.reference?.count(t)).length;
	if (wrong > 0) throw new Error(`${k.name}: ${wrong} texts counted unlike ${k.reference.name}`);
}
console.log(
	`${sets.map((s) => `${s.kind} ${s.texts.length} texts`).join(", ")}; every kind counts as its reference on all of them; ${rounds} rounds, one core\n`,
);

const counters = kinds.flatMap((k) => [
	{ name: k.name, count: k.count },
	...(k.reference === undefined
		? []
		: [{ name: `  reference: ${k.reference.name}`, count: k.reference.count }]),
]);
for (const c of counters) tokensPerSecond(c.count, all, 100);
const results = new Map<string, number[][]>();
for (let r = 0; r < rounds; r++) {
	for (const c of counters) {
		const runs = results.get(c.name) ?? sets.map(() => []);
		sets.forEach((s, i) => {
			runs[i]?.push(tokensPerSecond(c.count, s.texts, 150));
		});
		results.set(c.name, runs);
	}
}
console.log(`| tokenizer | load ms | ${sets.map((s) => s.kind).join(" | ")} | (tokens/s) |`);
console.log(`|---|---|${sets.map(() => "---").join("|")}|---|`);
for (const c of counters) {
	const k = kinds.find((x) => x.name === c.name);
	const runs = results.get(c.name) ?? [];
	console.log(
		`| ${c.name} | ${k === undefined ? "" : Math.round(k.loadMs)} | ${runs.map((r) => fmt(median(r))).join(" | ")} | |`,
	);
}

// The per-message cache in front of every kind: a chat that resends its history, 20 turns.
const messages = all.slice(0, 40).map((content, i) => ({
	role: i % 2 === 0 ? "user" : "assistant",
	content,
}));
const turns = Array.from(
	{ length: 20 },
	(_, n) =>
		({ model: "m", messages: messages.slice(0, n * 2 + 1) }) as unknown as ChatCompletionBody,
);
console.log("\nhistory resend, 20 turns, counted with each kind:");
for (const k of kinds.slice(1)) {
	const bare: TokenCounter = { encoding: k.name, count: k.count };
	const cached = new CachedCounter(k.name, { count: k.count, countAhead: async (t) => k.count(t) });
	const time = (counter: TokenCounter) => {
		const start = performance.now();
		let tokens = 0;
		for (const body of turns) tokens += chatPromptTokens(counter, body);
		return { tokens, ms: performance.now() - start };
	};
	const a = time(bare);
	const b = time(cached);
	if (a.tokens !== b.tokens) throw new Error("the cache changed a count");
	console.log(
		`  ${k.name}: every message again ${a.ms.toFixed(1)} ms, with the per-message cache ${b.ms.toFixed(1)} ms (${(a.ms / b.ms).toFixed(1)} ×; ${fmt(a.tokens)} tokens)`,
	);
}
fx.remove();
