import { afterAll, afterEach, describe, expect, setSystemTime, spyOn, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { formatLine, Logger } from "./log.ts";

type Level = "debug" | "info" | "warn" | "error";

/** The line the logger wrote before it was made cheaper. */
function oldLine(level: Level, msg: string, fields: Record<string, unknown> = {}): string {
	return `${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`;
}

const requestFields = (i: number) => ({
	requestId: `req_${i}`,
	model: "meta-llama/Llama-3.1-8B-Instruct",
	user: `user-${i % 7}`,
	keyId: "k1",
	tenant: "acme",
	status: 200,
	stream: i % 2 === 0,
	tokensEstimated: 312,
	tokensActual: 180 + i,
	promptTokensEstimated: 296,
	calibrationRatio: 1.0625,
	promptTokens: 150,
	completionTokens: 30,
	durationMs: i,
	upstream: "http://vllm-0:8000",
});

afterEach(() => {
	setSystemTime();
});

describe("formatLine", () => {
	test("gives the old line exactly", () => {
		setSystemTime(new Date("2026-11-27T10:11:12.345Z"));
		class WithToJSON {
			a = 1;
			toJSON() {
				return { replaced: true };
			}
		}
		const nested = { a: [1, "two", { three: null }], b: { c: undefined, d: new Date(0) } };
		const cases: [Level, string, Record<string, unknown> | undefined][] = [
			["info", "request", requestFields(3)],
			["warn", "request", requestFields(4)],
			["debug", "nothing", undefined],
			["error", "empty", {}],
			["info", "only undefined", { a: undefined }],
			["info", 'quote " backslash \\ newline \n tab \t nul \0 é 🚀 \ud800', { s: '"\\\n\u2028' }],
			["info", "time overridden", { time: "mine", other: 1 }],
			["info", "level and msg overridden", { x: 1, level: "custom", msg: 7 }],
			["info", "integer keys go first", { b: 1, 2: "two", 10: "ten", a: 3 }],
			["info", "not integer keys", { "-1": 1, "1.5": 2, "01": 3, x: 4 }],
			["info", "nested", nested],
			["info", "own toJSON", { a: 1, toJSON: () => "gone" }],
			["info", "inherited toJSON", new WithToJSON() as unknown as Record<string, unknown>],
			["info", "non-function toJSON", { toJSON: 5, a: 1 }],
			["info", "proto key", JSON.parse('{"__proto__":{"x":1},"y":2}') as Record<string, unknown>],
			["info", "array", [1, 2] as unknown as Record<string, unknown>],
			["info", undefined as unknown as string, { a: 1 }],
			["info", 42 as unknown as string, undefined],
		];
		for (const [level, msg, fields] of cases) {
			expect(formatLine(level, msg, fields)).toBe(oldLine(level, msg, fields));
		}
	});

	test("gives the old line for any fields", () => {
		setSystemTime(new Date("2026-01-02T03:04:05.006Z"));
		const key = fc.oneof(
			fc.string(),
			fc.constantFrom("time", "level", "msg", "0", "7", "4294967295", "toJSON", "__proto__"),
		);
		fc.assert(
			fc.property(
				fc.constantFrom<Level>("debug", "info", "warn", "error"),
				fc.string(),
				fc.dictionary(key, fc.jsonValue()),
				(level, msg, fields) => {
					expect(formatLine(level, msg, fields)).toBe(oldLine(level, msg, fields));
				},
			),
			{ numRuns: 2000 },
		);
	});

	test("follows the clock", () => {
		setSystemTime(new Date("2026-11-27T10:11:12.345Z"));
		expect(formatLine("info", "a")).toStartWith('{"time":"2026-11-27T10:11:12.345Z",');
		setSystemTime(new Date("2026-11-27T10:11:12.346Z"));
		expect(formatLine("info", "a")).toStartWith('{"time":"2026-11-27T10:11:12.346Z",');
		setSystemTime();
		const now = Date.now();
		const time = (JSON.parse(formatLine("info", "a")) as { time: string }).time;
		expect(Math.abs(Date.parse(time) - now)).toBeLessThan(1000);
	});
});

describe("Logger with a write callback", () => {
	test("delivers each line at once, one call per line, in order", () => {
		const lines: string[] = [];
		const logger = new Logger("info", (l) => lines.push(l));
		for (let i = 0; i < 1000; i++) {
			logger.info("request", requestFields(i));
			expect(lines.length).toBe(i + 1);
		}
		expect(logger.flush()).toBeUndefined();
		lines.forEach((l, i) => {
			expect(l.endsWith("\n")).toBe(true);
			expect(l.indexOf("\n")).toBe(l.length - 1);
			const parsed = JSON.parse(l) as Record<string, unknown>;
			expect(Object.keys(parsed).slice(0, 4)).toEqual(["time", "level", "msg", "requestId"]);
			expect(parsed).toMatchObject({ level: "info", msg: "request", ...requestFields(i) });
		});
	});

	test("filters by level", () => {
		const seen = (level: "debug" | "info" | "warn" | "error" | "silent") => {
			const lines: string[] = [];
			const logger = new Logger(level, (l) => lines.push(l));
			logger.debug("d");
			logger.info("i", { a: 1 });
			logger.warn("w");
			logger.error("e");
			logger.log("warn", "w2");
			return lines.map((l) => (JSON.parse(l) as { msg: string }).msg);
		};
		expect(seen("debug")).toEqual(["d", "i", "w", "e", "w2"]);
		expect(seen("info")).toEqual(["i", "w", "e", "w2"]);
		expect(seen("warn")).toEqual(["w", "e", "w2"]);
		expect(seen("error")).toEqual(["e"]);
		expect(seen("silent")).toEqual([]);
		const logger = new Logger("warn", () => {});
		expect([logger.enabled("debug"), logger.enabled("info")]).toEqual([false, false]);
		expect([logger.enabled("warn"), logger.enabled("error")]).toEqual([true, true]);
		expect(new Logger().enabled("info")).toBe(true);
		expect(new Logger().enabled("debug")).toBe(false);
	});
});

describe("Logger to stdout", () => {
	test("batches lines into process.stdout without losing or reordering any", async () => {
		const chunks: string[] = [];
		let unfinished = 0;
		const write = spyOn(process.stdout, "write").mockImplementation(((
			chunk: string | Uint8Array,
			cb?: unknown,
		) => {
			chunks.push(String(chunk));
			unfinished++;
			// Finish like a slow pipe: later, in order.
			setTimeout(() => {
				unfinished--;
				if (typeof cb === "function") cb(null);
			}, 1);
			return true;
		}) as typeof process.stdout.write);
		try {
			const logger = new Logger("info");
			const other = new Logger("debug");
			const n = 20_000;
			for (let i = 0; i < n; i++) {
				if (i % 3 === 0) other.info("request", requestFields(i));
				else logger.info("request", requestFields(i));
				logger.debug("dropped", { i });
				if (i % 500 === 0) await Bun.sleep(1);
			}
			const flushed = logger.flush();
			expect(flushed).toBeInstanceOf(Promise);
			await flushed;
			expect(unfinished).toBe(0);
			const text = chunks.join("");
			expect(text.endsWith("\n")).toBe(true);
			const lines = text.slice(0, -1).split("\n");
			expect(lines.length).toBe(n);
			lines.forEach((l, i) => {
				expect((JSON.parse(l) as { requestId: string }).requestId).toBe(`req_${i}`);
			});
			// Far fewer writes than lines.
			expect(chunks.length).toBeLessThan(n / 10);
			// A flush with nothing buffered resolves; so does one of an idle logger.
			await logger.flush();
			await other.flush();
		} finally {
			write.mockRestore();
		}
	});

	test("writes a lone line within a few milliseconds", async () => {
		const chunks: string[] = [];
		const write = spyOn(process.stdout, "write").mockImplementation(((
			chunk: string | Uint8Array,
			cb?: unknown,
		) => {
			chunks.push(String(chunk));
			if (typeof cb === "function") cb(null);
			return true;
		}) as typeof process.stdout.write);
		try {
			const logger = new Logger("info");
			// Two lines in the same millisecond: the first goes at once, the second after a timer.
			setSystemTime(new Date("2026-11-27T10:11:12.345Z"));
			logger.info("first");
			logger.info("second");
			setSystemTime();
			expect(chunks.join("")).toContain('"msg":"first"');
			await Bun.sleep(20);
			expect(chunks.join("")).toContain('"msg":"second"');
		} finally {
			write.mockRestore();
		}
	});
});

describe("Logger in a process of its own", () => {
	const dir = mkdtempSync(join(tmpdir(), "log-test-"));
	const logModule = join(import.meta.dir, "log.ts");
	const N = 20_000;
	const script = (name: string, body: string) => {
		const path = join(dir, `${name}.ts`);
		writeFileSync(
			path,
			`import { Logger } from ${JSON.stringify(logModule)};\nconst logger = new Logger("info");\n${body}\n`,
		);
		return path;
	};
	const logN = `for (let i = 0; i < ${N}; i++) {
	logger.info("request", { requestId: "req_" + i, pad: "x".repeat(200) });
	if (i % 1000 === 0) await Bun.sleep(1);
}`;
	/** Runs `bun path` with its stdout a pipe read only after `readAfterMs` (a slow reader). */
	async function run(path: string, readAfterMs: number): Promise<string[]> {
		const proc = Bun.spawn(
			["sh", "-c", `"$0" "$1" | (sleep ${readAfterMs / 1000}; cat)`, process.execPath, path],
			{ stdout: "pipe", stderr: "pipe" },
		);
		const [out, err, code] = await Promise.all([
			new Response(proc.stdout).text(),
			new Response(proc.stderr).text(),
			proc.exited,
		]);
		expect(err).toBe("");
		expect(code).toBe(0);
		return out.length === 0 ? [] : out.slice(0, -1).split("\n");
	}
	function expectAll(lines: string[]) {
		expect(lines.length).toBe(N);
		lines.forEach((l, i) => {
			expect((JSON.parse(l) as { requestId: string }).requestId).toBe(`req_${i}`);
		});
	}

	afterAll(() => {
		rmSync(dir, { recursive: true, force: true });
	});

	test("a normal exit writes every line", async () => {
		expectAll(await run(script("normal", logN), 300));
	}, 20_000);

	test("flush then process.exit writes every line", async () => {
		const body = `${logN}\nawait Promise.race([logger.flush(), Bun.sleep(5000)]);\nprocess.exit(0);`;
		expectAll(await run(script("flush-exit", body), 300));
	}, 20_000);

	test("process.exit without flush still writes the buffer (stdout a file)", async () => {
		// Lines of the same millisecond are still buffered at the exit: the exit hook writes them.
		const body = `for (let i = 0; i < ${N}; i++) logger.info("request", { requestId: "req_" + i });\nprocess.exit(0);`;
		const out = join(dir, "exit.log");
		const proc = Bun.spawn([process.execPath, script("exit", body)], {
			stdout: Bun.file(out),
			stderr: "pipe",
		});
		expect(await proc.exited).toBe(0);
		expectAll(readFileSync(out, "utf8").slice(0, -1).split("\n"));
	}, 20_000);

	test("lines reach a pipe within milliseconds", async () => {
		// Two lines in a row (likely the same millisecond: the second waits for a timer).
		const body = `logger.info("a");\nlogger.info("b");\nawait Bun.sleep(3000);`;
		const proc = Bun.spawn([process.execPath, script("prompt", body)], {
			stdout: "pipe",
			stderr: "ignore",
		});
		try {
			const reader = proc.stdout.getReader();
			const decoder = new TextDecoder();
			let text = "";
			while (text.split("\n").length < 3) {
				const { value, done } = await reader.read();
				if (done) break;
				text += decoder.decode(value, { stream: true });
			}
			const arrived = Date.now();
			const lines = text
				.slice(0, -1)
				.split("\n")
				.map((l) => JSON.parse(l) as { time: string; msg: string });
			expect(lines.map((l) => l.msg)).toEqual(["a", "b"]);
			// Logged to read in well under the script's 3 s sleep (the timer is 2 ms).
			expect(arrived - Date.parse(lines[1]?.time ?? "")).toBeLessThan(500);
		} finally {
			proc.kill();
		}
	}, 20_000);
});
