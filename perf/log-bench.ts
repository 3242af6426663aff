/**
 * CPU cost of one request log line: the old logger (a `process.stdout.write` per line) against
 * the new src/log.ts Logger, and the other ways of writing that were tried for it.
 *
 *   bun perf/log-bench.ts [lines=20000] [--runs=3] [--pipe] [scenario or variant names: only those]
 *
 * Each variant × scenario runs in a child process of its own whose stdout is a temp file (with
 * --pipe, a pipe this process drains), so the results (on stderr) never mix with the log. In the
 * child: a warm-up, then LOG_BENCH_ROUNDS (9) rounds of the scenario's loop without logging and
 * with it, everything flushed; the cost per line is the median over rounds of the difference in
 * CPU time (user + system, every thread, `process.cpuUsage()`), so building each line's fields
 * object and the loop's own waits are not counted. The child's output is then checked: every line
 * there, whole JSON, in order. Each child is run --runs times, interleaved with the others, and
 * the table gives the median. Scenarios (see SCENARIOS): busy and busy8 model a saturated
 * gateway, paced and light one with idle time between requests (there a timer wake-up costs more
 * than the write: ~15–30 µs on this VM, and the numbers are noisy), burst the most batching can
 * give. The machine is shared and small: compare ratios within one run.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatLine, Logger } from "../src/log.ts";

type Level = "info" | "warn";
type Fields = Record<string, unknown>;
type Emit = (level: Level, msg: string, fields: Fields) => void;
interface Variant {
	readonly about: string;
	/** Returns the log call and a function that resolves once everything is on stdout. */
	make(): { emit: Emit; done: () => Promise<void> };
}

interface Scenario {
	readonly about: string;
	/** Lines logged between two waits. */
	readonly perTurn: number;
	/** How the loop waits: the next event-loop turn, a 1 ms timer, or not at all. */
	readonly wait: "turn" | "timer" | "none";
	/** At most this many lines (the timer scenarios take 1 ms per turn). */
	readonly maxLines: number;
}

const SCENARIOS = {
	busy: {
		about:
			"one line per event-loop turn (setImmediate), never idle: heavy load, worst case for batching",
		perTurn: 1,
		wait: "turn",
		maxLines: Number.POSITIVE_INFINITY,
	},
	busy8: {
		about: "eight lines per event-loop turn: heavy load, several requests done per poll",
		perTurn: 8,
		wait: "turn",
		maxLines: Number.POSITIVE_INFINITY,
	},
	paced: {
		about: "four lines per 1 ms timer tick, idle in between: ~3,000 requests/s",
		perTurn: 4,
		wait: "timer",
		maxLines: 8000,
	},
	light: {
		about: "one line per 1 ms timer tick, idle in between: light load",
		perTurn: 1,
		wait: "timer",
		maxLines: 3000,
	},
	burst: {
		about: "every line from one synchronous loop: the most batching can gain",
		perTurn: Number.POSITIVE_INFINITY,
		wait: "none",
		maxLines: Number.POSITIVE_INFINITY,
	},
} satisfies Record<string, Scenario>;
const scenarioNamed: Record<string, Scenario | undefined> = SCENARIOS;

/** The old src/log.ts, line for line. */
function oldFormat(level: Level, msg: string, fields: Fields = {}): string {
	return `${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`;
}

/** Resolves once everything written to process.stdout so far has been written out. */
function stdoutDrained(): Promise<void> {
	return new Promise((resolve) => {
		if (process.stdout.writableLength === 0 && !process.stdout.writableNeedDrain) resolve();
		else process.stdout.once("drain", () => resolve());
	});
}

/** Appends lines to a string and hands it to `out` when `schedule` says so (or at 64 KiB). */
function buffered(
	schedule: (run: () => void) => void,
	out: (data: string) => void,
): { emit: Emit; done: () => Promise<void> } {
	let pending = "";
	let scheduled = false;
	const run = () => {
		scheduled = false;
		const data = pending;
		pending = "";
		if (data.length > 0) out(data);
	};
	return {
		emit(level, msg, fields) {
			pending += formatLine(level, msg, fields);
			if (pending.length >= 65536) run();
			else if (!scheduled) {
				scheduled = true;
				schedule(run);
			}
		},
		async done() {
			run();
			await stdoutDrained();
		},
	};
}

const VARIANTS: Record<string, Variant> = {
	old: {
		about: "old logger: spread + toISOString + process.stdout.write per line",
		make: () => ({
			emit: (level, msg, fields) => process.stdout.write(oldFormat(level, msg, fields)),
			done: stdoutDrained,
		}),
	},
	"old-format": {
		about: "old formatting only, nothing written",
		make: () => {
			let n = 0;
			return {
				emit: (level, msg, fields) => {
					n += oldFormat(level, msg, fields).length;
				},
				done: async () => {
					if (n < 0) throw new Error("unreachable");
				},
			};
		},
	},
	"new-format": {
		about: "new formatting only, nothing written",
		make: () => {
			let n = 0;
			return {
				emit: (level, msg, fields) => {
					n += formatLine(level, msg, fields).length;
				},
				done: async () => {
					if (n < 0) throw new Error("unreachable");
				},
			};
		},
	},
	"new-format+write": {
		about: "new formatting + process.stdout.write per line",
		make: () => ({
			emit: (level, msg, fields) => process.stdout.write(formatLine(level, msg, fields)),
			done: stdoutDrained,
		}),
	},
	filesink: {
		about: "new formatting + Bun.stdout.writer() per line (flushes each tick)",
		make: () => {
			const sink = Bun.stdout.writer();
			return {
				emit: (level, msg, fields) => {
					sink.write(formatLine(level, msg, fields));
				},
				done: async () => {
					await sink.flush();
				},
			};
		},
	},
	"buf+immediate": {
		about: "string buffer, process.stdout.write on setImmediate",
		make: () =>
			buffered(
				(run) => setImmediate(run),
				(d) => process.stdout.write(d),
			),
	},
	"buf+2ms→stdout": {
		about: "string buffer, process.stdout.write 2 ms after the first line",
		make: () =>
			buffered(
				(run) => setTimeout(run, 2),
				(d) => process.stdout.write(d),
			),
	},
	Logger: {
		about: "src/log.ts: a ms's first line written at once, the rest of that ms batched",
		make: () => {
			const logger = new Logger("info");
			return {
				emit: (level, msg, fields) => logger.log(level, msg, fields),
				done: async () => {
					await logger.flush();
				},
			};
		},
	},
};

/** A settled request's line, as src/gateway.ts logs it, varying with i. */
function requestFields(i: number): Fields {
	return {
		requestId: `req_${(0x10000000 + i * 2654435761).toString(16).slice(-12)}`,
		model: "meta-llama/Llama-3.1-8B-Instruct",
		user: `user-${i % 1000}`,
		keyId: `k${i % 97}`,
		tenant: i % 3 === 0 ? "acme" : "globex",
		status: 200,
		stream: i % 5 === 0,
		tokensEstimated: 312 + (i % 200),
		tokensActual: 180 + (i % 150),
		promptTokensEstimated: 296 + (i % 180),
		calibrationRatio: 1.0625,
		promptTokens: 150 + (i % 120),
		completionTokens: 30 + (i % 40),
		durationMs: 12 + (i % 900),
		upstream: "http://vllm-0.vllm.inference.svc.cluster.local:8000",
	};
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));
const nextMs = () => new Promise<void>((resolve) => setTimeout(resolve, 1));

async function drive(
	scenario: Scenario,
	from: number,
	lines: number,
	emit: Emit | undefined,
): Promise<void> {
	for (let i = from; i < from + lines; i++) {
		const fields = requestFields(i);
		if (emit !== undefined) emit(fields.status === 200 ? "info" : "warn", "request", fields);
		else if (fields.status !== 200) throw new Error("unreachable");
		if ((i + 1) % scenario.perTurn !== 0) continue;
		if (scenario.wait === "turn") await nextTurn();
		else if (scenario.wait === "timer") await nextMs();
	}
}

function cpuUs(): number {
	const u = process.cpuUsage();
	return u.user + u.system;
}

const ROUNDS = Number(process.env.LOG_BENCH_ROUNDS ?? 9);

function median(xs: number[]): number {
	const s = [...xs].sort((a, b) => a - b);
	return s[Math.floor(s.length / 2)] ?? Number.NaN;
}

/**
 * In a child: warm up, then ROUNDS rounds of the loop without logging and with it (everything
 * flushed); the median difference per line is the cost. Prints JSON to stderr.
 */
async function child(name: string, scenarioName: string, lines: number): Promise<void> {
	const variant = VARIANTS[name];
	const scenario = scenarioNamed[scenarioName];
	if (variant === undefined || scenario === undefined) {
		throw new Error(`unknown variant or scenario ${name} ${scenarioName}`);
	}
	const { emit, done } = variant.make();
	await drive(SCENARIOS.burst, 0, 2000, emit);
	await drive(SCENARIOS.busy, 0, 500, emit);
	await drive(scenario, 0, Math.min(2000, lines), undefined);
	await done();
	const per = Math.ceil(lines / ROUNDS);
	const base: number[] = [];
	const diff: number[] = [];
	for (let r = 0; r < ROUNDS; r++) {
		const c0 = cpuUs();
		await drive(scenario, r * per, per, undefined);
		const c1 = cpuUs();
		await drive(scenario, r * per, per, emit);
		await done();
		const c2 = cpuUs();
		base.push((c1 - c0) / per);
		diff.push((c2 - c1 - (c1 - c0)) / per);
	}
	const result = { baseline: median(base), perLine: median(diff), lines: per * ROUNDS };
	process.stderr.write(`${JSON.stringify(result)}\n`);
}

/** Lines the child logs while warming up. */
const WARMUP_LINES = 2500;

async function runChild(
	name: string,
	scenario: string,
	lines: number,
	pipe: boolean,
	out: string,
): Promise<{ baseline: number; perLine: number }> {
	const proc = Bun.spawn(["bun", import.meta.path, "--child", name, scenario, String(lines)], {
		stdout: pipe ? "pipe" : Bun.file(out),
		stderr: "pipe",
	});
	const stdout = proc.stdout instanceof ReadableStream ? new Response(proc.stdout).text() : "";
	const [code, err, piped] = await Promise.all([
		proc.exited,
		new Response(proc.stderr).text(),
		stdout,
	]);
	if (code !== 0) throw new Error(`${name}/${scenario} exited ${code}: ${err}`);
	const got = pipe ? piped : readFileSync(out, "utf8");
	const r = JSON.parse(err.trim().split("\n").at(-1) ?? "") as {
		baseline: number;
		perLine: number;
		lines: number;
	};
	// Every line is there, whole, in order.
	const logged = got.length === 0 ? [] : got.trimEnd().split("\n");
	const expected = name.endsWith("-format") ? 0 : r.lines + WARMUP_LINES;
	if (logged.length !== expected) {
		throw new Error(`${name}/${scenario}: ${logged.length} lines, expected ${expected}`);
	}
	// Warm-up lines 0–1999 then 0–499, then the measured ones from 0.
	for (const [k, l] of logged.entries()) {
		const i = k < 2000 ? k : k < WARMUP_LINES ? k - 2000 : k - WARMUP_LINES;
		if ((JSON.parse(l) as { requestId?: unknown }).requestId !== requestFields(i).requestId) {
			throw new Error(`${name}/${scenario}: line ${k} out of order: ${l}`);
		}
	}
	return r;
}

async function parent(lines: number, reps: number, pipe: boolean, only: string[]): Promise<void> {
	const dir = mkdtempSync(join(tmpdir(), "log-bench-"));
	const say = (s: string) => process.stderr.write(`${s}\n`);
	const pick = (names: string[]) => {
		const chosen = names.filter((n) => only.includes(n));
		return chosen.length > 0 ? chosen : names;
	};
	const scenarios = pick(Object.keys(SCENARIOS));
	const variants = pick(Object.keys(VARIANTS));
	// Formatting alone costs the same whatever the pace; where timers pace the loop it is noise.
	const skip = (variant: string, scenario: string) =>
		variant.endsWith("-format") && scenarioNamed[scenario]?.wait === "timer";
	say(
		`log bench: stdout → ${pipe ? "pipe" : "file"}, Bun ${Bun.version}; ${reps} runs of each, ${ROUNDS} rounds a run`,
	);
	for (const name of scenarios) {
		const sc = scenarioNamed[name];
		if (sc !== undefined)
			say(`  ${name.padEnd(7)} ${sc.about}; ${Math.min(lines, sc.maxLines)} lines`);
	}
	for (const name of variants) say(`  ${name.padEnd(18)} ${VARIANTS[name]?.about ?? ""}`);
	const results = new Map<string, number[]>();
	try {
		// Runs interleaved, so a burst of load from elsewhere hits every variant alike.
		for (let rep = 1; rep <= reps; rep++) {
			for (const scenario of scenarios) {
				const n = Math.min(lines, scenarioNamed[scenario]?.maxLines ?? lines);
				const got: string[] = [];
				for (const name of variants) {
					if (skip(name, scenario)) continue;
					const r = await runChild(name, scenario, n, pipe, join(dir, `${name}.${scenario}.log`));
					const key = `${name}/${scenario}`;
					results.set(key, [...(results.get(key) ?? []), r.perLine]);
					got.push(`${name} ${r.perLine.toFixed(2)}`);
				}
				say(`  run ${rep} ${scenario}: ${got.join(", ")}`);
			}
		}
	} finally {
		rmSync(dir, { recursive: true, force: true });
	}
	const cost = (name: string, scenario: string) => median(results.get(`${name}/${scenario}`) ?? []);
	say(`\nCPU µs per line less the loop alone, median of ${reps} runs (× = old ÷ variant):`);
	say(`  ${"".padEnd(18)}${scenarios.map((s) => s.padStart(14)).join("")}`);
	for (const name of variants) {
		const cells = scenarios.map((s) => {
			if (skip(name, s)) return "–".padStart(14);
			const v = cost(name, s);
			const ratio = name === "old" ? "" : ` ${(cost("old", s) / v).toFixed(1)}×`;
			return `${v.toFixed(2)}${ratio}`.padStart(14);
		});
		say(`  ${name.padEnd(18)}${cells.join("")}`);
	}
}

const args = Bun.argv.slice(2);
if (args[0] === "--child") {
	await child(args[1] ?? "", args[2] ?? "", Number(args[3]));
} else {
	const positional = args.filter((a) => !a.startsWith("--"));
	const lines = /^\d+$/.test(positional[0] ?? "") ? Number(positional.shift()) : 20_000;
	const reps = Number(args.find((a) => a.startsWith("--runs="))?.slice(7) ?? 3);
	await parent(lines, reps, args.includes("--pipe"), positional);
}
