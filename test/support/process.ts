import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { freePort } from "./redis.ts";

const ROOT = join(import.meta.dir, "..", "..");

export interface GatewayProcess {
	readonly url: string;
	readonly port: number;
	readonly proc: Subprocess;
	/** The configuration file the process was started with (tests may rewrite it). */
	readonly configFile: string;
	/** Everything the process wrote to stdout so far. */
	output(): string;
	/** SIGTERM and wait. */
	stop(): Promise<void>;
	/** SIGKILL and wait: the process gets no chance to clean up. */
	kill(): Promise<void>;
}

const children = new Set<Subprocess>();
process.on("exit", () => {
	for (const child of children) child.kill("SIGKILL");
});

/**
 * Starts `bun src/main.ts --config <file>` as its own process on a free port,
 * as an operator would, and waits until /health/live answers.
 */
export async function spawnGateway(
	configYaml: string,
	env: Record<string, string> = {},
	/** Another way to start it (the compiled binary), run in `cwd`; `--config <file>` is appended. */
	launch?: { command: string[]; cwd: string; env?: Record<string, string> },
): Promise<GatewayProcess> {
	const port = await freePort();
	const dir = mkdtempSync(join(tmpdir(), "trl-gw-"));
	const file = join(dir, "config.yaml");
	writeFileSync(
		file,
		configYaml.replace(/^server:\n/m, `server:\n  port: ${port}\n  host: 127.0.0.1\n`),
	);
	const proc = Bun.spawn([...(launch?.command ?? ["bun", "src/main.ts"]), "--config", file], {
		cwd: launch?.cwd ?? ROOT,
		// The port is the file's: a PORT or SERVER_PORT of the caller's shell would override it.
		env: launch?.env ?? { ...withoutPortVars(process.env), ...env },
		stdout: "pipe",
		stderr: "pipe",
	});
	children.add(proc);
	let out = "";
	void (async () => {
		const decoder = new TextDecoder();
		for await (const chunk of proc.stdout) out += decoder.decode(chunk);
	})();
	const url = `http://127.0.0.1:${port}`;
	const deadline = Date.now() + 10_000;
	for (;;) {
		try {
			const res = await fetch(`${url}/health/live`);
			if (res.ok) break;
		} catch {
			// not listening yet
		}
		if (proc.exitCode !== null || Date.now() > deadline) {
			const err = await new Response(proc.stderr).text();
			children.delete(proc);
			proc.kill("SIGKILL");
			throw new Error(`gateway did not start: ${err}\n${out}`);
		}
		await Bun.sleep(25);
	}
	const finish = async (signal: "SIGTERM" | "SIGKILL") => {
		if (proc.exitCode === null) proc.kill(signal);
		await proc.exited;
		children.delete(proc);
		rmSync(dir, { recursive: true, force: true });
	};
	return {
		url,
		port,
		proc,
		configFile: file,
		output: () => out,
		stop: () => finish("SIGTERM"),
		kill: () => finish("SIGKILL"),
	};
}

/** The environment without the variables that override the gateway's port. */
export function withoutPortVars(env: NodeJS.ProcessEnv): Record<string, string> {
	const out: Record<string, string> = {};
	for (const [k, v] of Object.entries(env)) {
		if (v !== undefined && k !== "PORT" && k !== "SERVER_PORT") out[k] = v;
	}
	return out;
}
