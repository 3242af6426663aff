/**
 * `bun perf/exact-count-bench.ts [requests=1000]`: what exact mode
 * (`exact-count`, the model server's /tokenize asked before admission) adds to a
 * request's latency. Two gateways in this process (memory store), one with exact
 * mode for every prompt and one without, against the mock vLLM on loopback;
 * requests alternate between them, one at a time, with the same long chat
 * (about 2,000 prompt tokens, new text each time so no cache answers).
 * The mock's /tokenize is instant; a real vLLM adds its own tokenizing time
 * (its Rust tokenizer: well under a millisecond for such a prompt) to this.
 */
import { Logger } from "../src/log.ts";
import { ENGLISH, TYPESCRIPT } from "../test/support/corpus.ts";
import { oneModelConfig, startGateway } from "../test/support/gateway.ts";
import { startMockVllm } from "../test/support/mock-vllm.ts";

const N = Number(Bun.argv[2] ?? 1000);
const mock = startMockVllm({ models: ["llama2-7b"], record: false, behavior: { outputTokens: 5 } });
const limits = { "max-tokens-per-minute": 1_000_000_000, "max-tokens-per-day": 1_000_000_000 };
const silent = { logger: new Logger("silent") };
const plain = await startGateway(oneModelConfig(mock.url, limits), silent);
const exact = await startGateway(
	oneModelConfig(mock.url, limits).replace(
		"      llama2-7b:\n",
		"      llama2-7b:\n        exact-count:\n          above-tokens: 1\n",
	),
	silent,
);

const body = (i: number) =>
	JSON.stringify({
		model: "llama2-7b",
		max_tokens: 5,
		messages: [
			{ role: "system", content: `Request ${i}. ${ENGLISH}` },
			{ role: "user", content: `${TYPESCRIPT}\n${ENGLISH}\n${TYPESCRIPT} (${i})` },
			{ role: "assistant", content: ENGLISH },
			{ role: "user", content: `${ENGLISH} ${i}` },
		],
	});

async function once(url: string, i: number): Promise<number> {
	const start = performance.now();
	const res = await fetch(`${url}/v1/chat/completions`, {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": "bench" },
		body: body(i),
	});
	await res.arrayBuffer();
	if (res.status !== 200) throw new Error(`status ${res.status}`);
	return performance.now() - start;
}

for (let i = 0; i < 100; i++) {
	await once(plain.url, -i);
	await once(exact.url, -i);
}
const a: number[] = [];
const b: number[] = [];
for (let i = 0; i < N; i++) {
	a.push(await once(plain.url, i));
	b.push(await once(exact.url, i));
}
const q = (xs: number[], p: number) =>
	[...xs].sort((x, y) => x - y)[Math.min(xs.length - 1, Math.floor(p * xs.length))] ?? 0;
const row = (name: string, xs: number[]) =>
	`| ${name} | ${q(xs, 0.5).toFixed(2)} | ${q(xs, 0.9).toFixed(2)} | ${q(xs, 0.99).toFixed(2)} |`;
console.log(`${N} requests each, alternating, one at a time (~2,000-token chats)\n`);
console.log("| gateway | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|");
console.log(row("estimate only", a));
console.log(row("exact-count (/tokenize first)", b));
console.log(
	`\nadded by /tokenize: p50 ${(q(b, 0.5) - q(a, 0.5)).toFixed(2)} ms, p99 ${(q(b, 0.99) - q(a, 0.99)).toFixed(2)} ms`,
);
await plain.stop();
await exact.stop();
await mock.stop();
