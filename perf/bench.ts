/**
 * `bun run bench`: one run, side by side on this machine, of
 *   direct   — wrk straight at the mock vLLM (instant responses)
 *   bare     — a bare Bun pass-through proxy (perf/bare-proxy.ts), the baseline
 *   memory   — the gateway with the memory store
 *   redis    — the gateway with the Redis store (a redis-server started here)
 * each driven by wrk over loopback with the same request mix (perf/chat.lua:
 * short chats from 1,000 users, one in five streamed). Prints requests/s, ratios
 * to the baseline, latency percentiles, the CPU time each proxy process spends
 * per request (robust where requests/s are noisy), the gateways' peak RSS and
 * Redis calls per request; then, at a fixed 2,000 requests/s (perf/fixed-rate.ts,
 * open loop), the latency and time to first token each adds over direct.
 *
 *   bun perf/bench.ts [seconds=10] [connections=50]
 *   bun perf/bench.ts --long [requests=1000000]   memory gateway only: RSS every 10 s of load
 */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { freePort, startRedis } from "../test/support/redis.ts";

const long = Bun.argv[2] === "--long";
const longRequests = Number((long ? Bun.argv[3] : undefined) ?? 1_000_000);
const seconds = long ? 10 : Number(Bun.argv[2] ?? 10);
const connections = long ? 50 : Number(Bun.argv[3] ?? 50);
const FIXED_RPS = 2000;
const ROOT = join(import.meta.dir, "..");
const children: Subprocess[] = [];

async function waitHttp(url: string): Promise<void> {
	const deadline = Date.now() + 10_000;
	while (Date.now() < deadline) {
		try {
			const res = await fetch(url);
			await res.arrayBuffer();
			return;
		} catch {
			await Bun.sleep(50);
		}
	}
	throw new Error(`${url} did not come up`);
}

function spawn(cmd: string[], env: Record<string, string>): Subprocess {
	const proc = Bun.spawn(cmd, {
		cwd: ROOT,
		env: { ...process.env, ...env },
		stdout: "ignore",
		stderr: "inherit",
	});
	children.push(proc);
	return proc;
}

function memoryMb(pid: number, field: "VmHWM" | "VmRSS"): number {
	const status = readFileSync(`/proc/${pid}/status`, "utf8");
	const kb = Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0);
	return Math.round(kb / 1024);
}

/** CPU time (user + system) the process has used, in microseconds. */
function cpuUs(pid: number): number {
	const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
	// utime and stime are fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 Hz).
	return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

interface FixedRateResult {
	p50Ms: number;
	p99Ms: number;
	ttftP50Ms: number;
	ttftP99Ms: number;
	failed: number;
}

async function fixedRate(url: string): Promise<FixedRateResult> {
	const proc = Bun.spawn(
		["bun", join(ROOT, "perf/fixed-rate.ts"), url, String(FIXED_RPS), String(seconds), "0.2"],
		{ stdout: "pipe", stderr: "inherit" },
	);
	const out = await new Response(proc.stdout).text();
	await proc.exited;
	return JSON.parse(out.trim()) as FixedRateResult;
}

interface WrkResult {
	rps: number;
	requests: number;
	p50: string;
	p99: string;
	non2xx: number;
}

async function wrk(url: string): Promise<WrkResult> {
	const proc = Bun.spawn(
		[
			"wrk",
			"-t1",
			`-c${connections}`,
			`-d${seconds}s`,
			"--latency",
			"-s",
			join(ROOT, "perf/chat.lua"),
			url,
		],
		{ stdout: "pipe", stderr: "pipe" },
	);
	const out = await new Response(proc.stdout).text();
	await proc.exited;
	const pick = (re: RegExp) => re.exec(out)?.[1] ?? "?";
	return {
		rps: Number(pick(/Requests\/sec:\s+([\d.]+)/)),
		requests: Number(pick(/(\d+) requests in/)),
		p50: pick(/^\s+50%\s+(\S+)/m),
		p99: pick(/^\s+99%\s+(\S+)/m),
		non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
	};
}

function gatewayConfig(port: number, mockUrl: string, store: string): string {
	return `server:
  port: ${port}
  host: 127.0.0.1
store: ${store}
redis:
  timeout-ms: 1000
token:
  rate-limit:
    models:
      llama2-7b:
        max-tokens-per-minute: 1000000000
        max-tokens-per-day: 100000000000
        max-concurrent-requests: 100000
vllm:
  services:
    llama2-7b: ${mockUrl}
logging:
  level: warn
`;
}

async function evalCalls(cli: (...args: string[]) => Promise<string>): Promise<number> {
	const stats = await cli("INFO", "commandstats");
	let total = 0;
	for (const m of stats.matchAll(/cmdstat_(evalsha|eval):calls=(\d+)/g)) total += Number(m[2]);
	return total;
}

/** wrk at each target in turn, then each at a fixed rate; one table. */
async function sideBySide(
	targets: [string, string, number][],
	gateways: Record<string, { pid: number; idleMb: number }>,
): Promise<void> {
	const results: Record<string, WrkResult & { cpuUsPerRequest: number }> = {};
	let redisCallsPerRequest = 0;
	for (const [name, url, pid] of targets) {
		// Warm up each target (JIT, connections, script cache) before it is timed.
		await Bun.spawn(["wrk", "-t1", "-c8", "-d1s", "-s", join(ROOT, "perf/chat.lua"), url], {
			stdout: "ignore",
		}).exited;
		const before = name === "redis" ? await evalCalls(redis.cli) : 0;
		const cpuBefore = cpuUs(pid);
		const r = await wrk(url);
		results[name] = { ...r, cpuUsPerRequest: (cpuUs(pid) - cpuBefore) / Math.max(1, r.requests) };
		if (name === "redis") {
			redisCallsPerRequest = ((await evalCalls(redis.cli)) - before) / Math.max(1, r.requests);
		}
	}
	const fixed: Record<string, FixedRateResult> = {};
	for (const [name, url] of targets) fixed[name] = await fixedRate(url);

	const bare = results.bare?.rps ?? 1;
	const ms = (n: number) => `${n.toFixed(2)} ms`;
	const lines = [
		`wrk -t1 -c${connections} -d${seconds}s, perf/chat.lua (1,000 users, short chats, 1 in 5 streamed), ${new Date().toISOString()}`,
		"target   req/s      ×bare   p50       p99       CPU/request  non-2xx",
	];
	for (const [name] of targets) {
		const r = results[name];
		if (r === undefined) continue;
		lines.push(
			`${name.padEnd(8)} ${String(Math.round(r.rps)).padEnd(10)} ${(r.rps / bare).toFixed(2).padEnd(7)} ${r.p50.padEnd(9)} ${r.p99.padEnd(9)} ${`${r.cpuUsPerRequest.toFixed(1)} µs`.padEnd(12)} ${r.non2xx}`,
		);
	}
	const direct = fixed.direct;
	lines.push(
		"",
		`open loop at ${FIXED_RPS} req/s for ${seconds} s (perf/fixed-rate.ts), 1 in 5 streamed; added = minus direct`,
		"target   p50        p99        added p99   TTFT p50   added TTFT p50  failed",
	);
	for (const [name] of targets) {
		const f = fixed[name];
		if (f === undefined || direct === undefined) continue;
		lines.push(
			`${name.padEnd(8)} ${ms(f.p50Ms).padEnd(10)} ${ms(f.p99Ms).padEnd(10)} ${ms(f.p99Ms - direct.p99Ms).padEnd(11)} ${ms(f.ttftP50Ms).padEnd(10)} ${ms(f.ttftP50Ms - direct.ttftP50Ms).padEnd(15)} ${f.failed}`,
		);
	}
	lines.push(
		"",
		`RSS: memory gateway ${gateways.memory?.idleMb} MB idle, ${memoryMb(gateways.memory?.pid ?? 0, "VmHWM")} MB peak; redis gateway ${gateways.redis?.idleMb} MB idle, ${memoryMb(gateways.redis?.pid ?? 0, "VmHWM")} MB peak`,
		`Redis script calls per request (admit + settle): ${redisCallsPerRequest.toFixed(3)}`,
	);
	console.log(lines.join("\n"));
}

/** Drives one gateway for `longRequests` requests in 10 s wrk runs; RSS after each. */
async function longRun(url: string, pid: number): Promise<void> {
	let done = 0;
	const samples: string[] = [];
	const started = performance.now();
	while (done < longRequests) {
		const r = await wrk(url);
		done += r.requests;
		samples.push(`${Math.round(done / 1000)}k: ${memoryMb(pid, "VmRSS")} MB`);
		console.log(`${done} requests, ${Math.round(r.rps)} req/s, RSS ${memoryMb(pid, "VmRSS")} MB`);
	}
	console.log(
		`${done} requests in ${((performance.now() - started) / 1000).toFixed(0)} s; RSS after each 10 s: ${samples.join(", ")}; peak ${memoryMb(pid, "VmHWM")} MB`,
	);
}

const dir = mkdtempSync(join(tmpdir(), "trl-bench-"));
const redis = await startRedis();
try {
	const mockPort = await freePort();
	const mockProc = spawn(["bun", "test/support/mock-vllm.ts"], {
		MOCK_VLLM_PORT: String(mockPort),
		MOCK_VLLM_MODELS: "llama2-7b",
	});
	const mockUrl = `http://127.0.0.1:${mockPort}`;
	await waitHttp(`${mockUrl}/health`);

	const barePort = await freePort();
	const bareProc = spawn(["bun", "perf/bare-proxy.ts"], {
		PORT: String(barePort),
		UPSTREAM: mockUrl,
	});
	await waitHttp(`http://127.0.0.1:${barePort}/health`);

	const gateways: Record<string, { url: string; pid: number; idleMb: number }> = {};
	for (const store of long ? ["memory"] : ["memory", "redis"]) {
		const port = await freePort();
		const file = join(dir, `${store}.yaml`);
		writeFileSync(
			file,
			gatewayConfig(port, mockUrl, store).replace(
				"logging:",
				store === "redis"
					? `spring:\n  data:\n    redis:\n      host: 127.0.0.1\n      port: ${redis.port}\nlogging:`
					: "logging:",
			),
		);
		const proc = spawn(["bun", "src/main.ts", "--config", file], {});
		const url = `http://127.0.0.1:${port}`;
		await waitHttp(`${url}/health/live`);
		gateways[store] = { url, pid: proc.pid, idleMb: memoryMb(proc.pid, "VmRSS") };
	}

	const path = "/v1/chat/completions";
	if (long) {
		await longRun(`${gateways.memory?.url}${path}`, gateways.memory?.pid ?? 0);
	} else {
		await sideBySide(
			[
				["direct", `${mockUrl}${path}`, mockProc.pid],
				["bare", `http://127.0.0.1:${barePort}${path}`, bareProc.pid],
				["memory", `${gateways.memory?.url}${path}`, gateways.memory?.pid ?? 0],
				["redis", `${gateways.redis?.url}${path}`, gateways.redis?.pid ?? 0],
			],
			gateways,
		);
	}
} finally {
	for (const child of children) child.kill();
	await Promise.all(children.map((c) => c.exited));
	await redis.stop();
}
process.exit(0);
