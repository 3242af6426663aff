import type { LogLevel } from "./config/schema.ts";

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

/** One JSON object per line on stdout. */
export class Logger {
	/**
	 * @param write where each line goes (stdout by default; tests capture lines).
	 */
	constructor(
		private readonly level: LogLevel = "info",
		private readonly write: (line: string) => void = (line) => {
			process.stdout.write(line);
		},
	) {}

	enabled(level: Exclude<LogLevel, "silent">): boolean {
		return ORDER[level] >= ORDER[this.level];
	}

	log(level: Exclude<LogLevel, "silent">, msg: string, fields: Record<string, unknown> = {}): void {
		if (!this.enabled(level)) return;
		this.write(`${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`);
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
