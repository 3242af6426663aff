/**
 * `bun run bench`: one run, side by side on this machine, of
 *   direct       — wrk straight at the mock vLLM (instant responses)
 *   bare         — a bare Bun pass-through proxy (perf/bare-proxy.ts), the baseline
 *   elysia       — the floor: an Elysia route that parses and re-serialises the body
 *                  and the answer and adds three headers (perf/elysia-proxy.ts)
 *   memory       — the gateway, memory store, request log at info to a file (the default)
 *   memory-warn  — the same at log level warn (no request log)
 *   redis        — the gateway, Redis store (a redis-server started here), log at info
 * each driven by wrk -t1 over loopback with three request mixes:
 *   perf/chat-plain.lua   short chats from 1,000 users, none streamed (the main table)
 *   perf/chat.lua         the same, one in five streamed (SSE)
 *   perf/chat-unique.lua  every user message different (no per-message cache helps): bare, memory
 * For each target: requests/s and its ratio to bare, latency percentiles, the CPU time the
 * target's process spends per request (robust where requests/s are noisy) and its ratio to
 * bare's, non-2xx answers. Then the memory gateway's own stage timing (its /metrics
 * gateway_stage_seconds histogram, if exported), Redis script calls and the Redis server's
 * CPU per request, RSS idle and peak of every proxy; then, at a fixed 2,000 requests/s
 * (perf/fixed-rate.ts, open loop, one in five streamed), the latency and time to first
 * token each adds over direct; and the measured figures against the performance goals.
 *
 *   bun perf/bench.ts [seconds=10] [connections=64]
 *   bun perf/bench.ts [seconds] [connections] --quick   bare, elysia, memory on chat-plain only
 *                                                       (or BENCH_QUICK=1)
 *   bun perf/bench.ts --long [requests=1000000]         memory gateway only: RSS every 10 s of load
 *
 *   bun perf/bench.ts [seconds] [connections] --redis   the Redis store only: bare and the Redis
 *                                                       gateway on chat-plain (with redis-before when
 *                                                       BENCH_BASELINE_ROOT names another checkout), then
 *                                                       1, 2 and 3 gateway processes on one Redis
 *
 * BENCH_ROUNDS=n (with --redis and BENCH_BASELINE_ROOT): then n more timed rounds of redis-before
 * and redis, alternating which goes first, each with bare beside it: per round and median, the
 * gateway's and Redis's CPU per request and their ratios (what one comparison cannot separate
 * from drift and order).
 *
 * BENCH_GATEWAY_ROOT=/other/checkout runs that checkout's `bun src/main.ts` as the gateway
 * (default: this repository), to measure other code with this bench. BENCH_KEEP=1 keeps the
 * temp directory (gateway configs and request logs).
 */
import {
	closeSync,
	existsSync,
	mkdtempSync,
	openSync,
	readFileSync,
	rmSync,
	statSync,
	writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { withoutPortVars } from "../test/support/process.ts";
import { freePort, type RedisServer, startRedis } from "../test/support/redis.ts";

// ---------------------------------------------------------------------------------------------
// Arguments

const USAGE =
	"usage: bun perf/bench.ts [seconds=10] [connections=64] [--quick|--redis]\n       bun perf/bench.ts --long [requests=1000000] [connections=64]";

function truthy(value: string | undefined): boolean {
	return value !== undefined && value !== "" && value !== "0" && value.toLowerCase() !== "false";
}

const argv = Bun.argv.slice(2);
const flags = new Set(argv.filter((a) => a.startsWith("--")));
const numbers = argv.filter((a) => !a.startsWith("--")).map(Number);
for (const flag of flags) {
	if (flag !== "--long" && flag !== "--quick" && flag !== "--redis") {
		console.error(`unknown option ${flag}\n${USAGE}`);
		process.exit(2);
	}
}
if (numbers.some((n) => !Number.isFinite(n) || n <= 0)) {
	console.error(USAGE);
	process.exit(2);
}
const long = flags.has("--long");
const quick = !long && (flags.has("--quick") || truthy(process.env.BENCH_QUICK));
const redisOnly = !long && !quick && flags.has("--redis");
/** Alternated rounds of redis-before and redis after the main table (--redis with a baseline). */
const ROUNDS = (() => {
	const n = Number(process.env.BENCH_ROUNDS ?? 0);
	return Number.isInteger(n) && n > 0 ? n : 0;
})();

/** Another checkout measured side by side as `redis-before` (--redis). */
const BASELINE_ROOT =
	process.env.BENCH_BASELINE_ROOT === undefined
		? undefined
		: resolve(process.env.BENCH_BASELINE_ROOT);
const longRequests = long ? (numbers[0] ?? 1_000_000) : 0;
const seconds = long ? 10 : (numbers[0] ?? 10);
const connections = Math.round(numbers[1] ?? 64);
const FIXED_RPS = 2000;
const ROOT = join(import.meta.dir, "..");
const GATEWAY_ROOT = resolve(process.env.BENCH_GATEWAY_ROOT ?? ROOT);
const PATH = "/v1/chat/completions";
/**
 * The heap sizing the image and the Kubernetes manifests give the gateway
 * (Dockerfile: BUN_JSC_forceRAMSize); BENCH_HEAP_RAM_BYTES=0 measures the
 * runtime's own sizing, to the machine's whole RAM.
 */
const HEAP_RAM_BYTES = process.env.BENCH_HEAP_RAM_BYTES ?? "268435456";
const MODEL = "llama2-7b";

/** The performance goals (perf/RESULTS.md): the request path's, then the Redis store's. */
const GOALS = {
	/** The memory gateway (request log at info, to a file): req/s at least, CPU per request at most, × bare. */
	memoryRps: 0.75,
	memoryCpu: 1.5,
	/** Every prompt unique (no per-message cache helps): req/s × bare. */
	uniqueRps: 0.6,
	/** The Redis gateway. */
	redisRps: 0.6,
	redisCpu: 1.8,
	/** Redis's own CPU per gateway request, µs. */
	redisServerCpuUs: 15,
	/** At a fixed 2,000 req/s, one in five streamed, over direct to the mock. */
	p99AddedMs: 2,
	ttftAddedMs: 0.3,
	peakRssMb: 150,
};

if (!existsSync(join(GATEWAY_ROOT, "src/main.ts"))) {
	console.error(`BENCH_GATEWAY_ROOT=${GATEWAY_ROOT}: no src/main.ts there`);
	process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Processes

const children: Subprocess[] = [];
const dir = mkdtempSync(join(tmpdir(), "trl-bench-"));
let redis: RedisServer | undefined;

async function cleanUp(): Promise<void> {
	for (const child of children) child.kill();
	await Promise.all(children.map((c) => c.exited));
	await redis?.stop();
	if (!truthy(process.env.BENCH_KEEP)) rmSync(dir, { recursive: true, force: true });
}

/** Stops everything if the run outlives `ms` (a wedged target must not hold the machine). */
function bound(ms: number): Timer {
	return setTimeout(() => {
		console.error(`bench: still running after ${Math.round(ms / 1000)} s; stopping`);
		void cleanUp().finally(() => process.exit(1));
	}, ms);
}

process.on("SIGINT", () => {
	void cleanUp().finally(() => process.exit(130));
});

async function waitHttp(url: string, proc: Subprocess): Promise<void> {
	const deadline = Date.now() + 30_000;
	while (Date.now() < deadline) {
		if (proc.exitCode !== null) throw new Error(`${url}: the process exited (${proc.exitCode})`);
		try {
			const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
			await res.arrayBuffer();
			return;
		} catch {
			await Bun.sleep(50);
		}
	}
	throw new Error(`${url} did not come up`);
}

/** Spawns a long-lived child; stdout to `logFile` (or dropped), stderr to ours. */
function spawn(
	cmd: string[],
	env: Record<string, string>,
	options: { cwd?: string; logFile?: string } = {},
): Subprocess {
	const fd = options.logFile === undefined ? undefined : openSync(options.logFile, "w");
	try {
		const proc = Bun.spawn(cmd, {
			cwd: options.cwd ?? ROOT,
			// The gateways' ports are their files': a PORT or SERVER_PORT in the shell would override them.
			env: { ...withoutPortVars(process.env), ...env },
			stdout: fd ?? "ignore",
			stderr: "inherit",
		});
		children.push(proc);
		return proc;
	} finally {
		if (fd !== undefined) closeSync(fd);
	}
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

// ---------------------------------------------------------------------------------------------
// Load

interface Workload {
	script: string;
	describe: string;
}

const WORKLOADS = {
	plain: {
		script: "perf/chat-plain.lua",
		describe: "short chats from 1,000 users, none streamed",
	},
	mixed: {
		script: "perf/chat.lua",
		describe: "short chats from 1,000 users, 1 in 5 streamed",
	},
	unique: {
		script: "perf/chat-unique.lua",
		describe: "1,000 users, none streamed, every user message unique",
	},
} satisfies Record<string, Workload>;

interface WrkResult {
	rps: number;
	requests: number;
	p50: string;
	p99: string;
	non2xx: number;
	socketErrors: number;
}

let runId = 0;

async function wrk(
	url: string,
	workload: Workload,
	opts: { seconds: number; connections: number },
): Promise<WrkResult> {
	runId++;
	const proc = Bun.spawn(
		[
			"wrk",
			"-t1",
			`-c${opts.connections}`,
			`-d${opts.seconds}s`,
			"--latency",
			"-s",
			join(ROOT, workload.script),
			url,
			"--",
			`${process.pid}-${runId}`,
		],
		{ stdout: "pipe", stderr: "pipe", timeout: (opts.seconds + 30) * 1000, killSignal: "SIGKILL" },
	);
	const [out] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
	const pick = (re: RegExp) => re.exec(out)?.[1] ?? "?";
	const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
	return {
		rps: Number(pick(/Requests\/sec:\s+([\d.]+)/)),
		requests: Number(pick(/(\d+) requests in/)),
		p50: pick(/^\s+50%\s+(\S+)/m),
		p99: pick(/^\s+99%\s+(\S+)/m),
		non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
		socketErrors: socket === null ? 0 : socket.slice(1).reduce((s, n) => s + Number(n), 0),
	};
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
		{ stdout: "pipe", stderr: "inherit", timeout: (seconds + 60) * 1000, killSignal: "SIGKILL" },
	);
	const [out] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
	return JSON.parse(out.trim()) as FixedRateResult;
}

// ---------------------------------------------------------------------------------------------
// Gateway configuration, Redis, stage metrics

function gatewayConfig(
	port: number,
	mockUrl: string,
	store: "memory" | "redis",
	level: "info" | "warn",
	redisPort: number,
): string {
	const redisBlock =
		store === "redis"
			? `spring:\n  data:\n    redis:\n      host: 127.0.0.1\n      port: ${redisPort}\n`
			: "";
	return `server:
  port: ${port}
  host: 127.0.0.1
store: ${store}
redis:
  timeout-ms: 1000
${redisBlock}token:
  rate-limit:
    models:
      ${MODEL}:
        max-tokens-per-minute: 1000000000
        max-tokens-per-day: 100000000000
        max-concurrent-requests: 100000
vllm:
  services:
    ${MODEL}: ${mockUrl}
logging:
  level: ${level}
`;
}

async function evalCalls(server: RedisServer): Promise<number> {
	const stats = await server.cli("INFO", "commandstats");
	let total = 0;
	for (const m of stats.matchAll(/cmdstat_(evalsha|eval|evalsha_ro|eval_ro|fcall):calls=(\d+)/g)) {
		total += Number(m[2]);
	}
	return total;
}

async function redisPid(server: RedisServer): Promise<number> {
	const pid = Number(/^process_id:(\d+)/m.exec(await server.cli("INFO", "server"))?.[1]);
	if (!Number.isInteger(pid) || pid <= 0) throw new Error("redis-cli INFO server: no process_id");
	return pid;
}

type Stages = Map<string, { sum: number; count: number }>;

/** The gateway's `gateway_stage_seconds` sums and counts by stage, or undefined if not exported. */
async function stageTotals(base: string): Promise<Stages | undefined> {
	let text: string;
	try {
		const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(5000) });
		text = await res.text();
		if (!res.ok) return undefined;
	} catch {
		return undefined;
	}
	const stages: Stages = new Map();
	const line = /^gateway_stage_seconds_(sum|count)\{([^}]*)\}\s+(\S+)/gm;
	for (const m of text.matchAll(line)) {
		const stage = /(?:^|,)\s*stage="([^"]*)"/.exec(m[2] ?? "")?.[1];
		const value = Number(m[3]);
		if (stage === undefined || !Number.isFinite(value)) continue;
		const totals = stages.get(stage) ?? { sum: 0, count: 0 };
		if (m[1] === "sum") totals.sum += value;
		else totals.count += value;
		stages.set(stage, totals);
	}
	return stages.size === 0 ? undefined : stages;
}

function stageLines(before: Stages | undefined, after: Stages | undefined): string[] {
	if (after === undefined) return ["stage timing: not exported"];
	const rows: string[][] = [];
	for (const [stage, total] of after) {
		const prior = before?.get(stage) ?? { sum: 0, count: 0 };
		const count = total.count - prior.count;
		const mean = count > 0 ? ((total.sum - prior.sum) / count) * 1e6 : Number.NaN;
		rows.push([stage, Number.isNaN(mean) ? "–" : mean.toFixed(1), `(n=${count})`]);
	}
	return [
		"stage timing, memory gateway over the chat-plain run (gateway_stage_seconds, sampled requests):",
		...table(["stage", "µs/request", "(sampled n)"], rows),
	];
}

// ---------------------------------------------------------------------------------------------
// Reporting

/** Left-aligned columns, two spaces apart. */
function table(header: string[], rows: string[][]): string[] {
	const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
	const line = (cells: string[]) =>
		cells
			.map((c, i) => c.padEnd(widths[i] ?? 0))
			.join("  ")
			.trimEnd();
	return [line(header), ...rows.map(line)];
}

const ms = (n: number) => `${n.toFixed(2)} ms`;
const ratio = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : "–");

interface Target {
	name: string;
	/** Base URL (scheme, host, port). */
	base: string;
	pid: number;
	idleMb: number;
	logFile?: string;
}

interface Measured extends WrkResult {
	cpuUsPerRequest: number;
	redisCpuUsPerRequest?: number;
	scriptCallsPerRequest?: number;
}

/** Warm-up, then a timed wrk run at each target in turn; CPU of each process over the run. */
async function runWorkload(
	workload: Workload,
	targets: Target[],
	stageReport: { lines: string[] },
): Promise<Map<string, Measured>> {
	const results = new Map<string, Measured>();
	for (const target of targets) {
		const url = `${target.base}${PATH}`;
		console.error(`bench: ${workload.script} → ${target.name}`);
		// Warm each target (JIT, connections, script cache) before it is timed.
		await wrk(url, workload, { seconds: 1, connections: 8 });
		const staged = target.name === "memory" && workload === WORKLOADS.plain;
		const stagesBefore = staged ? await stageTotals(target.base) : undefined;
		const withRedis = target.name.startsWith("redis") && redis !== undefined;
		const redisProc = withRedis && redis !== undefined ? await redisPid(redis) : 0;
		const callsBefore = withRedis && redis !== undefined ? await evalCalls(redis) : 0;
		const redisCpuBefore = withRedis ? cpuUs(redisProc) : 0;
		const cpuBefore = cpuUs(target.pid);
		const r = await wrk(url, workload, { seconds, connections });
		const cpu = cpuUs(target.pid) - cpuBefore;
		const n = Math.max(1, r.requests);
		const measured: Measured = { ...r, cpuUsPerRequest: cpu / n };
		if (withRedis && redis !== undefined) {
			measured.redisCpuUsPerRequest = (cpuUs(redisProc) - redisCpuBefore) / n;
			measured.scriptCallsPerRequest = ((await evalCalls(redis)) - callsBefore) / n;
		}
		if (staged) stageReport.lines = stageLines(stagesBefore, await stageTotals(target.base));
		results.set(target.name, measured);
	}
	return results;
}

function workloadLines(workload: Workload, results: Map<string, Measured>): string[] {
	const bare = results.get("bare");
	const rows: string[][] = [];
	for (const [name, r] of results) {
		rows.push([
			name,
			String(Math.round(r.rps)),
			ratio(r.rps / (bare?.rps ?? Number.NaN)),
			r.p50,
			r.p99,
			`${r.cpuUsPerRequest.toFixed(1)} µs`,
			ratio(r.cpuUsPerRequest / (bare?.cpuUsPerRequest ?? Number.NaN)),
			r.socketErrors > 0 ? `${r.non2xx} (+${r.socketErrors} socket errors)` : String(r.non2xx),
		]);
	}
	const lines = [
		`wrk -t1 -c${connections} -d${seconds}s -s ${workload.script} (${workload.describe})`,
		...table(
			["target", "req/s", "×bare", "p50", "p99", "CPU/request", "CPU ×bare", "non-2xx"],
			rows,
		),
	];
	for (const [name, red] of results) {
		if (red.redisCpuUsPerRequest === undefined || bare === undefined) continue;
		const both = red.cpuUsPerRequest + red.redisCpuUsPerRequest;
		lines.push(
			`${name}: Redis server CPU ${red.redisCpuUsPerRequest.toFixed(1)} µs/request (${ratio(red.redisCpuUsPerRequest / bare.cpuUsPerRequest)} × bare's CPU); gateway + Redis ${both.toFixed(1)} µs (${ratio(both / bare.cpuUsPerRequest)} × bare); script calls per request ${(red.scriptCallsPerRequest ?? 0).toFixed(3)}`,
		);
	}
	if (results.has("direct")) lines.push("(direct: CPU/request is the mock vLLM's)");
	return lines;
}

function fixedLines(fixed: Map<string, FixedRateResult>): string[] {
	const direct = fixed.get("direct");
	const rows: string[][] = [];
	for (const [name, f] of fixed) {
		rows.push([
			name,
			ms(f.p50Ms),
			ms(f.p99Ms),
			direct === undefined || name === "direct" ? "–" : ms(f.p99Ms - direct.p99Ms),
			ms(f.ttftP50Ms),
			direct === undefined || name === "direct" ? "–" : ms(f.ttftP50Ms - direct.ttftP50Ms),
			String(f.failed),
		]);
	}
	return [
		`open loop at ${FIXED_RPS} req/s for ${seconds} s (perf/fixed-rate.ts), 1 in 5 streamed; added = minus direct`,
		...table(["target", "p50", "p99", "added p99", "TTFT p50", "added TTFT p50", "failed"], rows),
	];
}

function rssLines(targets: Target[]): string[] {
	const rows = targets
		.filter((t) => t.name !== "direct")
		.map((t) => {
			const log =
				t.logFile !== undefined && existsSync(t.logFile)
					? `${(statSync(t.logFile).size / 1024 / 1024).toFixed(1)} MB`
					: "–";
			return [t.name, `${t.idleMb} MB`, `${memoryMb(t.pid, "VmHWM")} MB`, log];
		});
	return table(["process", "RSS idle", "RSS peak", "stdout log"], rows);
}

function goalLines(
	workloads: { name: string; results: Map<string, Measured> }[],
	fixed: Map<string, FixedRateResult>,
	targets: Target[],
): string[] {
	const rows: string[][] = [];
	const versusBare = (
		workload: { name: string; results: Map<string, Measured> },
		name: string,
		rpsGoal: number,
		cpuGoal: number | undefined,
	) => {
		const bare = workload.results.get("bare");
		const r = workload.results.get(name);
		if (r === undefined || bare === undefined) return;
		const byRps = r.rps / bare.rps;
		rows.push([
			`${name} ${workload.name}: req/s ≥ ${rpsGoal} × bare`,
			ratio(byRps),
			byRps >= rpsGoal ? "yes" : "no",
		]);
		if (cpuGoal === undefined) return;
		const byCpu = r.cpuUsPerRequest / bare.cpuUsPerRequest;
		rows.push([
			`${name} ${workload.name}: CPU/request ≤ ${cpuGoal} × bare`,
			`${ratio(byCpu)} (${r.cpuUsPerRequest.toFixed(1)} vs ${bare.cpuUsPerRequest.toFixed(1)} µs)`,
			byCpu <= cpuGoal ? "yes" : "no",
		]);
	};
	for (const w of workloads) {
		if (w.name === "chat-unique") {
			versusBare(w, "memory", GOALS.uniqueRps, undefined);
			continue;
		}
		versusBare(w, "memory", GOALS.memoryRps, GOALS.memoryCpu);
		versusBare(w, "redis", GOALS.redisRps, GOALS.redisCpu);
		const redisCpu = w.results.get("redis")?.redisCpuUsPerRequest;
		if (redisCpu !== undefined) {
			rows.push([
				`redis-server ${w.name}: CPU/request ≤ ${GOALS.redisServerCpuUs} µs`,
				`${redisCpu.toFixed(1)} µs`,
				redisCpu <= GOALS.redisServerCpuUs ? "yes" : "no",
			]);
		}
	}
	const direct = fixed.get("direct");
	for (const name of ["memory", "redis"]) {
		const f = fixed.get(name);
		if (f === undefined || direct === undefined) continue;
		const p99 = f.p99Ms - direct.p99Ms;
		const ttft = f.ttftP50Ms - direct.ttftP50Ms;
		rows.push([
			`${name} p99 added ≤ ${GOALS.p99AddedMs} ms`,
			ms(p99),
			p99 <= GOALS.p99AddedMs ? "yes" : "no",
		]);
		rows.push([
			`${name} TTFT p50 added ≤ ${GOALS.ttftAddedMs} ms`,
			ms(ttft),
			ttft <= GOALS.ttftAddedMs ? "yes" : "no",
		]);
	}
	for (const t of targets) {
		if (!["memory", "memory-warn", "redis"].includes(t.name)) continue;
		const peak = memoryMb(t.pid, "VmHWM");
		rows.push([
			`${t.name} peak RSS ≤ ${GOALS.peakRssMb} MB`,
			`${peak} MB`,
			peak <= GOALS.peakRssMb ? "yes" : "no",
		]);
	}
	return ["against the goals (perf/RESULTS.md):", ...table(["goal", "measured", "met"], rows)];
}

/** Drives one gateway for `longRequests` requests in 10 s wrk runs; RSS after each. */
async function longRun(url: string, pid: number): Promise<void> {
	let done = 0;
	const samples: string[] = [];
	const started = performance.now();
	while (done < longRequests) {
		const r = await wrk(url, WORKLOADS.mixed, { seconds, connections });
		if (!(r.requests > 0)) throw new Error("wrk served no requests; stopping the long run");
		done += r.requests;
		samples.push(`${Math.round(done / 1000)}k: ${memoryMb(pid, "VmRSS")} MB`);
		console.log(`${done} requests, ${Math.round(r.rps)} req/s, RSS ${memoryMb(pid, "VmRSS")} MB`);
	}
	console.log(
		`${done} requests in ${((performance.now() - started) / 1000).toFixed(0)} s; RSS after each 10 s: ${samples.join(", ")}; peak ${memoryMb(pid, "VmHWM")} MB`,
	);
}

/**
 * `rounds` more timed runs of bare, redis-before and redis on chat-plain, the
 * two gateways' order swapped every round: CPU per request of each, and of
 * Redis, per round and the median.
 */
async function alternatedLines(
	rounds: number,
	byName: (names: string[]) => Target[],
): Promise<string[]> {
	const rows: string[][] = [];
	const ratios: number[] = [];
	const redisRatios: number[] = [];
	for (let round = 1; round <= rounds; round++) {
		const order = round % 2 === 1 ? ["redis", "redis-before"] : ["redis-before", "redis"];
		const targets = [...byName(["bare"]), ...order.flatMap((name) => byName([name]))];
		const r = await runWorkload(WORKLOADS.plain, targets, { lines: [] });
		const bare = r.get("bare")?.cpuUsPerRequest ?? 0;
		const before = r.get("redis-before");
		const after = r.get("redis");
		if (before === undefined || after === undefined) continue;
		ratios.push(after.cpuUsPerRequest / before.cpuUsPerRequest);
		redisRatios.push(
			(after.redisCpuUsPerRequest ?? 0) / Math.max(1e-9, before.redisCpuUsPerRequest ?? 0),
		);
		rows.push([
			String(round),
			order.join(" then "),
			`${bare.toFixed(1)} µs`,
			`${before.cpuUsPerRequest.toFixed(1)} µs`,
			`${after.cpuUsPerRequest.toFixed(1)} µs`,
			(after.cpuUsPerRequest / before.cpuUsPerRequest).toFixed(3),
			`${(before.redisCpuUsPerRequest ?? 0).toFixed(1)} µs`,
			`${(after.redisCpuUsPerRequest ?? 0).toFixed(1)} µs`,
		]);
	}
	const median = (xs: number[]) => {
		const sorted = [...xs].sort((a, b) => a - b);
		return sorted[Math.floor(sorted.length / 2)] ?? 0;
	};
	return [
		`alternated rounds, chat-plain (redis-before = ${BASELINE_ROOT}):`,
		...table(
			[
				"round",
				"order",
				"bare CPU",
				"before CPU",
				"after CPU",
				"after/before",
				"Redis before",
				"Redis after",
			],
			rows,
		),
		`median after/before: gateway ${median(ratios).toFixed(3)}, Redis ${median(redisRatios).toFixed(3)}`,
	];
}

/** Starts a gateway (`redis-before` from BENCH_BASELINE_ROOT) and waits until it is live. */
async function startGateway(name: string, mockUrl: string): Promise<Target> {
	const port = await freePort();
	const store = name.startsWith("redis") ? "redis" : "memory";
	const level = name === "memory-warn" ? "warn" : "info";
	const config = join(dir, `${name}.yaml`);
	writeFileSync(config, gatewayConfig(port, mockUrl, store, level, redis?.port ?? 0));
	const logFile = join(dir, `${name}.log`);
	const proc = spawn(
		["bun", "src/main.ts", "--config", config],
		{ BUN_JSC_forceRAMSize: HEAP_RAM_BYTES },
		{ cwd: name === "redis-before" ? (BASELINE_ROOT ?? GATEWAY_ROOT) : GATEWAY_ROOT, logFile },
	);
	const base = `http://127.0.0.1:${port}`;
	await waitHttp(`${base}/health/live`, proc);
	return { name, base, pid: proc.pid, idleMb: memoryMb(proc.pid, "VmRSS"), logFile };
}

/**
 * 1, 2 and 3 gateway processes on one Redis, each driven by its own wrk with an
 * equal share of the connections at the same time: requests/s of the fleet, the
 * gateways' and Redis's CPU per request, script calls per request.
 */
async function scaleLines(first: Target, mockUrl: string): Promise<string[]> {
	const server = redis;
	if (server === undefined) return [];
	const fleet = [first];
	const rows: string[][] = [];
	const redisProc = await redisPid(server);
	for (let size = 1; size <= 3; size++) {
		while (fleet.length < size)
			fleet.push(await startGateway(`redis-${fleet.length + 1}`, mockUrl));
		console.error(`bench: ${size} gateway process(es) on one Redis`);
		const share = Math.max(1, Math.round(connections / size));
		await Promise.all(
			fleet.map((t) =>
				wrk(`${t.base}${PATH}`, WORKLOADS.plain, { seconds: 1, connections: Math.min(8, share) }),
			),
		);
		const calls = await evalCalls(server);
		const redisCpu = cpuUs(redisProc);
		const cpus = fleet.map((t) => cpuUs(t.pid));
		const runs = await Promise.all(
			fleet.map((t) => wrk(`${t.base}${PATH}`, WORKLOADS.plain, { seconds, connections: share })),
		);
		const n = Math.max(
			1,
			runs.reduce((sum, r) => sum + r.requests, 0),
		);
		const gatewayCpu = fleet.reduce((sum, t, i) => sum + cpuUs(t.pid) - (cpus[i] ?? 0), 0);
		rows.push([
			String(size),
			String(Math.round(runs.reduce((sum, r) => sum + r.rps, 0))),
			`${(gatewayCpu / n).toFixed(1)} µs`,
			`${((cpuUs(redisProc) - redisCpu) / n).toFixed(1)} µs`,
			(((await evalCalls(server)) - calls) / n).toFixed(3),
			String(runs.reduce((sum, r) => sum + r.non2xx + r.socketErrors, 0)),
		]);
	}
	return [
		`gateway processes on one Redis, wrk -t1 -d${seconds}s per process, ${connections} connections shared, chat-plain:`,
		...table(
			[
				"gateways",
				"req/s (all)",
				"gateway CPU/request",
				"Redis CPU/request",
				"script calls/request",
				"errors",
			],
			rows,
		),
	];
}

// ---------------------------------------------------------------------------------------------
// The run

const gatewayNames = long
	? ["memory"]
	: quick
		? ["memory"]
		: redisOnly
			? [...(BASELINE_ROOT === undefined ? [] : ["redis-before"]), "redis"]
			: ["memory", "memory-warn", "redis"];
// Timed wrk runs (+1 s warm-up each) and fixed-rate runs; generous slack for start-up.
const wrkRuns = quick ? 3 : redisOnly ? 4 + 6 + 3 * ROUNDS : 6 + 6 + 2;
const fixedRuns = quick || redisOnly ? 0 : 4;
const timer = long
	? undefined
	: bound((wrkRuns * (seconds + 15) + fixedRuns * (seconds + 30) + 180) * 1000);

try {
	if (gatewayNames.some((name) => name.startsWith("redis"))) redis = await startRedis();
	const mockPort = await freePort();
	const mockProc = spawn(["bun", "test/support/mock-vllm.ts"], {
		MOCK_VLLM_PORT: String(mockPort),
		MOCK_VLLM_MODELS: MODEL,
	});
	const mockUrl = `http://127.0.0.1:${mockPort}`;
	await waitHttp(`${mockUrl}/health`, mockProc);
	const targets: Target[] = [
		{ name: "direct", base: mockUrl, pid: mockProc.pid, idleMb: memoryMb(mockProc.pid, "VmRSS") },
	];

	if (!long) {
		for (const [name, file] of [
			["bare", "perf/bare-proxy.ts"],
			["elysia", "perf/elysia-proxy.ts"],
		] as const) {
			const port = await freePort();
			const proc = spawn(["bun", file], { PORT: String(port), UPSTREAM: mockUrl });
			const base = `http://127.0.0.1:${port}`;
			await waitHttp(`${base}/health`, proc);
			targets.push({ name, base, pid: proc.pid, idleMb: memoryMb(proc.pid, "VmRSS") });
		}
	}

	for (const name of gatewayNames) targets.push(await startGateway(name, mockUrl));
	const byName = (names: string[]) => targets.filter((t) => names.includes(t.name));

	if (long) {
		const memory = byName(["memory"])[0];
		if (memory === undefined) throw new Error("no memory gateway");
		await longRun(`${memory.base}${PATH}`, memory.pid);
	} else {
		const out: string[] = [
			`bun run bench, ${new Date().toISOString()}${quick ? ", --quick" : ""}; gateway code: ${GATEWAY_ROOT}; gateways run with BUN_JSC_forceRAMSize=${HEAP_RAM_BYTES} as the image ships them`,
			"",
		];
		const stageReport = { lines: ["stage timing: not exported"] };
		const plainNames = quick
			? ["bare", "elysia", "memory"]
			: redisOnly
				? ["bare", "redis-before", "redis"]
				: ["direct", "bare", "elysia", "memory", "memory-warn", "redis"];
		const plain = await runWorkload(WORKLOADS.plain, byName(plainNames), stageReport);
		out.push(...workloadLines(WORKLOADS.plain, plain), "");
		if (!redisOnly) out.push(...stageReport.lines, "");
		let fixed = new Map<string, FixedRateResult>();
		const measured = [{ name: "chat-plain", results: plain }];
		if (redisOnly && BASELINE_ROOT !== undefined && ROUNDS > 0) {
			out.push(...(await alternatedLines(ROUNDS, byName)), "");
		}
		const first = byName(["redis"])[0];
		if (redisOnly && first !== undefined) out.push(...(await scaleLines(first, mockUrl)), "");
		if (!quick && !redisOnly) {
			const mixed = await runWorkload(WORKLOADS.mixed, byName(plainNames), { lines: [] });
			out.push(...workloadLines(WORKLOADS.mixed, mixed), "");
			const unique = await runWorkload(WORKLOADS.unique, byName(["bare", "memory"]), {
				lines: [],
			});
			out.push(...workloadLines(WORKLOADS.unique, unique), "");
			measured.push(
				{ name: "chat (1 in 5 streamed)", results: mixed },
				{ name: "chat-unique", results: unique },
			);
			fixed = new Map();
			for (const t of byName(["direct", "bare", "memory", "redis"])) {
				console.error(`bench: fixed rate → ${t.name}`);
				fixed.set(t.name, await fixedRate(`${t.base}${PATH}`));
			}
			out.push(...fixedLines(fixed), "");
		}
		out.push(...rssLines(targets), "", ...goalLines(measured, fixed, targets));
		console.log(out.join("\n"));
	}
} finally {
	if (timer !== undefined) clearTimeout(timer);
	await cleanUp();
}
process.exit(0);
