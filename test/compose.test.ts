import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, posix } from "node:path";
import { parseConfig } from "../src/config/loader.ts";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { promtool } from "./support/promql.ts";
import { freePort, type RedisServer, startRedis } from "./support/redis.ts";

// Runs promtool, the mock vLLM as the Compose service would, and a gateway.
setDefaultTimeout(30_000);

/**
 * The Compose stack (docker-compose.yml and deploy/compose/), checked without a
 * Docker engine: the file parses, what each service builds or mounts is in the
 * repository, ports line up, the gateway's configuration loads, the mock vLLM
 * runs from nothing but its mounted file, Prometheus's configuration passes
 * promtool with the rule files as mounted, and Grafana is provisioned with the
 * dashboard that test/monitoring.test.ts validates.
 */

const ROOT = join(import.meta.dir, "..");

interface ComposeService {
	image?: string;
	build?: { context: string; dockerfile?: string };
	command?: string[];
	working_dir?: string;
	environment?: Record<string, string>;
	ports?: string[];
	volumes?: string[];
	depends_on?: string[] | Record<string, { condition: string }>;
	healthcheck?: { test: string[] };
}
interface ComposeFile {
	services: Record<string, ComposeService>;
}
interface Mount {
	/** Repository-relative path of the bind-mounted file or directory. */
	readonly source: string;
	/** Absolute path inside the container. */
	readonly target: string;
}

const compose = Bun.YAML.parse(
	await Bun.file(join(ROOT, "docker-compose.yml")).text(),
) as ComposeFile;

function service(name: string): ComposeService {
	const s = compose.services[name];
	if (s === undefined) throw new Error(`docker-compose.yml has no service ${name}`);
	return s;
}

/** Compose's own `${VAR:-default}` interpolation, with nothing set in the environment. */
function interpolate(value: string): string {
	return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g, (_, _name, dflt) =>
		typeof dflt === "string" ? dflt : "",
	);
}

function environment(name: string): Record<string, string> {
	const env: Record<string, string> = {};
	for (const [k, v] of Object.entries(service(name).environment ?? {})) env[k] = interpolate(v);
	return env;
}

function mounts(name: string): Mount[] {
	return (service(name).volumes ?? []).map((v) => {
		const [source = "", target = ""] = v.split(":");
		return { source: posix.normalize(source), target };
	});
}

/** The repository file a container sees at `path`, through the service's bind mounts. */
function repoFileAt(name: string, path: string): string | undefined {
	for (const m of mounts(name)) {
		if (path === m.target) return m.source;
		if (path.startsWith(`${m.target}/`)) return posix.join(m.source, path.slice(m.target.length));
	}
	return undefined;
}

/** host port -> container port of each `ports:` entry. */
function published(name: string): { host: number; container: number }[] {
	return (service(name).ports ?? []).map((p) => {
		const parts = p.split(":");
		return { host: Number(parts.at(-2)), container: Number(parts.at(-1)) };
	});
}

function containerPorts(name: string): number[] {
	return published(name).map((p) => p.container);
}

function dependsOn(name: string): string[] {
	const d = service(name).depends_on ?? [];
	return Array.isArray(d) ? d : Object.keys(d);
}

/** Builds a directory laid out like the service's container, from its bind mounts. */
function containerRoot(name: string): string {
	const root = mkdtempSync(join(tmpdir(), `trl-compose-${name}-`));
	for (const m of mounts(name)) {
		const to = join(root, m.target);
		mkdirSync(dirname(to), { recursive: true });
		copyFileSync(join(ROOT, m.source), to);
	}
	return root;
}

const dockerfile = await Bun.file(join(ROOT, "Dockerfile")).text();

describe("docker-compose.yml", () => {
	it("runs the gateway, Redis, the mock vLLM, Prometheus and Grafana", () => {
		expect(Object.keys(compose.services).sort()).toEqual(
			["grafana", "mock-vllm", "prometheus", "redis", "token-rate-limiter"].sort(),
		);
	});

	it("builds the gateway from the repository's Dockerfile, with what it copies in the context", async () => {
		const build = service("token-rate-limiter").build;
		expect(build).toBeDefined();
		const context = join(ROOT, build?.context ?? "");
		expect(statSync(context).isDirectory()).toBe(true);
		expect(existsSync(join(context, build?.dockerfile ?? "Dockerfile"))).toBe(true);
		const ignored = (await Bun.file(join(context, ".dockerignore")).text())
			.split("\n")
			.map((l) => l.trim())
			.filter((l) => l !== "" && !l.startsWith("#"));
		const copied = [...dockerfile.matchAll(/^COPY (?!--from)(?:--\S+ )*(.+) \S+$/gm)].flatMap((m) =>
			(m[1] ?? "").split(/\s+/),
		);
		expect(copied).toContain("src");
		for (const source of copied) {
			expect({ source, exists: existsSync(join(context, source)) }).toEqual({
				source,
				exists: true,
			});
			expect({ source, ignored: ignored.includes(source) }).toEqual({ source, ignored: false });
		}
	});

	it("mounts only files that exist in the repository", () => {
		const all = Object.keys(compose.services).flatMap((name) =>
			mounts(name).map((m) => ({ service: name, ...m })),
		);
		expect(all.length).toBeGreaterThanOrEqual(6);
		for (const m of all) {
			expect({ ...m, relative: m.source.startsWith("./") || !m.source.startsWith("/") }).toEqual({
				...m,
				relative: true,
			});
			expect({ ...m, exists: existsSync(join(ROOT, m.source)) }).toEqual({ ...m, exists: true });
			expect(m.target.startsWith("/")).toBe(true);
		}
	});

	it("publishes each port once, on the port the service listens on", () => {
		const hosts = Object.keys(compose.services).flatMap((name) =>
			published(name).map((p) => p.host),
		);
		expect(hosts.length).toBe(Object.keys(compose.services).length);
		expect(new Set(hosts).size).toBe(hosts.length);
		expect(containerPorts("redis")).toEqual([6379]);
		expect(containerPorts("prometheus")).toEqual([9090]);
		expect(containerPorts("grafana")).toEqual([3000]);
		expect(containerPorts("mock-vllm")).toEqual([Number(environment("mock-vllm").MOCK_VLLM_PORT)]);
	});

	it("starts services only after what they depend on, all of which exist", () => {
		for (const name of Object.keys(compose.services)) {
			for (const dep of dependsOn(name)) expect(Object.keys(compose.services)).toContain(dep);
		}
		expect(dependsOn("token-rate-limiter").sort()).toEqual(["mock-vllm", "redis"]);
		expect(dependsOn("prometheus")).toContain("token-rate-limiter");
		expect(dependsOn("grafana")).toContain("prometheus");
	});

	it("runs the mock vLLM with the same Bun version the image is built with", () => {
		const bun = dockerfile.match(/^ARG BUN_VERSION=(\S+)$/m)?.[1];
		expect(bun).toBeDefined();
		expect(service("mock-vllm").image).toBe(`oven/bun:${bun}`);
	});
});

describe("the gateway service", () => {
	const configTarget = dockerfile.match(/^ENV TRL_CONFIG=(\S+)$/m)?.[1] ?? "";
	const configFile = repoFileAt("token-rate-limiter", configTarget);

	it("mounts its configuration where the image reads it (TRL_CONFIG)", () => {
		expect(configTarget).not.toBe("");
		expect(configFile).toBe("deploy/compose/gateway.yaml");
	});

	it("has a configuration the gateway loads, pointing at the stack's Redis and mock vLLM", async () => {
		const config = parseConfig(
			await Bun.file(join(ROOT, configFile ?? "")).text(),
			environment("token-rate-limiter"),
			configFile,
		);
		expect(config.store).toBe("redis");
		expect(config.server.host).toBe("0.0.0.0");
		// The image's HEALTHCHECK probes 8080 unless HEALTHCHECK_PORT says otherwise.
		expect(config.server.port).toBe(8080);
		expect(containerPorts("token-rate-limiter")).toEqual([config.server.port]);
		expect(Object.keys(compose.services)).toContain(config.redis.host);
		expect(containerPorts(config.redis.host)).toContain(config.redis.port);
		const served = (environment("mock-vllm").MOCK_VLLM_MODELS ?? "").split(",");
		expect(config.models.size).toBeGreaterThan(0);
		for (const model of config.models.values()) {
			expect(served).toContain(model.upstreamModel);
			for (const url of model.upstreamUrls) {
				const u = new URL(url);
				expect({ model: model.id, host: u.hostname }).toEqual({
					model: model.id,
					host: "mock-vllm",
				});
				expect(containerPorts("mock-vllm")).toContain(Number(u.port));
			}
		}
	});

	it("lets LLAMA2_7B_URL point llama2-7b at a real vLLM", async () => {
		const text = await Bun.file(join(ROOT, configFile ?? "")).text();
		const env = {
			...environment("token-rate-limiter"),
			LLAMA2_7B_URL: "http://host.docker.internal:8000",
		};
		const model = parseConfig(text, env, configFile).models.get("llama2-7b");
		expect(model?.upstreamUrls).toEqual(["http://host.docker.internal:8000"]);
	});
});

/** The request docs/operations.md sends in a loop to show a budget running out. */
const WALKTHROUGH_BODY =
	'{"model":"llama2-7b","messages":[{"role":"user","content":"Hello"}],"max_tokens":300}';

describe("the stack, wired as Compose wires it", () => {
	let proc: ReturnType<typeof Bun.spawn> | undefined;
	let root = "";
	let mockPort = 0;
	let redis: RedisServer | undefined;
	let gw: RunningGateway | undefined;

	beforeAll(async () => {
		// The mock vLLM: its command, in a directory holding nothing but its mounts.
		const s = service("mock-vllm");
		root = containerRoot("mock-vllm");
		mockPort = await freePort();
		proc = Bun.spawn(s.command ?? [], {
			cwd: join(root, s.working_dir ?? "/"),
			env: {
				PATH: process.env.PATH ?? "",
				...environment("mock-vllm"),
				MOCK_VLLM_PORT: String(mockPort),
			},
			stdout: "pipe",
			stderr: "pipe",
		});
		redis = await startRedis();
		// The gateway with the stack's configuration; service names resolve to this machine.
		const text = (await Bun.file(join(ROOT, "deploy/compose/gateway.yaml")).text()).replaceAll(
			`mock-vllm:${environment("mock-vllm").MOCK_VLLM_PORT}`,
			`127.0.0.1:${mockPort}`,
		);
		gw = await startGateway(text, {
			env: {
				...environment("token-rate-limiter"),
				REDIS_HOST: "127.0.0.1",
				REDIS_PORT: String(redis.port),
				LLAMA2_7B_URL: `http://127.0.0.1:${mockPort}`,
			},
		});
	});
	afterAll(async () => {
		await gw?.stop();
		await redis?.stop();
		proc?.kill();
		await proc?.exited;
		if (root !== "") rmSync(root, { recursive: true, force: true });
	});

	it("runs the mock vLLM from its mounted file alone, on every interface", async () => {
		const env = environment("mock-vllm");
		expect(env.MOCK_VLLM_HOST).toBe("0.0.0.0");
		let health = 0;
		for (let i = 0; i < 100 && health !== 200; i++) {
			health = await fetch(`http://127.0.0.1:${mockPort}/health`).then(
				(r) => r.status,
				() => 0,
			);
			if (health !== 200) await Bun.sleep(50);
		}
		expect(health).toBe(200);
		const models = (await (await fetch(`http://127.0.0.1:${mockPort}/v1/models`)).json()) as {
			data: { id: string }[];
		};
		expect(models.data.map((m) => m.id)).toEqual((env.MOCK_VLLM_MODELS ?? "").split(","));
		// The healthcheck probes the same port the service listens on.
		expect(service("mock-vllm").healthcheck?.test.join(" ")).toContain(
			`127.0.0.1:${env.MOCK_VLLM_PORT}/health`,
		);
	});

	it("answers the walkthrough's loop with 200s, then 429s from the budget kept in Redis", async () => {
		expect(await Bun.file(join(ROOT, "docs/operations.md")).text()).toContain(
			`-d '${WALKTHROUGH_BODY}'`,
		);
		const statuses: number[] = [];
		for (let i = 0; i < 10; i++) {
			const res = await fetch(`${gw?.url}/v1/chat/completions`, {
				method: "POST",
				headers: { "content-type": "application/json", "x-user-id": "user42" },
				body: WALKTHROUGH_BODY,
			});
			await res.arrayBuffer();
			statuses.push(res.status);
		}
		const first429 = statuses.indexOf(429);
		expect({ statuses, first429AtSixOrSeven: first429 === 6 || first429 === 7 }).toEqual({
			statuses,
			first429AtSixOrSeven: true,
		});
		expect(statuses.slice(0, first429).every((s) => s === 200)).toBe(true);
		expect(await redis?.cli("HEXISTS", "trl:{llama2-7b}:u:user42", "minute")).toBe("1");
	});
});

describe("the prometheus service", () => {
	interface PromConfig {
		rule_files: string[];
		scrape_configs: {
			job_name: string;
			metrics_path?: string;
			static_configs: { targets: string[] }[];
		}[];
	}
	const flag = (service("prometheus").command ?? [])
		.find((a) => a.startsWith("--config.file="))
		?.slice("--config.file=".length);
	const configTarget = flag ?? "";
	let root = "";
	let mock: MockVllm | undefined;
	let gw: RunningGateway | undefined;

	beforeAll(async () => {
		root = containerRoot("prometheus");
		mock = startMockVllm({ models: ["llama2-7b"] });
		gw = await startGateway(oneModelConfig(mock.url));
	});
	afterAll(async () => {
		rmSync(root, { recursive: true, force: true });
		await gw?.stop();
		await mock?.stop();
	});

	async function promConfig(): Promise<PromConfig> {
		return Bun.YAML.parse(await Bun.file(join(root, configTarget)).text()) as PromConfig;
	}

	it("reads deploy/compose/prometheus.yml, and promtool accepts it with the rules as mounted", async () => {
		expect(repoFileAt("prometheus", configTarget)).toBe("deploy/compose/prometheus.yml");
		const { code, output } = await promtool(["check", "config", join(root, configTarget)]);
		expect(output).toContain("SUCCESS");
		expect(output).toMatch(/SUCCESS: 1 rule files found|SUCCESS: \d+ rules found/);
		expect(code).toBe(0);
	});

	it("loads exactly the repository's alert rule files", async () => {
		const config = await promConfig();
		const dir = posix.dirname(configTarget);
		const loaded = new Set<string>();
		for (const pattern of config.rule_files) {
			const glob = new Bun.Glob(posix.resolve(dir, pattern));
			for (const m of mounts("prometheus")) {
				if (glob.match(m.target)) loaded.add(m.source);
			}
		}
		const repoRules = [...new Bun.Glob("deploy/monitoring/rules*.yaml").scanSync(ROOT)].filter(
			(f) => !f.endsWith(".test.yaml"),
		);
		expect(repoRules).toEqual(["deploy/monitoring/rules.yaml"]);
		expect([...loaded]).toEqual(repoRules);
	});

	it("scrapes the gateway service on its port and metrics path", async () => {
		const job = (await promConfig()).scrape_configs.find(
			(j) => j.job_name === "token-rate-limiter",
		);
		expect(job).toBeDefined();
		const targets = (job?.static_configs ?? []).flatMap((c) => c.targets);
		expect(targets).toEqual([`token-rate-limiter:${containerPorts("token-rate-limiter")[0]}`]);
		const path = job?.metrics_path ?? "/metrics";
		const res = await fetch(`${gw?.url}${path}`);
		expect(res.status).toBe(200);
		const body = await res.text();
		for (const seed of [
			"token_usage_total",
			"token_rate_limit_exceeded_total",
			"model_request_duration_seconds",
			"token_concurrent_requests",
		])
			expect(body).toContain(`# TYPE ${seed} `);
	});

	it("scrapes the mock vLLM's own metrics", async () => {
		const job = (await promConfig()).scrape_configs.find((j) => j.job_name === "vllm");
		const targets = (job?.static_configs ?? []).flatMap((c) => c.targets);
		expect(targets).toEqual([`mock-vllm:${environment("mock-vllm").MOCK_VLLM_PORT}`]);
		const res = await fetch(`${mock?.url}${job?.metrics_path ?? "/metrics"}`);
		expect(await res.text()).toContain("vllm:num_requests_running");
	});
});

describe("the grafana service", () => {
	interface Datasources {
		datasources: { name: string; uid: string; type: string; url: string; isDefault?: boolean }[];
	}
	interface Providers {
		providers: { type: string; options: { path: string } }[];
	}
	const provisioning = "/etc/grafana/provisioning";

	async function provisioned<T>(kind: string): Promise<T[]> {
		const files = mounts("grafana").filter((m) => m.target.startsWith(`${provisioning}/${kind}/`));
		expect(files.length).toBeGreaterThan(0);
		return Promise.all(
			files.map(async (f) => Bun.YAML.parse(await Bun.file(join(ROOT, f.source)).text()) as T),
		);
	}

	it("has the stack's Prometheus as its default datasource", async () => {
		const sources = (await provisioned<Datasources>("datasources")).flatMap((d) => d.datasources);
		expect(sources.length).toBe(1);
		const [ds] = sources;
		expect(ds?.type).toBe("prometheus");
		expect(ds?.isDefault).toBe(true);
		const url = new URL(ds?.url ?? "");
		expect(url.hostname).toBe("prometheus");
		expect(containerPorts("prometheus")).toContain(Number(url.port));
	});

	it("provisions the dashboard of deploy/monitoring, which queries that datasource", async () => {
		const providers = (await provisioned<Providers>("dashboards")).flatMap((p) => p.providers);
		expect(providers.length).toBe(1);
		const [provider] = providers;
		expect(provider?.type).toBe("file");
		const dir = provider?.options.path ?? "";
		const dashboards = mounts("grafana")
			.filter((m) => posix.dirname(m.target) === dir && m.target.endsWith(".json"))
			.map((m) => m.source);
		expect(dashboards).toEqual(["deploy/monitoring/grafana-dashboard.json"]);
		const dashboard = JSON.parse(
			await Bun.file(join(ROOT, "deploy/monitoring/grafana-dashboard.json")).text(),
		) as { uid: string; templating: { list: { name: string; type: string; query?: unknown }[] } };
		expect(dashboard.uid).toBe("token-rate-limiter");
		const dsVar = dashboard.templating.list.find((v) => v.type === "datasource");
		expect(dsVar?.query).toBe("prometheus");
		// Grafana's home page is that dashboard.
		const home = environment("grafana").GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH ?? "";
		expect(repoFileAt("grafana", home)).toBe("deploy/monitoring/grafana-dashboard.json");
	});

	it("keeps the seed's Grafana login (admin / admin123)", () => {
		const env = environment("grafana");
		expect([env.GF_SECURITY_ADMIN_USER, env.GF_SECURITY_ADMIN_PASSWORD]).toEqual([
			"admin",
			"admin123",
		]);
		expect(published("grafana")[0]?.host).toBe(3000);
		expect(published("prometheus")[0]?.host).toBe(9090);
	});
});
