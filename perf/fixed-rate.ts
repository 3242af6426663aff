/**
 * An open-loop load generator: sends chat completions at a fixed rate whatever
 * the answers' latency (no coordinated omission: each latency is measured from
 * the moment its request was due, not from when it was sent), and reports
 * latency percentiles, and for streams the time to the first byte of the body
 * (the first event: time to first token through a gateway).
 *
 *   bun perf/fixed-rate.ts <chat completions URL> [rps=2000] [seconds=10] [stream share=0.2]
 *
 * Prints one JSON line: { sent, ok, failed, rps, p50Ms, p99Ms, ttftP50Ms, ttftP99Ms }.
 */

const url = Bun.argv[2] ?? "http://127.0.0.1:8080/v1/chat/completions";
const rps = Number(Bun.argv[3] ?? 2000);
const seconds = Number(Bun.argv[4] ?? 10);
const streamShare = Number(Bun.argv[5] ?? 0.2);

const plain = JSON.stringify({
	model: "llama2-7b",
	messages: [{ role: "user", content: "Write one short sentence about rate limits." }],
	max_tokens: 16,
});
const streamed = JSON.stringify({
	model: "llama2-7b",
	messages: [{ role: "user", content: "Write one short sentence about rate limits." }],
	max_tokens: 16,
	stream: true,
});

const latencies: number[] = [];
const ttfts: number[] = [];
let ok = 0;
let failed = 0;

async function one(i: number, due: number): Promise<void> {
	const stream = (i * 7919) % 100 < streamShare * 100;
	try {
		const res = await fetch(url, {
			method: "POST",
			headers: { "content-type": "application/json", "x-user-id": `user-${i % 1000}` },
			body: stream ? streamed : plain,
		});
		if (res.body === null) throw new Error("no body");
		const reader = res.body.getReader();
		let first = true;
		for (;;) {
			const { done } = await reader.read();
			if (first && stream) {
				ttfts.push(performance.now() - due);
				first = false;
			}
			if (done) break;
		}
		latencies.push(performance.now() - due);
		if (res.ok) ok++;
		else failed++;
	} catch {
		failed++;
	}
}

function percentile(xs: number[], p: number): number {
	if (xs.length === 0) return Number.NaN;
	const sorted = [...xs].sort((a, b) => a - b);
	return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

const total = Math.round(rps * seconds);
const intervalMs = 1000 / rps;
const pending: Promise<void>[] = [];
const start = performance.now() + 50;
let next = 0;
while (next < total) {
	const now = performance.now();
	// Send every request that is due by now, each timed from its own due moment.
	while (next < total && start + next * intervalMs <= now) {
		pending.push(one(next, start + next * intervalMs));
		next++;
	}
	await Bun.sleep(1);
}
await Promise.all(pending);
const elapsed = (performance.now() - start) / 1000;
const round = (n: number) => Math.round(n * 1000) / 1000;
console.log(
	JSON.stringify({
		sent: total,
		ok,
		failed,
		rps: round(total / elapsed),
		p50Ms: round(percentile(latencies, 50)),
		p99Ms: round(percentile(latencies, 99)),
		ttftP50Ms: round(percentile(ttfts, 50)),
		ttftP99Ms: round(percentile(ttfts, 99)),
	}),
);
