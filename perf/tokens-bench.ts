/**
 * `bun perf/tokens-bench.ts [rounds=5]`: token counting speed of the gateway's
 * WASM counter (wasm/, src/tokens/wasm.ts) against the references, side by side
 * in one process, one core, on realistic text (English prose, TypeScript, JSON,
 * Korean with code, short turns) cut two ways: chat-sized messages (up to about
 * 1,500 characters) and long texts (16 KB):
 *
 *   gateway (wasm/)  the gateway's counter
 *   @dqbd/tiktoken   tiktoken's WASM build (lite), encode_ordinary
 *   js-tiktoken      the pure-JavaScript port
 *   gpt-tokenizer    pure JavaScript, its merge cache off and on (on: how the gateway
 *                    counted before the WASM counter)
 *
 * for cl100k_base, o200k_base and a Llama 3 rank file (its tokenizer.model; tiktoken
 * and gpt-tokenizer given the same ranks and split). First checks that every counter
 * counts every text identically, then measures tokens/s (median of the rounds,
 * interleaved), the ratio to gpt-tokenizer with its cache, a 1 MB prompt's time, and
 * the linear memory each encoding holds. Last, a chat that resends its history, 20
 * turns: the gateway's counter with its per-message cache against counting every
 * message again.
 */

import cl100kRanks from "@dqbd/tiktoken/encoders/cl100k_base.json";
import o200kRanks from "@dqbd/tiktoken/encoders/o200k_base.json";
import { Tiktoken } from "@dqbd/tiktoken/lite";
import { BytePairEncodingCore } from "gpt-tokenizer/BytePairEncodingCore";
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
import { parseRankFile } from "../src/tokens/ranks.ts";
import { builtinCounter, WasmCounter } from "../src/tokens/wasm.ts";
import { llama3RankFile } from "../test/support/tokenizer-fixtures.ts";
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

const CL100K_PATTERN = cl100kRanks.pat_str;
/** Llama 3's split as gpt-tokenizer was given it (JavaScript's syntax for the same expression). */
const LLAMA3_REGEX =
	/'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

type Encoding = "cl100k_base" | "o200k_base" | "llama3 rank file";

async function counters(encoding: Encoding): Promise<{ list: Counter[]; ours: WasmCounter }> {
	// Count special-token strings as ordinary text, as the gateway does.
	const options = { disallowedSpecial: new Set<string>() };
	if (encoding === "llama3 rank file") {
		const file = llama3RankFile();
		const ours = await WasmCounter.load(parseRankFile(file), "cl100k_base");
		const tiktoken = new Tiktoken(file, {}, CL100K_PATTERN);
		const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
		const ranks: (string | number[])[] = [];
		for (const line of file.trim().split("\n")) {
			const [b64, rank] = line.split(" ");
			const bytes = Buffer.from(b64 ?? "", "base64");
			let token: string | number[];
			try {
				token = decoder.decode(bytes);
			} catch {
				token = [...bytes];
			}
			ranks[Number(rank)] = token;
		}
		const none = "<|none|>";
		const make = (mergeCacheSize: number) =>
			new BytePairEncodingCore({
				bytePairRankDecoder: ranks,
				tokenSplitRegex: LLAMA3_REGEX,
				specialTokensEncoder: new Map([[none, ranks.length]]),
				mergeCacheSize,
			});
		const gpt = make(0);
		const gptCached = make(DEFAULT_MERGE_CACHE_SIZE);
		return {
			ours,
			list: [
				{ name: "gateway (wasm/)", count: (t) => ours.count(t) },
				{ name: "@dqbd/tiktoken", count: (t) => tiktoken.encode_ordinary(t).length },
				{ name: "gpt-tokenizer", count: (t) => gpt.countNative(t) },
				{ name: "gpt-tokenizer + its merge cache", count: (t) => gptCached.countNative(t) },
			],
		};
	}
	const ranks = encoding === "cl100k_base" ? cl100kRanks : o200kRanks;
	const ours = await builtinCounter(encoding);
	const wasm = new Tiktoken(ranks.bpe_ranks, ranks.special_tokens, ranks.pat_str);
	const js = new JsTiktoken(encoding === "cl100k_base" ? jsCl100k : jsO200k);
	const gpt = encoding === "cl100k_base" ? countTokens : countTokensO200k;
	return {
		ours,
		list: [
			{ name: "gateway (wasm/)", count: (t) => ours.count(t) },
			{ name: "@dqbd/tiktoken", count: (t) => wasm.encode_ordinary(t).length },
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
		],
	};
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
	const whole = sets.map((s) => s.texts.join("\n\n")).join("\n\n");
	const long: string[] = [];
	for (let i = 0; i + 16_384 <= whole.length * 4; i += 16_384) {
		long.push(whole.repeat(4).slice(i, i + 16_384));
	}
	const shapes = [
		{ kind: "chat-sized", texts: all },
		{ kind: "long (16 KB)", texts: long },
	];
	console.log(
		`corpus: ${sets.map((s) => `${s.kind} ${s.texts.length} messages`).join(", ")}; cut as ${all.length} chat-sized messages and ${long.length} long texts; ${rounds} rounds, one core`,
	);
	const megabyte = whole.repeat(Math.ceil(1_000_000 / whole.length)).slice(0, 1_000_000);

	for (const encoding of ["cl100k_base", "o200k_base", "llama3 rank file"] as const) {
		const { list, ours } = await counters(encoding);
		// Identical counts first: a faster counter that counts differently is not a candidate.
		let mismatches = 0;
		for (const t of [...all, ...long]) {
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
			`\n${encoding}: ${all.length + long.length} texts, ${mismatches} count mismatches between the counters`,
		);
		// Warm up, then interleave rounds so drift on a shared machine hits all alike.
		for (const c of list) tokensPerSecond(c, all, 100);
		const results = new Map<string, Map<string, number[]>>();
		for (let r = 0; r < rounds; r++) {
			for (const c of list) {
				for (const s of shapes) {
					const byKind = results.get(c.name) ?? new Map<string, number[]>();
					const runs = byKind.get(s.kind) ?? [];
					runs.push(tokensPerSecond(c, s.texts, 200));
					byKind.set(s.kind, runs);
					results.set(c.name, byKind);
				}
			}
		}
		const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
		const base = results.get("gpt-tokenizer + its merge cache");
		console.log(
			`| counter | ${shapes.map((s) => `${s.kind} tokens/s | × gpt-tokenizer + cache`).join(" | ")} |`,
		);
		console.log(`|---|${shapes.map(() => "---|---").join("|")}|`);
		for (const c of list) {
			const byKind = results.get(c.name);
			if (byKind === undefined || base === undefined) continue;
			const cells = shapes.map((s) => {
				const m = median(byKind.get(s.kind) ?? []);
				return `${fmt(m)} | ${(m / median(base.get(s.kind) ?? [1])).toFixed(2)}`;
			});
			console.log(`| ${c.name} | ${cells.join(" | ")} |`);
		}
		const times: number[] = [];
		let tokens = 0;
		for (let r = 0; r < 5; r++) {
			const start = performance.now();
			tokens = ours.count(megabyte);
			times.push(performance.now() - start);
		}
		console.log(
			`1 MB prompt (${fmt(tokens)} tokens): ${median(times).toFixed(1)} ms (median of 5); linear memory ${(ours.memoryBytes / 1024 / 1024).toFixed(2)} MB`,
		);
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
