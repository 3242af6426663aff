/**
 * Hermetic Redis for tests: real `redis-server` processes on free loopback ports, each in a
 * fresh temp directory, with no persistence. Every child is tracked and killed when the test
 * process exits, so a forgotten `stop()` cannot leak a server past the run.
 *
 * Needs `redis-server` and `redis-cli` (7.x) on PATH.
 */
import {
	closeSync,
	mkdirSync,
	mkdtempSync,
	openSync,
	readFileSync,
	rmSync,
	writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import type { RedisConfig } from "../../src/config/schema.ts";

const HOST = "127.0.0.1";
/** Cluster bus port offset used by Redis (port + 10000). */
const BUS_OFFSET = 10000;
/**
 * Ports are picked at random below the kernel's ephemeral range (32768+ on Linux), so a port
 * we have checked cannot be handed out meanwhile to an outgoing connection or a `port: 0`
 * listener elsewhere in the run.
 */
const PORT_MIN = 10000;
const PORT_MAX = 32000; // exclusive
/** Cluster ports stay below 22000 so their bus ports (+10000) also stay below 32000. */
const CLUSTER_PORT_MAX = PORT_MAX - BUS_OFFSET;
const START_TIMEOUT_MS = 5000;
const CLUSTER_TIMEOUT_MS = 10000;
const POLL_MS = 15;
const START_ATTEMPTS = 5;

export interface RedisServer {
	host: string;
	port: number;
	/** `redis://127.0.0.1:<port>` */
	url: string;
	/** The server's own temp directory (holds `redis.log`); removed by `stop()`. */
	dir: string;
	/** SIGTERM, wait for exit, remove the temp dir. Idempotent; the server cannot be restarted after. */
	stop(): Promise<void>;
	/** SIGTERM, wait for exit, start again on the same port with the same args (data is lost). */
	restart(): Promise<void>;
	/**
	 * Runs `redis-cli -h 127.0.0.1 -p <port> ...args` and returns stdout trimmed. Error replies
	 * (e.g. `NOSCRIPT ...`) come back as text; throws only if redis-cli itself fails (exit ≠ 0,
	 * e.g. the server is down).
	 */
	cli(...args: string[]): Promise<string>;
}

export interface RedisClusterHandle {
	nodes: { host: string; port: number }[];
	/** "127.0.0.1:p1,127.0.0.1:p2,..." */
	nodeList: string;
	/** Kills every node (SIGTERM, awaited) and removes the temp dirs. Idempotent. */
	stop(): Promise<void>;
	/** `redis-cli -h 127.0.0.1 -p <port> ...args`; pass `"-c"` first to follow MOVED redirects. */
	cli(port: number, ...args: string[]): Promise<string>;
}

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: nothing may outlive the test process.
//
// Two layers:
// - `process.on("exit")` kills live children synchronously and removes the temp root. This
//   covers `bun script.ts` and `process.exit()`, but `bun test` does not run exit listeners.
// - A watchdog `sh` holds the read end of a pipe whose write end only this process has. When
//   this process ends for any reason (normal end of `bun test`, a signal, even SIGKILL), the
//   watchdog sees EOF, SIGKILLs every redis-server still registered under `<root>/.pids/` and
//   removes the temp root. It ignores INT/TERM/HUP so a Ctrl-C to the process group cannot
//   take it down before it has cleaned up.

const WATCHDOG_SCRIPT = `trap '' INT TERM HUP
cat >/dev/null
for f in "$1"/.pids/*; do [ -e "$f" ] && kill -9 "\${f##*/}" 2>/dev/null; done
rm -rf "$1"`;

const liveProcs = new Set<Subprocess>();
/** Ports (and bus ports) held by servers of this process, so we never hand them out twice. */
const heldPorts = new Set<number>();
/** Per-process temp root holding every server directory and the pid registry. */
let root: string | undefined;
/** Keeps the watchdog's pipe referenced for the life of the process. */
const watchdogs: Subprocess[] = [];

function killAllSync(): void {
	for (const proc of liveProcs) {
		try {
			proc.kill("SIGKILL");
		} catch {
			// already gone
		}
	}
	liveProcs.clear();
	if (root !== undefined) rmSync(root, { recursive: true, force: true });
}

function tempRoot(): string {
	if (root !== undefined) return root;
	const dir = mkdtempSync(join(tmpdir(), "redis-harness-"));
	mkdirSync(join(dir, ".pids"));
	root = dir;
	process.on("exit", killAllSync);
	try {
		const watchdog = Bun.spawn(["sh", "-c", WATCHDOG_SCRIPT, "redis-harness-watchdog", dir], {
			stdin: "pipe",
			stdout: "ignore",
			stderr: "ignore",
		});
		// Never written to; it must not keep a script's event loop alive.
		watchdog.stdin.unref();
		watchdog.unref();
		watchdogs.push(watchdog);
	} catch (error) {
		throw new Error(`cannot start the redis harness watchdog (sh): ${String(error)}`);
	}
	return dir;
}

/** Records a child so the watchdog can kill it; forgets it once it has exited. */
function track(proc: Subprocess): Promise<void> {
	const pidFile = join(tempRoot(), ".pids", String(proc.pid));
	writeFileSync(pidFile, "");
	liveProcs.add(proc);
	return proc.exited.then(() => {
		liveProcs.delete(proc);
		rmSync(pidFile, { force: true });
	});
}

// ---------------------------------------------------------------------------------------------
// Ports

function randomPort(max: number): number {
	return PORT_MIN + Math.floor(Math.random() * (max - PORT_MIN));
}

/** True if nothing is listening on 127.0.0.1:port (checked by binding it briefly). */
export function isPortFree(port: number): boolean {
	try {
		const listener = Bun.listen({ hostname: HOST, port, socket: { data() {} } });
		listener.stop(true);
		return true;
	} catch {
		return false;
	}
}

function pickPort(max: number, needBus: boolean): number {
	for (let i = 0; i < 500; i++) {
		const port = randomPort(max);
		const ports = needBus ? [port, port + BUS_OFFSET] : [port];
		if (ports.some((p) => heldPorts.has(p))) continue;
		if (ports.every(isPortFree)) return port;
	}
	throw new Error(`no free port found in ${PORT_MIN}-${max}${needBus ? " (with bus port)" : ""}`);
}

/**
 * A free TCP port on 127.0.0.1, below the ephemeral range. It is remembered so this process's
 * harness never hands it out again.
 */
export async function freePort(): Promise<number> {
	const port = pickPort(PORT_MAX, false);
	heldPorts.add(port);
	return port;
}

// ---------------------------------------------------------------------------------------------
// One redis-server process

function redisArgs(port: number, dir: string, extra: readonly string[]): string[] {
	return [
		"redis-server",
		"--port",
		String(port),
		"--bind",
		HOST,
		"--save",
		"",
		"--appendonly",
		"no",
		"--dir",
		dir,
		"--daemonize",
		"no",
		"--protected-mode",
		"no",
		...extra,
	];
}

function logTail(logPath: string, lines = 25): string {
	try {
		return readFileSync(logPath, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
	} catch {
		return "(no log)";
	}
}

interface CliResult {
	code: number;
	stdout: string;
	stderr: string;
}

function spawnCli(
	port: number,
	args: readonly string[],
	timeout?: number,
): { proc: Subprocess; result: Promise<CliResult> } {
	const proc = Bun.spawn(["redis-cli", "-h", HOST, "-p", String(port), ...args], {
		stdin: "ignore",
		stdout: "pipe",
		stderr: "pipe",
		...(timeout === undefined ? {} : { timeout, killSignal: "SIGKILL" }),
	});
	const result = Promise.all([
		new Response(proc.stdout).text(),
		new Response(proc.stderr).text(),
		proc.exited,
	]).then(([stdout, stderr, code]) => ({ code, stdout, stderr }));
	return { proc, result };
}

function runCli(port: number, args: readonly string[], timeout?: number): Promise<CliResult> {
	return spawnCli(port, args, timeout).result;
}

async function cli(port: number, args: readonly string[]): Promise<string> {
	const { code, stdout, stderr } = await runCli(port, args);
	if (code !== 0) {
		throw new Error(
			`redis-cli -p ${port} ${args.join(" ")} exited ${code}: ${(stderr || stdout).trim()}`,
		);
	}
	return stdout.trim();
}

/** The pid of the redis-server answering on `port`, if any. */
async function servedBy(port: number): Promise<number | undefined> {
	const { code, stdout } = await runCli(port, ["info", "server"], 1000);
	const pid = code === 0 ? /^process_id:(\d+)/m.exec(stdout)?.[1] : undefined;
	return pid === undefined ? undefined : Number(pid);
}

class AddressInUse extends Error {}

/** A running redis-server child whose exit we can await. */
interface Running {
	proc: Subprocess;
	exited: Promise<void>;
	isDead(): boolean;
}

async function launch(port: number, dir: string, extra: readonly string[]): Promise<Running> {
	tempRoot();
	const logPath = join(dir, "redis.log");
	const fd = openSync(logPath, "a");
	let proc: Subprocess;
	try {
		proc = Bun.spawn(redisArgs(port, dir, extra), {
			cwd: dir,
			stdin: "ignore",
			stdout: fd,
			stderr: fd,
		});
	} catch (error) {
		throw new Error(`cannot spawn redis-server (is it on PATH?): ${String(error)}`);
	} finally {
		closeSync(fd);
	}
	let dead = false;
	const exited = track(proc).then(() => {
		dead = true;
	});
	const running: Running = { proc, exited, isDead: () => dead };

	const deadline = Date.now() + START_TIMEOUT_MS;
	while (!dead) {
		const ping = await runCli(port, ["ping"], 1000);
		// Make sure the PONG came from our child, not from someone else already on the port.
		if (ping.code === 0 && ping.stdout.trim() === "PONG" && (await servedBy(port)) === proc.pid) {
			return running;
		}
		if (Date.now() > deadline) {
			await terminate(running, "SIGKILL");
			throw new Error(
				`redis-server on port ${port} did not answer PING within ${START_TIMEOUT_MS} ms; log tail:\n${logTail(logPath)}`,
			);
		}
		await Bun.sleep(POLL_MS);
	}
	await exited;
	const tail = logTail(logPath);
	const message = `redis-server on port ${port} exited during startup (code ${proc.exitCode}); log tail:\n${tail}`;
	throw /address already in use/i.test(tail) ? new AddressInUse(message) : new Error(message);
}

async function terminate(
	running: Running,
	signal: "SIGTERM" | "SIGKILL" = "SIGTERM",
): Promise<void> {
	if (!running.isDead()) {
		running.proc.kill(signal);
		// Redis exits promptly on SIGTERM without persistence; escalate if it does not.
		const timer = setTimeout(() => {
			if (!running.isDead()) running.proc.kill("SIGKILL");
		}, 5000);
		await running.exited;
		clearTimeout(timer);
	}
}

function makeTempDir(prefix: string): string {
	return mkdtempSync(join(tempRoot(), prefix));
}

function removeDir(dir: string): void {
	rmSync(dir, { recursive: true, force: true });
}

/**
 * Starts a server in `dir`, picking a free port unless `fixedPort` is given; retries with a new
 * port if another process grabbed the chosen one first. The port is recorded in `heldPorts`
 * before the first `await`, so parallel calls never pick the same (or overlapping bus) ports.
 */
async function launchOnFreePort(
	dir: string,
	extra: readonly string[],
	options: { fixedPort?: number; needBus: boolean },
): Promise<{ port: number; running: Running }> {
	const max = options.needBus ? CLUSTER_PORT_MAX : PORT_MAX;
	for (let attempt = 1; ; attempt++) {
		const port = options.fixedPort ?? pickPort(max, options.needBus);
		holdPort(port, options.needBus);
		try {
			return { port, running: await launch(port, dir, extra) };
		} catch (error) {
			releasePort(port, options.needBus);
			const retry =
				error instanceof AddressInUse &&
				options.fixedPort === undefined &&
				attempt < START_ATTEMPTS;
			if (!retry) throw error;
		}
	}
}

function holdPort(port: number, needBus: boolean): void {
	heldPorts.add(port);
	if (needBus) heldPorts.add(port + BUS_OFFSET);
}

function releasePort(port: number, needBus: boolean): void {
	heldPorts.delete(port);
	if (needBus) heldPorts.delete(port + BUS_OFFSET);
}

// ---------------------------------------------------------------------------------------------
// Public API

/** Starts a standalone redis-server (no persistence) and waits until it answers PING. */
export async function startRedis(
	options: { port?: number; args?: string[] } = {},
): Promise<RedisServer> {
	const extra = [...(options.args ?? [])];
	const dir = makeTempDir("redis-");
	let started: { port: number; running: Running };
	try {
		started = await launchOnFreePort(dir, extra, {
			...(options.port === undefined ? {} : { fixedPort: options.port }),
			needBus: false,
		});
	} catch (error) {
		removeDir(dir);
		throw error;
	}
	const { port } = started;
	let running: Running | undefined = started.running;
	let stopped = false;

	return {
		host: HOST,
		port,
		url: `redis://${HOST}:${port}`,
		dir,
		cli: (...args) => cli(port, args),
		async restart() {
			if (stopped) throw new Error(`redis on port ${port} was stopped; cannot restart`);
			if (running) await terminate(running);
			running = undefined;
			running = await launch(port, dir, extra);
		},
		async stop() {
			if (stopped) return;
			stopped = true;
			if (running) await terminate(running);
			running = undefined;
			releasePort(port, false);
			removeDir(dir);
		},
	};
}

function parseInfo(text: string): Map<string, string> {
	const fields = new Map<string, string>();
	for (const line of text.split(/\r?\n/)) {
		const at = line.indexOf(":");
		if (at > 0) fields.set(line.slice(0, at), line.slice(at + 1).trim());
	}
	return fields;
}

/**
 * Polls until every node reports `cluster_state:ok`, all 16384 slots assigned and ok, and knows
 * every master as a slot owner, and all nodes return the same CLUSTER SLOTS map (so `-c`
 * redirects agree from any entry node). `check` runs each round and may throw to abort.
 */
async function waitForCluster(
	members: readonly { port: number }[],
	check: () => void,
): Promise<void> {
	const masters = String(members.length);
	const deadline = Date.now() + CLUSTER_TIMEOUT_MS;
	let last: string[] = [];
	for (;;) {
		check();
		last = await Promise.all(
			members.map((m) => runCli(m.port, ["cluster", "info"], 1000).then((r) => r.stdout)),
		);
		const healthy = last.every((text) => {
			const info = parseInfo(text);
			return (
				info.get("cluster_state") === "ok" &&
				info.get("cluster_slots_assigned") === "16384" &&
				info.get("cluster_slots_ok") === "16384" &&
				info.get("cluster_known_nodes") === masters &&
				info.get("cluster_size") === masters
			);
		});
		if (healthy) {
			const maps = await Promise.all(
				members.map((m) => runCli(m.port, ["cluster", "slots"], 1000).then((r) => r.stdout)),
			);
			if (maps.every((map) => map !== "" && map === maps[0])) return;
		}
		if (Date.now() > deadline) {
			const states = members.map((m, i) => `--- node ${m.port} ---\n${last[i] ?? ""}`);
			throw new Error(
				`cluster did not reach cluster_state:ok within ${CLUSTER_TIMEOUT_MS} ms\n${states.join("\n")}`,
			);
		}
		await Bun.sleep(50);
	}
}

/**
 * A standalone Redis and a 3-master Redis Cluster, started side by side, for
 * tests that run on both. If either fails to start, the other is stopped and
 * the failure thrown.
 */
export async function startRedisAndCluster(): Promise<{
	standalone: RedisServer;
	cluster: RedisClusterHandle;
	stop(): Promise<void>;
}> {
	const [s, c] = await Promise.allSettled([startRedis(), startRedisCluster({ masters: 3 })]);
	if (s.status === "rejected" || c.status === "rejected") {
		await Promise.all([
			s.status === "fulfilled" ? s.value.stop() : undefined,
			c.status === "fulfilled" ? c.value.stop() : undefined,
		]);
		throw s.status === "rejected" ? s.reason : c.status === "rejected" ? c.reason : undefined;
	}
	const standalone = s.value;
	const cluster = c.value;
	return {
		standalone,
		cluster,
		stop: async () => {
			await Promise.all([standalone.stop(), cluster.stop()]);
		},
	};
}

/**
 * Starts `masters` (default 3) cluster-enabled servers, joins them with
 * `redis-cli --cluster create ... --cluster-replicas 0`, and waits until every node reports
 * `cluster_state:ok` with all 16384 slots assigned and every master known.
 */
export async function startRedisCluster(
	options: { masters?: number } = {},
): Promise<RedisClusterHandle> {
	const masters = options.masters ?? 3;
	if (!Number.isInteger(masters) || masters < 3) {
		throw new Error(`a Redis cluster needs at least 3 masters (got ${masters})`);
	}
	const base = makeTempDir("cluster-");
	const extra = [
		"--cluster-enabled",
		"yes",
		"--cluster-config-file",
		"nodes.conf",
		"--cluster-node-timeout",
		"2000",
	];
	const members: { port: number; running: Running; dir: string }[] = [];
	let stopped = false;

	const stop = async (): Promise<void> => {
		if (stopped) return;
		stopped = true;
		await Promise.all(members.map((m) => terminate(m.running)));
		for (const m of members) releasePort(m.port, true);
		removeDir(base);
	};

	try {
		// Boot the nodes in parallel; each picks its port pair synchronously before awaiting.
		const results = await Promise.allSettled(
			Array.from({ length: masters }, async (_, i) => {
				const dir = join(base, `node-${i}`);
				mkdirSync(dir);
				const started = await launchOnFreePort(dir, extra, { needBus: true });
				members.push({ ...started, dir });
			}),
		);
		const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
		if (failed) throw failed.reason;
		members.sort((a, b) => a.port - b.port);

		// `redis-cli --cluster create` assigns the slots, sets config epochs and sends CLUSTER MEET
		// within milliseconds, then polls in 1 s sleeps until all nodes agree. We run it in the
		// background and apply our own, stricter readiness check (below) at a finer grain; once
		// that passes, redis-cli has nothing left to do for a replica-less cluster, so it is
		// stopped if still sleeping. This saves up to ~1 s per cluster.
		const addresses = members.map((m) => `${HOST}:${m.port}`);
		const first = members[0];
		if (!first) throw new Error("no cluster nodes started");
		const create = spawnCli(
			first.port,
			["--cluster", "create", ...addresses, "--cluster-replicas", "0", "--cluster-yes"],
			CLUSTER_TIMEOUT_MS,
		);
		let created: CliResult | undefined;
		void create.result.then((r) => {
			created = r;
		});
		try {
			await waitForCluster(members, () => {
				if (created !== undefined && created.code !== 0) {
					throw new Error(
						`redis-cli --cluster create failed (exit ${created.code}):\n${created.stdout}\n${created.stderr}`,
					);
				}
			});
		} finally {
			if (created === undefined) create.proc.kill("SIGKILL");
			await create.result;
		}
	} catch (error) {
		await stop();
		throw error;
	}

	const nodes = members.map((m) => ({ host: HOST, port: m.port }));
	const ports = new Set(nodes.map((n) => n.port));
	return {
		nodes,
		nodeList: nodes.map((n) => `${n.host}:${n.port}`).join(","),
		stop,
		cli: (port, ...args) => {
			if (!ports.has(port)) {
				return Promise.reject(new Error(`port ${port} is not a node of this cluster`));
			}
			return cli(port, args);
		},
	};
}

/** A limit-store Redis configuration for tests and benchmarks: loopback, closed policy, overridable. */
export function redisStoreConfig(overrides: Partial<RedisConfig> = {}): RedisConfig {
	return {
		host: HOST,
		port: 6379,
		url: undefined,
		username: undefined,
		password: undefined,
		database: 0,
		tls: false,
		clusterNodes: [],
		timeoutMs: 2_000,
		failurePolicy: "closed",
		replicas: undefined,
		leaseTtlMs: 30_000,
		heartbeatMs: 5_000,
		...overrides,
	};
}
