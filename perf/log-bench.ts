/**
 * CPU cost of one request log line: the old logger (a `process.stdout.write` per line) against
 * src/log.ts, and a few ways of writing that were considered for it.
 *
 *   bun perf/log-bench.ts [lines=20000] [--pipe]
 *
 * Each variant runs in a child process of its own whose stdout is a temp file (or, with --pipe,
 * a pipe this process drains), so results never mix with the log. CPU is user + system time of
 * the child (every thread) from `process.cpuUsage()`, less the same loop without logging, divided
 * by the lines; each line's fields object is built in the loop either way. Scenarios:
 *   turn   — one line per event-loop turn (setImmediate): a loaded gateway, each request's line
 *            logged from its own callback;
 *   paced  — four lines per 1 ms timer tick: moderate load (~3,000 requests/s);
 *   burst  — all lines from one synchronous loop: the most batching can gain.
 * Results go to stderr; every child's output is checked for the right number of JSON lines.
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

const SCENARIOS = ["turn", "paced", "burst"] as const;
type Scenario = (typeof SCENARIOS)[number];

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
	"buf+2ms→filesink": {
		about: "string buffer, FileSink write+flush 2 ms after the first line",
		make: () => {
			const sink = Bun.stdout.writer();
			const b = buffered(
				(run) => setTimeout(run, 2),
				(d) => {
					sink.write(d);
					sink.flush();
				},
			);
			return {
				emit: b.emit,
				done: async () => {
					await b.done();
					await sink.flush();
				},
			};
		},
	},
	Logger: {
		about: "new src/log.ts Logger (default stdout)",
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
/** Lines per millisecond in the paced scenario. */
const PACED_PER_MS = 4;

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
		if (scenario === "turn") await nextTurn();
		else if (scenario === "paced" && i % PACED_PER_MS === PACED_PER_MS - 1) await nextMs();
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
 * flushed), the median difference per line is the cost; prints JSON to stderr.
 */
async function child(name: string, scenario: Scenario, lines: number): Promise<void> {
	const variant = VARIANTS[name];
	if (variant === undefined) throw new Error(`unknown variant ${name}`);
	const { emit, done } = variant.make();
	await drive("burst", 0, 2000, emit);
	await drive("turn", 0, 500, emit);
	await drive(scenario, 0, 2000, undefined);
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

async function parent(lines: number, pipe: boolean): Promise<void> {
	const dir = mkdtempSync(join(tmpdir(), "log-bench-"));
	const warmupLines = 2500;
	const say = (s: string) => process.stderr.write(`${s}\n`);
	say(
		`log bench: ${lines} lines per run (paced: ${Math.min(lines, 8000)}), stdout → ${pipe ? "pipe" : "file"}, Bun ${Bun.version}`,
	);
	for (const [name, v] of Object.entries(VARIANTS)) say(`  ${name.padEnd(18)} ${v.about}`);
	const writes = (name: string) => !name.endsWith("-format");
	const table: Record<string, Record<Scenario, number>> = {};
	try {
		for (const scenario of SCENARIOS) {
			const n = scenario === "paced" ? Math.min(lines, 8000) : lines;
			for (const name of Object.keys(VARIANTS)) {
				const out = join(dir, `${name}.${scenario}.log`);
				const proc = Bun.spawn(["bun", import.meta.path, "--child", name, scenario, String(n)], {
					stdout: pipe ? "pipe" : Bun.file(out),
					stderr: "pipe",
				});
				let got = "";
				if (proc.stdout instanceof ReadableStream) got = await new Response(proc.stdout).text();
				const [code, err] = await Promise.all([proc.exited, new Response(proc.stderr).text()]);
				if (!pipe) got = readFileSync(out, "utf8");
				if (code !== 0) throw new Error(`${name}/${scenario} exited ${code}: ${err}`);
				const resultLine = err.trim().split("\n").at(-1) ?? "";
				const r = JSON.parse(resultLine) as { baseline: number; perLine: number; lines: number };
				const logged = got.length === 0 ? [] : got.trimEnd().split("\n");
				const expected = writes(name) ? r.lines + warmupLines : 0;
				if (logged.length !== expected) {
					throw new Error(`${name}/${scenario}: ${logged.length} lines, expected ${expected}`);
				}
				for (const l of logged) JSON.parse(l);
				const perLine = r.perLine;
				table[name] = { ...(table[name] ?? { turn: 0, paced: 0, burst: 0 }), [scenario]: perLine };
				say(
					`  ${scenario.padEnd(6)} ${name.padEnd(18)} ${perLine.toFixed(2).padStart(7)} µs/line  (loop alone ${r.baseline.toFixed(2)} µs)`,
				);
			}
		}
	} finally {
		rmSync(dir, { recursive: true, force: true });
	}
	const old = table.old;
	say("\nCPU µs per line (× = old / variant):");
	say(`  ${"variant".padEnd(18)} ${SCENARIOS.map((s) => s.padStart(18)).join("")}`);
	for (const [name, row] of Object.entries(table)) {
		const cells = SCENARIOS.map((s) => {
			const ratio = old === undefined || row[s] <= 0 ? "" : ` (${(old[s] / row[s]).toFixed(1)}×)`;
			return `${row[s].toFixed(2)}${ratio}`.padStart(18);
		});
		say(`  ${name.padEnd(18)} ${cells.join("")}`);
	}
}

const args = Bun.argv.slice(2);
if (args[0] === "--child") {
	const scenario = args[2] as Scenario;
	if (!SCENARIOS.includes(scenario)) throw new Error(`unknown scenario ${args[2]}`);
	await child(args[1] ?? "", scenario, Number(args[3]));
} else {
	const positional = args.filter((a) => !a.startsWith("--"));
	await parent(Number(positional[0] ?? 20_000), args.includes("--pipe"));
}
