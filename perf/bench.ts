/**
 * `bun run bench`: one run, side by side on this machine, of
 *   direct   — wrk straight at the mock vLLM (instant responses)
 *   bare     — a bare Bun pass-through proxy (perf/bare-proxy.ts), the baseline
 *   memory   — the gateway with the memory store
 *   redis    — the gateway with the Redis store (a redis-server started here)
 * each driven by wrk over loopback with the same request mix (perf/chat.lua:
 * short chats from 1,000 users). Prints requests/s, ratios to the baseline,
 * latency percentiles, the gateways' peak RSS and Redis calls per request.
 *
 *   bun perf/bench.ts [seconds=10] [connections=50]
 */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { freePort, startRedis } from "../test/support/redis.ts";

const seconds = Number(Bun.argv[2] ?? 10);
const connections = Number(Bun.argv[3] ?? 50);
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

function peakRssMb(pid: number): number {
	const status = readFileSync(`/proc/${pid}/status`, "utf8");
	const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
	return Math.round(kb / 1024);
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

const dir = mkdtempSync(join(tmpdir(), "trl-bench-"));
const redis = await startRedis();
try {
	const mockPort = await freePort();
	spawn(["bun", "test/support/mock-vllm.ts"], {
		MOCK_VLLM_PORT: String(mockPort),
		MOCK_VLLM_MODELS: "llama2-7b",
	});
	const mockUrl = `http://127.0.0.1:${mockPort}`;
	await waitHttp(`${mockUrl}/health`);

	const barePort = await freePort();
	spawn(["bun", "perf/bare-proxy.ts"], { PORT: String(barePort), UPSTREAM: mockUrl });
	await waitHttp(`http://127.0.0.1:${barePort}/health`);

	const gateways: Record<string, { url: string; pid: number }> = {};
	for (const store of ["memory", "redis"]) {
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
		gateways[store] = { url, pid: proc.pid };
	}

	const path = "/v1/chat/completions";
	const targets: [string, string][] = [
		["direct", `${mockUrl}${path}`],
		["bare", `http://127.0.0.1:${barePort}${path}`],
		["memory", `${gateways.memory?.url}${path}`],
		["redis", `${gateways.redis?.url}${path}`],
	];
	const results: Record<string, WrkResult> = {};
	let redisCallsPerRequest = 0;
	for (const [name, url] of targets) {
		// Warm up each target (JIT, connections, script cache) before it is timed.
		await Bun.spawn(["wrk", "-t1", "-c8", "-d1s", "-s", join(ROOT, "perf/chat.lua"), url], {
			stdout: "ignore",
		}).exited;
		const before = name === "redis" ? await evalCalls(redis.cli) : 0;
		results[name] = await wrk(url);
		if (name === "redis") {
			redisCallsPerRequest =
				((await evalCalls(redis.cli)) - before) / (results.redis?.requests ?? 1);
		}
	}
	const bare = results.bare?.rps ?? 1;
	const lines = [
		`wrk -t1 -c${connections} -d${seconds}s, perf/chat.lua (1,000 users, short chats), ${new Date().toISOString()}`,
		"target   req/s      ×bare   p50       p99       non-2xx",
	];
	for (const [name] of targets) {
		const r = results[name];
		if (r === undefined) continue;
		lines.push(
			`${name.padEnd(8)} ${String(Math.round(r.rps)).padEnd(10)} ${(r.rps / bare).toFixed(2).padEnd(7)} ${r.p50.padEnd(9)} ${r.p99.padEnd(9)} ${r.non2xx}`,
		);
	}
	lines.push(
		`peak RSS: memory gateway ${peakRssMb(gateways.memory?.pid ?? 0)} MB, redis gateway ${peakRssMb(gateways.redis?.pid ?? 0)} MB`,
		`Redis script calls per request (admit + settle): ${redisCallsPerRequest.toFixed(3)}`,
	);
	console.log(lines.join("\n"));
} finally {
	for (const child of children) child.kill();
	await Promise.all(children.map((c) => c.exited));
	await redis.stop();
}
process.exit(0);
