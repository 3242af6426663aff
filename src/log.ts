import { fstatSync, writeSync } from "node:fs";
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
 * The shortcut is taken only when it gives the same text as the spread: `fields` is a plain
 * object whose own keys include none of time/level/msg (the spread would overwrite them in place),
 * that has no `toJSON`, and whose first key is not an integer (integer keys would be ordered
 * before `time`). Anything else goes the slow way.
 */
export function formatLine(level: Level, msg: string, fields?: Record<string, unknown>): string {
	const head = `{"time":"${isoNow()}${LEVEL_PART[level]}${JSON.stringify(msg)}`;
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
	return `${JSON.stringify({ time: iso, level, msg, ...fields })}\n`;
}

/** How long a line may wait in the buffer before it is written. */
const FLUSH_DELAY_MS = 2;
/** A buffer this large is written at once. */
const FLUSH_BYTES = 64 * 1024;

/**
 * Lines for stdout, written in batches off the request path: a line is appended to a string and
 * the string is written when it reaches {@link FLUSH_BYTES} or {@link FLUSH_DELAY_MS} after its
 * first line, whichever is first. One per process, so lines from several loggers keep their order.
 *
 * A regular file is written with `writeSync` (no stream machinery, never blocks for long); a pipe
 * or a terminal through `process.stdout`, which does not block the event loop when the reader is
 * slow and keeps its own queue in order.
 */
class StdoutSink {
	private pending = "";
	private timer: ReturnType<typeof setTimeout> | undefined;
	/** Batches handed to `process.stdout` so far, and how many of them have been written. */
	private sent = 0;
	private done = 0;
	private waiters: { upTo: number; resolve: () => void }[] = [];
	private readonly toFile: boolean;
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
		let toFile = false;
		try {
			toFile = fstatSync(1).isFile();
		} catch {
			// No stdout to stat: let process.stdout deal with it.
		}
		this.toFile = toFile;
		// process.exit() without flush(): write what is still buffered, synchronously.
		process.on("exit", () => this.flushOnExit());
	}

	write(line: string): void {
		this.pending += line;
		if (this.pending.length >= FLUSH_BYTES) {
			this.writePending();
		} else if (this.timer === undefined) {
			// A pending timer keeps the event loop alive, so a normal exit writes the buffer first.
			this.timer = setTimeout(this.onTimer, FLUSH_DELAY_MS);
		}
	}

	/** Writes the buffer; resolves once every line logged so far has reached stdout. */
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
		if (this.toFile) {
			writeAllSync(data);
		} else {
			this.sent++;
			process.stdout.write(data, this.onWritten);
		}
	}

	private flushOnExit(): void {
		const data = this.pending;
		if (data.length === 0) return;
		this.pending = "";
		// Nothing queued in process.stdout: a blocking write goes out in order before the exit.
		if (this.toFile || this.done >= this.sent) writeAllSync(data);
		else process.stdout.write(data);
	}
}

function writeAllSync(data: string): void {
	const bytes = Buffer.from(data);
	let off = 0;
	while (off < bytes.length) off += writeSync(1, bytes, off);
}

let stdoutSink: StdoutSink | undefined;

/** One JSON object per line on stdout. */
export class Logger {
	private readonly threshold: number;
	private readonly sink: StdoutSink | undefined;
	private readonly write: (line: string) => void;

	/**
	 * @param write where each line goes, synchronously, one call per line (tests capture lines).
	 *   Without it lines go to stdout in batches: see {@link flush}.
	 */
	constructor(level: LogLevel = "info", write?: (line: string) => void) {
		this.threshold = ORDER[level];
		if (write === undefined) {
			stdoutSink ??= new StdoutSink();
			const sink = stdoutSink;
			this.sink = sink;
			this.write = (line) => sink.write(line);
		} else {
			this.sink = undefined;
			this.write = write;
		}
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
		return this.sink?.flush();
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
