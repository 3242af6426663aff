import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
	freePort,
	isPortFree,
	type RedisClusterHandle,
	type RedisServer,
	startRedis,
	startRedisCluster,
} from "./redis.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/**
 * Per-test timeout for tests that start a cluster or child Bun processes. Set explicitly: the
 * `[test] timeout` in bunfig.toml is not applied by Bun 1.4.5, so the default is 5 s.
 */
const SLOW_TEST_MS = 20_000;

/** Running (a zombie waiting to be reaped counts as dead). */
function isAlive(pid: number): boolean {
	try {
		const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
		return !/^\d+ \(.*\) Z/.test(stat);
	} catch {
		return false;
	}
}

async function waitUntil(check: () => boolean, timeoutMs = 3000): Promise<boolean> {
	const deadline = Date.now() + timeoutMs;
	while (Date.now() < deadline) {
		if (check()) return true;
		await Bun.sleep(20);
	}
	return check();
}

describe("freePort", () => {
	test("returns a bindable loopback port below 50000", async () => {
		const port = await freePort();
		expect(port).toBeGreaterThan(0);
		expect(port).toBeLessThan(50000);
		expect(isPortFree(port)).toBe(true);
	});
});

describe("startRedis", () => {
	const servers: RedisServer[] = [];
	afterAll(async () => {
		await Promise.all(servers.map((s) => s.stop()));
	});

	test("starts, answers PING, SET/GET via cli", async () => {
		const redis = await startRedis();
		servers.push(redis);
		expect(redis.host).toBe("127.0.0.1");
		expect(redis.url).toBe(`redis://127.0.0.1:${redis.port}`);
		expect(isPortFree(redis.port)).toBe(false);
		expect(existsSync(join(redis.dir, "redis.log"))).toBe(true);
		expect(await redis.cli("PING")).toBe("PONG");
		expect(await redis.cli("SET", "greeting", "hello world")).toBe("OK");
		expect(await redis.cli("GET", "greeting")).toBe("hello world");
		// No persistence configured.
		expect(await redis.cli("CONFIG", "GET", "save")).toBe("save");
		expect(await redis.cli("CONFIG", "GET", "appendonly")).toBe("appendonly\nno");
	});

	test("honours a requested port and extra args", async () => {
		const port = await freePort();
		const redis = await startRedis({ port, args: ["--maxmemory", "10mb"] });
		servers.push(redis);
		expect(redis.port).toBe(port);
		expect(await redis.cli("CONFIG", "GET", "maxmemory")).toBe("maxmemory\n10485760");
	});

	test("restart keeps the port and args but loses data and the script cache", async () => {
		const redis = await startRedis({ args: ["--maxmemory", "10mb"] });
		servers.push(redis);
		const port = redis.port;
		await redis.cli("SET", "k", "v");
		const sha = await redis.cli("SCRIPT", "LOAD", "return 42");
		expect(sha).toMatch(/^[0-9a-f]{40}$/);
		expect(await redis.cli("EVALSHA", sha, "0")).toBe("42");

		await redis.restart();

		expect(redis.port).toBe(port);
		expect(await redis.cli("PING")).toBe("PONG");
		expect(await redis.cli("GET", "k")).toBe("");
		expect(await redis.cli("DBSIZE")).toBe("0");
		expect(await redis.cli("EVALSHA", sha, "0")).toStartWith("NOSCRIPT");
		expect(await redis.cli("CONFIG", "GET", "maxmemory")).toBe("maxmemory\n10485760");
	});

	test("error replies come back as text; a dead server makes cli throw", async () => {
		const redis = await startRedis();
		servers.push(redis);
		expect(await redis.cli("NOSUCHCOMMAND")).toStartWith("ERR unknown command");
		await redis.stop();
		await expect(redis.cli("PING")).rejects.toThrow(/Could not connect/);
	});

	test("stop() waits for exit, frees the port and removes the temp dir", async () => {
		const redis = await startRedis();
		const { port, dir } = redis;
		expect(isPortFree(port)).toBe(false);
		await redis.stop();
		expect(isPortFree(port)).toBe(true);
		expect(existsSync(dir)).toBe(false);
		await redis.stop(); // idempotent
		await expect(redis.restart()).rejects.toThrow(/stopped/);
	});

	test("a server that cannot start fails with its log tail", async () => {
		await expect(startRedis({ args: ["--no-such-directive", "x"] })).rejects.toThrow(
			/exited during startup[\s\S]*no-such-directive/,
		);
	});

	test("a taken port fails fast with the log tail", async () => {
		const redis = await startRedis();
		servers.push(redis);
		const started = Date.now();
		await expect(startRedis({ port: redis.port })).rejects.toThrow(/Address already in use/i);
		expect(Date.now() - started).toBeLessThan(3000);
	});
});

describe("process cleanup", () => {
	const harness = join(import.meta.dir, "redis.ts");
	type Ending = "exit" | "SIGTERM" | "SIGINT" | "SIGKILL" | "bun test";

	/** A child Bun process starts Redis, never stops it, then ends by `ending`. */
	async function forgottenServer(ending: Ending): Promise<void> {
		const work = mkdtempSync(join(tmpdir(), "redis-orphan-test-"));
		try {
			const infoPath = join(work, "info.json");
			const start = `
				const r = await startRedis();
				const pid = Number((await r.cli("INFO", "server")).match(/process_id:(\\d+)/)?.[1]);
				await Bun.write(${JSON.stringify(infoPath)}, JSON.stringify({ port: r.port, pid, dir: r.dir }));
			`;
			const importLine = `import { startRedis } from ${JSON.stringify(harness)};`;
			let cmd: string[];
			if (ending === "bun test") {
				const file = join(work, "forgot.test.ts");
				await Bun.write(
					file,
					`${importLine}\nimport { test } from "bun:test";\ntest("forgets stop()", async () => {${start}});\n`,
				);
				cmd = [process.execPath, "test", "./forgot.test.ts"];
			} else {
				// Waits for a line on stdin, then exits normally.
				cmd = [
					process.execPath,
					"-e",
					`${importLine}${start}for await (const _ of console) process.exit(0);`,
				];
			}
			const child = Bun.spawn(cmd, { cwd: work, stdin: "pipe", stdout: "ignore", stderr: "pipe" });
			const stderr = new Response(child.stderr).text();
			if (!(await waitUntil(() => existsSync(infoPath), 10000))) {
				child.kill("SIGKILL");
				throw new Error(`child did not start Redis:\n${await stderr}`);
			}
			const info = (await Bun.file(infoPath).json()) as { port: number; pid: number; dir: string };
			if (ending !== "bun test") {
				expect(isAlive(info.pid)).toBe(true);
				expect(isPortFree(info.port)).toBe(false);
				expect(existsSync(info.dir)).toBe(true);
			}
			if (ending === "exit") {
				child.stdin.write("go\n");
				await child.stdin.flush();
			} else if (ending !== "bun test") {
				child.kill(ending);
			}
			const code = await child.exited;
			const expected = { exit: 0, SIGTERM: 143, SIGINT: 130, SIGKILL: 137, "bun test": 0 }[ending];
			expect({ code, stderr: code === expected ? "" : await stderr }).toEqual({
				code: expected,
				stderr: "",
			});
			expect(await waitUntil(() => !isAlive(info.pid))).toBe(true);
			expect(await waitUntil(() => isPortFree(info.port))).toBe(true);
			expect(await waitUntil(() => !existsSync(info.dir))).toBe(true);
		} finally {
			rmSync(work, { recursive: true, force: true });
		}
	}

	test(
		"a forgotten server dies when a script calls process.exit()",
		async () => {
			await forgottenServer("exit");
		},
		SLOW_TEST_MS,
	);

	test(
		"a forgotten server dies when bun test ends (no exit listeners there)",
		async () => {
			await forgottenServer("bun test");
		},
		SLOW_TEST_MS,
	);

	for (const signal of ["SIGTERM", "SIGINT", "SIGKILL"] as const) {
		test(
			`a forgotten server dies when the process alone gets ${signal}`,
			async () => {
				await forgottenServer(signal);
			},
			SLOW_TEST_MS,
		);
	}
});

describe("startRedisCluster", () => {
	let cluster: RedisClusterHandle | undefined;
	afterAll(async () => {
		await cluster?.stop();
	});

	test(
		"3 masters reach cluster_state:ok and redis-cli -c routes by key slot",
		async () => {
			cluster = await startRedisCluster();
			const c = cluster;
			expect(c.nodes).toHaveLength(3);
			expect(c.nodeList).toBe(c.nodes.map((n) => `127.0.0.1:${n.port}`).join(","));
			for (const node of c.nodes) {
				expect(node.host).toBe("127.0.0.1");
				expect(node.port).toBeLessThan(50000);
				const info = await c.cli(node.port, "CLUSTER", "INFO");
				expect(info).toContain("cluster_state:ok");
				expect(info).toContain("cluster_slots_assigned:16384");
				expect(info).toContain("cluster_size:3");
				expect(await c.cli(node.port, "ROLE")).toStartWith("master");
			}

			const ports = c.nodes.map((n) => n.port);
			const owners = new Set<number>();
			for (const key of ["a", "b", "c", "alpha", "bravo"]) {
				const entry = ports[owners.size % ports.length] ?? 0;
				const slot = await c.cli(entry, "CLUSTER", "KEYSLOT", key);
				expect(Number(slot)).toBeGreaterThanOrEqual(0);
				expect(Number(slot)).toBeLessThan(16384);
				// Written through any node with -c, the key lands on exactly the slot's owner.
				expect(await c.cli(entry, "-c", "SET", key, `v-${key}`)).toBe("OK");
				const replies = await Promise.all(ports.map((p) => c.cli(p, "GET", key)));
				const ownerIndex = replies.indexOf(`v-${key}`);
				expect(ownerIndex).toBeGreaterThanOrEqual(0);
				const owner = ports[ownerIndex] ?? 0;
				owners.add(owner);
				for (const [i, reply] of replies.entries()) {
					if (i !== ownerIndex) expect(reply).toBe(`MOVED ${slot} 127.0.0.1:${owner}`);
				}
				for (const p of ports) expect(await c.cli(p, "-c", "GET", key)).toBe(`v-${key}`);
			}
			// These keys spread over every master.
			expect(owners.size).toBe(3);
			await expect(c.cli(1, "PING")).rejects.toThrow(/not a node/);
		},
		SLOW_TEST_MS,
	);

	test("stop() frees every node port and cluster bus port", async () => {
		const c = cluster;
		if (!c) throw new Error("cluster did not start");
		const ports = c.nodes.flatMap((n) => [n.port, n.port + 10000]);
		for (const p of ports) expect(isPortFree(p)).toBe(false);
		await c.stop();
		for (const p of ports) expect(isPortFree(p)).toBe(true);
		const first = c.nodes[0];
		if (first) await expect(c.cli(first.port, "PING")).rejects.toThrow(/Could not connect/);
		await c.stop(); // idempotent
	});
});
