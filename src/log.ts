import { writeSync } from "node:fs";
import type { LogLevel } from "./config/schema.ts";

type Level = Exclude<LogLevel, "silent">;

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

/** `","level":"…","msg":` — the part of a line between the time and the message. */
const LEVEL_PART: Record<Level, string> = {
	debug: '","level":"debug","msg":',
	info: '","level":"info","msg":',
	warn: '","level":"warn","msg":',
	error: '","level":"error","msg":',
};

/** The ISO time of the last line, rebuilt only when the millisecond changes. */
let isoMs = Number.NaN;
let iso = "";

function isoNow(): string {
	const now = Date.now();
	if (now !== isoMs) {
		isoMs = now;
		iso = new Date(now).toISOString();
	}
	return iso;
}

/**
 * One log line: exactly `JSON.stringify({ time, level, msg, ...fields })` plus a newline, built by
 * concatenation so the fields are serialised once without being copied into a new object.
 *
 * The shortcut is taken only when it gives the same text as the spread: `fields` is an object
 * whose own keys include none of time/level/msg (the spread would overwrite them in place), that
 * has no `toJSON`, and whose first key is not an integer (integer keys would be ordered before
 * `time`). Anything else (and a `msg` that is not a string, which the types rule out) goes the
 * slow way.
 */
export function formatLine(level: Level, msg: string, fields?: Record<string, unknown>): string {
	const time = isoNow();
	if (typeof msg === "string") {
		const head = `{"time":"${time}${LEVEL_PART[level]}${JSON.stringify(msg)}`;
		if (fields === undefined) return `${head}}\n`;
		if (
			typeof fields === "object" &&
			fields !== null &&
			typeof fields.toJSON !== "function" &&
			!Object.hasOwn(fields, "time") &&
			!Object.hasOwn(fields, "level") &&
			!Object.hasOwn(fields, "msg")
		) {
			const json: string | undefined = JSON.stringify(fields);
			if (json !== undefined && json.charCodeAt(0) === 123 /* { */) {
				if (json.length === 2) return `${head}}\n`;
				const first = json.charCodeAt(2);
				if (first < 48 || first > 57 /* not 0-9 */) return `${head},${json.slice(1)}\n`;
			}
		}
	}
	return `${JSON.stringify({ time, level, msg, ...fields })}\n`;
}

/** The longest a line waits in the buffer when no later line comes to write it. */
const FLUSH_DELAY_MS = 2;
/** A buffer this large is written at once. */
const FLUSH_BYTES = 64 * 1024;

/**
 * The batching between the loggers and stdout (one per process, so lines from several loggers
 * keep their order). The first line of a millisecond is written at once, together with whatever
 * was buffered before it; later lines of the same millisecond are buffered. Under load that is one
 * write per millisecond however many requests finish in it; under light load each line goes out
 * at once, with no timer and no extra wake-up of the event loop (either costs more than the write
 * it would save). A line left in the buffer when the traffic stops is written by a timer
 * {@link FLUSH_DELAY_MS} later, which also keeps the process alive until it has been.
 *
 * Writes go through `process.stdout`: a regular file is written at once, a pipe or a terminal
 * without blocking the event loop (`process.stdout` queues what a slow reader has not taken, in
 * order).
 */
class StdoutSink {
	private pending = "";
	/** The millisecond of the last write. */
	private lastWriteMs = Number.NaN;
	private timer: ReturnType<typeof setTimeout> | undefined;
	/** Writes handed to `process.stdout`, and how many of them it has finished. */
	private sent = 0;
	private done = 0;
	private waiters: { upTo: number; resolve: () => void }[] = [];
	private readonly onWritten = () => {
		this.done++;
		if (this.waiters.length === 0) return;
		const still: typeof this.waiters = [];
		for (const w of this.waiters) {
			if (w.upTo <= this.done) w.resolve();
			else still.push(w);
		}
		this.waiters = still;
	};
	private readonly onTimer = () => {
		this.timer = undefined;
		this.writePending();
	};

	constructor() {
		// process.exit() without flush(): write what is still buffered before the process goes.
		process.on("exit", () => this.flushOnExit());
	}

	/** @param nowMs `Date.now()` when the line was made. */
	write(line: string, nowMs: number): void {
		if (nowMs !== this.lastWriteMs) {
			this.lastWriteMs = nowMs;
			if (this.pending.length === 0) this.send(line);
			else {
				this.pending += line;
				this.writePending();
			}
		} else {
			this.pending += line;
			if (this.pending.length >= FLUSH_BYTES) this.writePending();
			else this.timer ??= setTimeout(this.onTimer, FLUSH_DELAY_MS);
		}
	}

	/** Writes the buffer; resolves once every line logged so far has been written to stdout. */
	flush(): Promise<void> {
		this.writePending();
		if (this.done >= this.sent) return Promise.resolve();
		const upTo = this.sent;
		return new Promise((resolve) => {
			this.waiters.push({ upTo, resolve });
		});
	}

	private writePending(): void {
		if (this.timer !== undefined) {
			clearTimeout(this.timer);
			this.timer = undefined;
		}
		const data = this.pending;
		if (data.length === 0) return;
		this.pending = "";
		this.send(data);
	}

	private send(data: string): void {
		this.sent++;
		process.stdout.write(data, this.onWritten);
	}

	private flushOnExit(): void {
		const data = this.pending;
		if (data.length === 0) return;
		this.pending = "";
		// Nothing else queued in process.stdout: a blocking write goes out whole and in order,
		// where an asynchronous one may not finish before the process ends.
		if (this.done >= this.sent) writeAllSync(data);
		else process.stdout.write(data);
	}
}

/** Writes all of `data` to fd 1, waiting out EAGAIN (process.stdout makes a pipe non-blocking). */
function writeAllSync(data: string): void {
	const bytes = Buffer.from(data);
	const pause = new Int32Array(new SharedArrayBuffer(4));
	let off = 0;
	let waitedMs = 0;
	while (off < bytes.length) {
		try {
			off += writeSync(1, bytes, off);
		} catch (err) {
			const code = err !== null && typeof err === "object" && "code" in err ? err.code : "";
			// A reader that takes nothing for 5 s is not coming back: give up rather than hang.
			if (code !== "EAGAIN" || waitedMs >= 5000) return;
			Atomics.wait(pause, 0, 0, 1);
			waitedMs++;
		}
	}
}

/** Made by the first line for stdout. */
let stdoutSink: StdoutSink | undefined;

function toStdout(line: string): void {
	stdoutSink ??= new StdoutSink();
	// formatLine has just read the clock: the sink batches by that millisecond.
	stdoutSink.write(line, isoMs);
}

/** One JSON object per line on stdout. */
export class Logger {
	private readonly threshold: number;
	private readonly write: (line: string) => void;

	/**
	 * @param write where each line goes, synchronously, one call per line (tests capture lines).
	 *   Without it lines go to stdout in batches: see {@link flush}.
	 */
	constructor(level: LogLevel = "info", write?: (line: string) => void) {
		this.threshold = ORDER[level];
		this.write = write ?? toStdout;
	}

	enabled(level: Level): boolean {
		return ORDER[level] >= this.threshold;
	}

	log(level: Level, msg: string, fields?: Record<string, unknown>): void {
		if (ORDER[level] < this.threshold) return;
		this.write(formatLine(level, msg, fields));
	}

	/**
	 * Writes out buffered lines (stdout only; a `write` callback has nothing buffered). Await it
	 * before `process.exit`: a normal exit writes them anyway, but an exit can lose lines still
	 * queued for a slow pipe.
	 */
	flush(): Promise<void> | void {
		if (this.write === toStdout) return stdoutSink?.flush();
	}

	debug(msg: string, fields?: Record<string, unknown>) {
		this.log("debug", msg, fields);
	}
	info(msg: string, fields?: Record<string, unknown>) {
		this.log("info", msg, fields);
	}
	warn(msg: string, fields?: Record<string, unknown>) {
		this.log("warn", msg, fields);
	}
	error(msg: string, fields?: Record<string, unknown>) {
		this.log("error", msg, fields);
	}
}
