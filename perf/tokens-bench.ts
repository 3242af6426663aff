/**
 * `bun perf/tokens-bench.ts [rounds=5]`: token counting speed of the counters
 * considered for the pre-flight estimate, side by side in one process, on
 * realistic chat messages (English prose, TypeScript, JSON, Korean with code):
 *
 *   wasm          @dqbd/tiktoken (WASM BPE, lite build), encode_ordinary
 *   js-tiktoken   js-tiktoken (pure JavaScript port)
 *   gpt-tokenizer gpt-tokenizer (pure JavaScript), its merge cache off and on —
 *                 with the cache on, the gateway's counter (src/tokens/counter.ts)
 *
 * First checks that all three count every message identically (cl100k_base and
 * o200k_base), then measures tokens/s of each on cold text (no cache), one core.
 * Then a chat that resends its history, 20 turns: the gateway's counter with its
 * per-message cache against counting every message again.
 */

import cl100kRanks from "@dqbd/tiktoken/encoders/cl100k_base.json";
import o200kRanks from "@dqbd/tiktoken/encoders/o200k_base.json";
import { Tiktoken } from "@dqbd/tiktoken/lite";
import {
	clearMergeCache,
	countTokens,
	DEFAULT_MERGE_CACHE_SIZE,
	setMergeCacheSize,
} from "gpt-tokenizer/encoding/cl100k_base";
import {
	countTokens as countTokensO200k,
	setMergeCacheSize as setMergeCacheSizeO200k,
} from "gpt-tokenizer/encoding/o200k_base";
import { Tiktoken as JsTiktoken } from "js-tiktoken/lite";
import jsCl100k from "js-tiktoken/ranks/cl100k_base";
import jsO200k from "js-tiktoken/ranks/o200k_base";
import type { ChatCompletionBody } from "../src/openai.ts";
import { TiktokenCounter, type TokenCounter } from "../src/tokens/counter.ts";
import { chatPromptTokens } from "../src/tokens/estimate.ts";
import { pieces } from "./pieces.ts";

const rounds = Number(Bun.argv[2] ?? 5);
const ROOT = `${import.meta.dir}/..`;

const KOREAN = `토큰 속도 제한기는 vLLM 모델 서버 앞에서 OpenAI 호환 API를 제공하고, 호출자마다 모델별 토큰 예산(분당, 시간당, 일일 토큰과 동시 요청 수)을 정확하게 소비합니다. 여러 게이트웨이 복제본이 Redis를 통해 상태를 공유하므로 어느 복제본으로 요청이 가더라도 같은 한도가 적용됩니다.

요청이 들어오면 게이트웨이는 프롬프트 토큰을 미리 추정하고, max_tokens를 더한 만큼을 예약한 뒤 모델 서버로 전달합니다. 응답이 끝나면 vLLM이 보고한 실제 사용량으로 정산하고 남은 예약은 환불합니다.

\`\`\`yaml
token:
  rate-limit:
    models:
      llama2-7b:
        max-tokens-per-minute: 2000
        max-concurrent-requests: 10
\`\`\`

한도를 넘으면 429 응답과 함께 Retry-After 헤더를 돌려주며, 운영자는 관리 API로 사용자별 사용량을 확인하거나 초기화할 수 있습니다.`;

async function corpus(): Promise<{ kind: string; texts: string[] }[]> {
	const read = (p: string) => Bun.file(`${ROOT}/${p}`).text();
	return [
		{ kind: "English prose", texts: pieces(await read("README.md")) },
		{ kind: "TypeScript", texts: pieces(await read("src/completion/pipeline.ts")) },
		{
			kind: "JSON",
			texts: pieces(await read("deploy/monitoring/grafana-dashboard.json"), 1200, /\n/),
		},
		{ kind: "Korean + code", texts: pieces(Array(6).fill(KOREAN).join("\n\n"), 800) },
		{
			kind: "short turns",
			texts: Array.from(
				{ length: 2000 },
				(_, i) =>
					`${["Summarise", "Explain", "Translate", "Rewrite"][i % 4]} item ${i} of order #${(i * 7919) % 100000} in ${["one", "two", "three"][i % 3]} sentences.`,
			),
		},
	];
}

interface Counter {
	readonly name: string;
	count(text: string): number;
	/** Puts the counter's own caches in the state it is measured in. */
	setup?(): void;
}

function counters(encoding: "cl100k_base" | "o200k_base"): Counter[] {
	const ranks = encoding === "cl100k_base" ? cl100kRanks : o200kRanks;
	const wasm = new Tiktoken(ranks.bpe_ranks, ranks.special_tokens, ranks.pat_str);
	const js = new JsTiktoken(encoding === "cl100k_base" ? jsCl100k : jsO200k);
	// Count special-token strings as ordinary text, as the gateway does.
	const options = { disallowedSpecial: new Set<string>() };
	const gpt = encoding === "cl100k_base" ? countTokens : countTokensO200k;
	return [
		{ name: "wasm (@dqbd/tiktoken)", count: (t) => wasm.encode_ordinary(t).length },
		{ name: "js-tiktoken", count: (t) => js.encode(t, [], []).length },
		{
			name: "gpt-tokenizer",
			count: (t) => gpt(t, options),
			setup: () => setCache(encoding, 0),
		},
		{
			name: "gpt-tokenizer + its merge cache",
			count: (t) => gpt(t, options),
			setup: () => setCache(encoding, DEFAULT_MERGE_CACHE_SIZE),
		},
	];
}

function setCache(encoding: "cl100k_base" | "o200k_base", size: number): void {
	if (encoding === "cl100k_base") setMergeCacheSize(size);
	else setMergeCacheSizeO200k(size);
}

function tokensPerSecond(counter: Counter, texts: string[], minMs = 300): number {
	counter.setup?.();
	let tokens = 0;
	const start = performance.now();
	let elapsed = 0;
	while (elapsed < minMs) {
		for (const t of texts) tokens += counter.count(t);
		elapsed = performance.now() - start;
	}
	return tokens / (elapsed / 1000);
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");

async function main() {
	setMergeCacheSize(0);
	setMergeCacheSizeO200k(0);
	clearMergeCache();
	const sets = await corpus();
	const all = sets.flatMap((s) => s.texts);
	console.log(
		`corpus: ${sets.map((s) => `${s.kind} ${s.texts.length} messages`).join(", ")}; ${rounds} rounds, one core`,
	);

	for (const encoding of ["cl100k_base", "o200k_base"] as const) {
		const list = counters(encoding);
		// Identical counts first: a faster counter that counts differently is not a candidate.
		let mismatches = 0;
		for (const t of all) {
			const counts = list.map((c) => c.count(t));
			if (new Set(counts).size !== 1) {
				mismatches++;
				if (mismatches <= 3)
					console.log(
						`  ${encoding} mismatch: ${JSON.stringify(counts)} on ${JSON.stringify(t.slice(0, 60))}`,
					);
			}
		}
		console.log(
			`\n${encoding}: ${all.length} messages, ${mismatches} count mismatches between the counters`,
		);
		// Warm up, then interleave rounds so drift on a shared machine hits all alike.
		for (const c of list) tokensPerSecond(c, all, 100);
		const results = new Map<string, Map<string, number[]>>();
		for (let r = 0; r < rounds; r++) {
			for (const c of list) {
				for (const s of sets) {
					const byKind = results.get(c.name) ?? new Map<string, number[]>();
					const runs = byKind.get(s.kind) ?? [];
					runs.push(tokensPerSecond(c, s.texts, 150));
					byKind.set(s.kind, runs);
					results.set(c.name, byKind);
				}
			}
		}
		const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
		const base = results.get(list[0]?.name ?? "");
		console.log(`| counter | ${sets.map((s) => s.kind).join(" | ")} | × wasm (all) |`);
		console.log(`|---|${sets.map(() => "---").join("|")}|---|`);
		for (const c of list) {
			const byKind = results.get(c.name);
			if (byKind === undefined || base === undefined) continue;
			const cells = sets.map((s) => fmt(median(byKind.get(s.kind) ?? [])));
			let ratio = 0;
			for (const s of sets)
				ratio += median(byKind.get(s.kind) ?? []) / median(base.get(s.kind) ?? [1]);
			console.log(`| ${c.name} | ${cells.join(" | ")} | ${(ratio / sets.length).toFixed(2)} |`);
		}
	}

	// A conversation that resends its history: 20 turns, each adding a user and an assistant message.
	const gateway = await TiktokenCounter.load("cl100k_base");
	const messages = all.slice(0, 40).map((content, i) => ({
		role: i % 2 === 0 ? "user" : "assistant",
		content,
	}));
	const turns: ChatCompletionBody[] = [];
	for (let n = 1; n <= 20; n++) {
		turns.push({
			model: "m",
			messages: messages.slice(0, n * 2 - 1),
		} as unknown as ChatCompletionBody);
	}
	setMergeCacheSize(DEFAULT_MERGE_CACHE_SIZE);
	const ordinary = { disallowedSpecial: new Set<string>() };
	const uncached: TokenCounter = {
		encoding: "cl100k_base",
		count: (t) => countTokens(t, ordinary),
	};
	const measure = (counter: TokenCounter) => {
		let tokens = 0;
		const start = performance.now();
		for (const body of turns) tokens += chatPromptTokens(counter, body);
		return { tokens, ms: performance.now() - start };
	};
	const a = measure(uncached);
	const b = measure(gateway); // the first pass fills the cache
	const c = measure(gateway);
	console.log(
		`\nhistory resend, 20 turns (${fmt(a.tokens)} prompt tokens in all): every message counted again ${a.ms.toFixed(1)} ms (${fmt(a.tokens / (a.ms / 1000))} tokens/s); with the per-message cache ${b.ms.toFixed(1)} ms on first sight (${fmt(b.tokens / (b.ms / 1000))} tokens/s, ${(a.ms / b.ms).toFixed(1)} ×), ${c.ms.toFixed(2)} ms when every message was seen (${fmt(c.tokens / (c.ms / 1000))} tokens/s)`,
	);
	if (a.tokens !== b.tokens || b.tokens !== c.tokens) throw new Error("the cache changed a count");
}

await main();
