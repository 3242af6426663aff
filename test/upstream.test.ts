import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { oneModelConfig, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { allSettled, until } from "./support/wait.ts";

// Starts real servers (mock vLLM, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/** Several replicas per model: a dead one is skipped, a failing one is cut off by its breaker. */

let mock: MockVllm;

beforeAll(() => {
	mock = startMockVllm({ models: ["llama2-7b"], record: false, behavior: { outputTokens: 2 } });
});

afterAll(async () => {
	await mock.stop();
});

function replicas(...urls: string[]) {
	return `\n${urls.map((u) => `      - ${u}`).join("\n")}`;
}

async function closedPortUrl(): Promise<string> {
	const s = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("") });
	const url = `http://127.0.0.1:${s.port}`;
	await s.stop(true);
	return url;
}

const chat = (url: string, user = "u") =>
	fetch(`${url}/v1/chat/completions`, {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": user },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
			max_tokens: 2,
		}),
	});

/** A per-replica gauge of the gateway's /metrics; undefined while it has no value for the replica. */
async function replicaGauge(
	gatewayUrl: string,
	name: string,
	replicaUrl: string,
): Promise<number | undefined> {
	const text = await (await fetch(`${gatewayUrl}/metrics`)).text();
	const prefix = `${name}{model="llama2-7b",replica="${replicaUrl}"} `;
	const line = text.split("\n").find((l) => l.startsWith(prefix));
	return line === undefined ? undefined : Number(line.slice(prefix.length));
}

/** Waits until the gateway's gauge for the replica reads `value` (a probe or poll has run). */
function untilGauge(
	gatewayUrl: string,
	name: string,
	replicaUrl: string,
	value: number,
	what: string,
): Promise<void> {
	return until(async () => (await replicaGauge(gatewayUrl, name, replicaUrl)) === value, { what });
}

describe("replicas and circuit breakers", () => {
	it("retries a refused connection once on another replica, so a dead replica costs no request", async () => {
		const dead = await closedPortUrl();
		const g = await startGateway(oneModelConfig(replicas(dead, mock.url)));
		try {
			const statuses = await Promise.all(
				Array.from({ length: 20 }, () => chat(g.url).then((r) => r.status)),
			);
			expect(statuses.every((s) => s === 200)).toBe(true);
		} finally {
			await g.stop();
		}
	});

	it("opens the breaker of a replica that keeps failing, then refuses with 503 and Retry-After without calling it", async () => {
		let calls = 0;
		const failing = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: () => {
				calls++;
				return Response.json(
					{ error: { message: "boom", type: "InternalServerError", code: 500 } },
					{ status: 500 },
				);
			},
		});
		const g = await startGateway(oneModelConfig(`http://127.0.0.1:${failing.port}`));
		try {
			for (let i = 0; i < 5; i++) expect((await chat(g.url, "victim")).status).toBe(502);
			expect(calls).toBe(5);
			const refused = await chat(g.url, "victim");
			expect(refused.status).toBe(503);
			expect(refused.headers.get("retry-after")).toBe("5");
			expect(((await refused.json()) as { error: { code: string } }).error.code).toBe(
				"upstream_unavailable",
			);
			expect(calls).toBe(5);
			// Nothing was reserved for the refused requests or kept for the failed ones.
			const usage = (await (
				await fetch(`${g.url}/api/v1/admin/token-usage/llama2-7b/victim`)
			).json()) as {
				windows: { used: number }[];
				concurrency: { inUse: number };
			};
			expect(usage.windows.every((w) => w.used === 0)).toBe(true);
			expect(usage.concurrency.inUse).toBe(0);
			// The health endpoint shows the open breaker, and the model DOWN.
			const health = await fetch(`${g.url}/api/v1/models/llama2-7b/health`);
			expect(health.status).toBe(503);
			expect(await health.json()).toMatchObject({
				status: "DOWN",
				replicas: [{ breaker: "open" }],
			});
		} finally {
			await g.stop();
			await failing.stop(true);
		}
	});
});

describe("health probes", () => {
	it("takes a replica whose /health fails out of rotation and brings it back when it recovers", async () => {
		let healthy = true;
		let calls = 0;
		const flaky = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: async (req) => {
				if (new URL(req.url).pathname === "/health")
					return new Response(null, { status: healthy ? 200 : 503 });
				calls++;
				return fetch(`${mock.url}/v1/chat/completions`, {
					method: "POST",
					headers: req.headers,
					body: await req.text(),
				});
			},
		});
		const g = await startGateway(
			oneModelConfig(replicas(`http://127.0.0.1:${flaky.port}`, mock.url), {}, "").replace(
				"vllm:\n  services:",
				"vllm:\n  health-check-ms: 100\n  services:",
			),
		);
		const flakyUrl = `http://127.0.0.1:${flaky.port}`;
		try {
			healthy = false;
			await untilGauge(
				g.url,
				"upstream_replica_up",
				flakyUrl,
				0,
				"the failing /health probe to take the replica out",
			);
			calls = 0;
			for (let i = 0; i < 10; i++) expect((await chat(g.url)).status).toBe(200);
			expect(calls).toBe(0);
			healthy = true;
			await untilGauge(
				g.url,
				"upstream_replica_up",
				flakyUrl,
				1,
				"a passing /health probe to bring the replica back",
			);
			for (let i = 0; i < 10; i++) expect((await chat(g.url)).status).toBe(200);
			expect(calls).toBeGreaterThan(0);
		} finally {
			await g.stop();
			await flaky.stop(true);
		}
	});
});

describe("breaker recovery", () => {
	it("closes the breaker again once a half-open probe succeeds", async () => {
		let failing = true;
		let calls = 0;
		const replica = Bun.serve({
			port: 0,
			hostname: "127.0.0.1",
			fetch: async (req) => {
				calls++;
				if (failing)
					return Response.json({ error: { message: "boom", code: 500 } }, { status: 500 });
				return fetch(`${mock.url}${new URL(req.url).pathname}`, {
					method: req.method,
					headers: req.headers,
					body: req.method === "POST" ? await req.text() : null,
				});
			},
		});
		const g = await startGateway(
			oneModelConfig(`http://127.0.0.1:${replica.port}`).replace(
				"vllm:\n  services:",
				"vllm:\n  health-check-ms: 0\n  services:",
			),
		);
		try {
			for (let i = 0; i < 5; i++) expect((await chat(g.url)).status).toBe(502);
			expect((await chat(g.url)).status).toBe(503); // open
			failing = false;
			// Wall-clock time must pass: the breaker offers a half-open probe 5 s after it opened.
			await Bun.sleep(5200);
			const before = calls;
			expect((await chat(g.url)).status).toBe(200); // the probe
			for (let i = 0; i < 5; i++) expect((await chat(g.url)).status).toBe(200); // closed again
			expect(calls - before).toBe(6);
		} finally {
			await g.stop();
			await replica.stop(true);
		}
	});
});

describe("client disconnects and breakers", () => {
	it("does not count callers that went away as replica failures", async () => {
		const slow = startMockVllm({
			models: ["llama2-7b"],
			// Long enough that every call is still waiting on it when its caller goes away.
			behavior: { firstTokenDelayMs: 2000 },
		});
		const g = await startGateway(oneModelConfig(slow.url));
		try {
			const controller = new AbortController();
			const aborted = Array.from({ length: 10 }, () =>
				fetch(`${g.url}/v1/chat/completions`, {
					method: "POST",
					headers: { "content-type": "application/json" },
					body: JSON.stringify({
						model: "llama2-7b",
						messages: [{ role: "user", content: "hi" }],
						max_tokens: 2,
					}),
					signal: controller.signal,
				}).catch(() => undefined),
			);
			// Every call is waiting on the replica when its caller goes away.
			await until(() => slow.requests.length === 10, {
				what: "all ten calls to reach the replica",
			});
			controller.abort();
			await Promise.all(aborted);
			await allSettled(g.gateway);
			// Ten disconnects in a row: the replica still serves.
			expect((await chat(g.url)).status).toBe(200);
		} finally {
			await g.stop();
			await slow.stop();
		}
	});
});

describe("load-aware replica choice from vLLM's own /metrics", () => {
	const loadConfig = (urls: string[], extra = "") =>
		oneModelConfig(replicas(...urls)).replace("vllm:\n", `vllm:\n  load-poll-ms: 100\n${extra}`);

	it("sends requests to the replica whose own queue is shorter, and reports each queue", async () => {
		const busy = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 2 } });
		const idle = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 2 } });
		busy.behavior.waiting = 40;
		busy.behavior.kvCacheUsage = 0.93;
		const g = await startGateway(loadConfig([busy.url, idle.url]));
		try {
			await untilGauge(
				g.url,
				"upstream_waiting_requests",
				busy.url,
				40,
				"the load poll to read the busy replica's queue",
			);
			for (let i = 0; i < 20; i++) expect((await chat(g.url)).status).toBe(200);
			const completions = (m: MockVllm) =>
				m.requests.filter((r) => r.path === "/v1/chat/completions").length;
			expect(completions(idle)).toBe(20);
			expect(completions(busy)).toBe(0);
			const metrics = await (await fetch(`${g.url}/metrics`)).text();
			expect(metrics).toContain(
				`upstream_waiting_requests{model="llama2-7b",replica="${busy.url}"} 40`,
			);
			expect(metrics).toContain(
				`upstream_kv_cache_usage_ratio{model="llama2-7b",replica="${busy.url}"} 0.93`,
			);
			// The queue drains: the busy replica is used again.
			busy.behavior.waiting = 0;
			await untilGauge(
				g.url,
				"upstream_waiting_requests",
				busy.url,
				0,
				"the load poll to read the busy replica's empty queue",
			);
			await Promise.all(Array.from({ length: 10 }, () => chat(g.url)));
			expect(completions(busy)).toBeGreaterThan(0);
		} finally {
			await g.stop();
			await busy.stop();
			await idle.stop();
		}
	});

	it("sheds load with 503 upstream_overloaded while every queue is past shed-waiting-above, reserving nothing", async () => {
		const a = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 2 } });
		const b = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 2 } });
		a.behavior.waiting = 12;
		b.behavior.waiting = 50;
		const g = await startGateway(loadConfig([a.url, b.url], "  shed-waiting-above: 10\n"));
		try {
			await untilGauge(g.url, "upstream_waiting_requests", a.url, 12, "a's queue to be read");
			await untilGauge(g.url, "upstream_waiting_requests", b.url, 50, "b's queue to be read");
			const refused = await chat(g.url, "shed");
			expect(refused.status).toBe(503);
			expect(refused.headers.get("retry-after")).toBe("1");
			const body = (await refused.json()) as { error: { code: string; message: string } };
			expect(body.error.code).toBe("upstream_overloaded");
			expect(body.error.message).toContain("12 requests waiting");
			const usage = (await (
				await fetch(`${g.url}/api/v1/admin/token-usage/llama2-7b/shed`)
			).json()) as { windows: { used: number }[] };
			expect(usage.windows.every((w) => w.used === 0)).toBe(true);
			a.behavior.waiting = 3;
			await untilGauge(
				g.url,
				"upstream_waiting_requests",
				a.url,
				3,
				"the load poll to read the shorter queue",
			);
			expect((await chat(g.url, "shed")).status).toBe(200);
			const metrics = await (await fetch(`${g.url}/metrics`)).text();
			expect(metrics).toContain('upstream_shed_total{model="llama2-7b"} 1');
		} finally {
			await g.stop();
			await a.stop();
			await b.stop();
		}
	});

	it("reads vLLM v1 and v0 metric names, summing label sets, and ignores what it cannot read", async () => {
		const { parseVllmLoad } = await import("../src/upstream/pool.ts");
		const v1 = [
			"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
			"# TYPE vllm:num_requests_waiting gauge",
			'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0',
			'vllm:num_requests_waiting{engine="1",model_name="m"} 4.0',
			'vllm:num_requests_running{engine="0",model_name="m"} 8.0',
			'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5',
			'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75',
			'vllm:num_requests_waiting_by_reason{reason="x"} 99',
		].join("\n");
		expect(parseVllmLoad(v1, 1)).toEqual({ waiting: 7, running: 8, kvCacheUsage: 0.75, at: 1 });
		const v0 =
			'vllm:num_requests_waiting 2\nvllm:gpu_cache_usage_perc{model_name="m"} 0.1 1700000000\n';
		expect(parseVllmLoad(v0, 2)).toEqual({ waiting: 2, running: 0, kvCacheUsage: 0.1, at: 2 });
		expect(parseVllmLoad("<html>not metrics</html>", 3)).toBeUndefined();
	});
});

describe("connect timeout", () => {
	/** A loopback port that never completes a connection (see test/support/blackhole.py). */
	async function blackhole(onPort?: number): Promise<{ url: string; stop: () => void }> {
		const hole = await blackholeOnCue(onPort);
		return hole.open();
	}

	/**
	 * A blackhole started now that takes its port only when `open` is called: the port can be
	 * taken over within milliseconds of being let go, whatever the machine's load.
	 */
	async function blackholeOnCue(
		onPort?: number,
	): Promise<{ open: () => Promise<{ url: string; stop: () => void }> }> {
		const args = onPort === undefined ? ["0", "--on-line"] : [String(onPort), "--on-line"];
		const proc = Bun.spawn(["python3", `${import.meta.dir}/support/blackhole.py`, ...args], {
			stdin: "pipe",
			stdout: "pipe",
		});
		const reader = proc.stdout.getReader();
		let buffered = "";
		/** The next line it prints ("" once it has exited). */
		const line = async (): Promise<string> => {
			for (;;) {
				const end = buffered.indexOf("\n");
				if (end >= 0) {
					const text = buffered.slice(0, end).trim();
					buffered = buffered.slice(end + 1);
					return text;
				}
				const chunk = await reader.read();
				if (chunk.done) return buffered.trim();
				buffered += new TextDecoder().decode(chunk.value);
			}
		};
		if ((await line()) !== "ready") throw new Error("blackhole did not start");
		return {
			open: async () => {
				proc.stdin.write("\n");
				proc.stdin.flush();
				const port = Number(await line());
				if (!Number.isInteger(port) || port <= 0) throw new Error("blackhole did not bind");
				return { url: `http://127.0.0.1:${port}`, stop: () => proc.kill() };
			},
		};
	}

	it("skips a replica that does not accept a connection in time, and refunds when it is the only one", async () => {
		const hole = await blackhole();
		const healthy = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 2 } });
		const config = (urls: string[]) =>
			oneModelConfig(replicas(...urls)).replace(
				"vllm:\n",
				"vllm:\n  timeout-ms: 20000\n  health-check-ms: 0\n  connect-timeout-ms: 300\n",
			);
		const g = await startGateway(config([hole.url, healthy.url]));
		const alone = await startGateway(config([hole.url]));
		try {
			// Half the requests are routed to the unresponsive replica first: each goes to the
			// healthy one after the connect timeout instead of waiting out the total timeout.
			for (let i = 0; i < 8; i++) expect((await chat(g.url, "connect")).status).toBe(200);
			expect(healthy.requests.filter((r) => r.path === "/v1/chat/completions")).toHaveLength(8);
			const refused = await chat(alone.url, "connect-alone");
			expect(refused.status).toBe(503);
			const body = (await refused.json()) as { error: { code: string; message: string } };
			expect(body.error.code).toBe("upstream_unavailable");
			expect(body.error.message).toContain("within 300 ms");
			const usage = (await (
				await fetch(`${alone.url}/api/v1/admin/token-usage/llama2-7b/connect-alone`)
			).json()) as { windows: { used: number }[] };
			expect(usage.windows.every((w) => w.used === 0)).toBe(true);
		} finally {
			await g.stop();
			await alone.stop();
			await healthy.stop();
			hole.stop();
		}
	});

	it("cuts requests still waiting on a replica that went dark once its /health check fails", async () => {
		const going = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 2 } });
		const healthy = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 2 } });
		const port = going.port;
		const g = await startGateway(
			oneModelConfig(replicas(going.url, healthy.url)).replace(
				"vllm:\n",
				"vllm:\n  timeout-ms: 25000\n  health-check-ms: 200\n  connect-timeout-ms: 300\n",
			),
		);
		let hole: { stop: () => void } | undefined;
		const cue = await blackholeOnCue(port);
		try {
			// Both replicas have just answered: no connection check before the next requests.
			for (let i = 0; i < 4; i++) expect((await chat(g.url, "dark")).status).toBe(200);
			await going.stop();
			hole = await cue.open();
			const statuses = await Promise.all(
				Array.from({ length: 4 }, () => chat(g.url, "dark").then((r) => r.status)),
			);
			// Those sent to the dark replica are cut (503) long before the 25 s timeout; none is 504.
			expect(statuses.every((st) => st === 200 || st === 503)).toBe(true);
			expect(statuses).toContain(200);
			expect(statuses).toContain(503);
			const health = (await (await fetch(`${g.url}/api/v1/models/llama2-7b/health`)).json()) as {
				concurrency: { inUse: number };
			};
			expect(health.concurrency.inUse).toBe(0);
		} finally {
			await g.stop();
			await healthy.stop();
			hole?.stop();
		}
	});
});
