import { afterAll, describe, expect, it } from "bun:test";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import {
	ConfigError,
	configPathFrom,
	type Env,
	loadConfigFile,
	mayRepeatKey,
	parseConfig,
} from "./loader.ts";
import type { GatewayConfig, ModelConfig, RedisConfig } from "./schema.ts";

const REPO_ROOT = resolve(import.meta.dir, "../..");

const SEED_APPLICATION_YML = `token:
  rate-limit:
    models:
      llama2-7b:
        max-tokens-per-minute: 2000
        max-tokens-per-hour: 20000
        max-tokens-per-day: 200000
        max-concurrent-requests: 10
      gpt-3.5-turbo:
        max-tokens-per-minute: 1000
        max-tokens-per-hour: 10000
        max-tokens-per-day: 100000
        max-concurrent-requests: 5
vllm:
  services:
    llama2-7b: http://vllm-llama2-7b-service:8000
    gpt-3.5-turbo: http://vllm-gpt35-service:8000
spring:
  data:
    redis:
      host: \${REDIS_HOST:localhost}
      port: \${REDIS_PORT:6379}
`;

/** A Spring placeholder as written in YAML: `${NAME}` or `${NAME:default}`. */
function springRef(name: string, fallback?: string): string {
	return fallback === undefined ? `\${${name}}` : `\${${name}:${fallback}}`;
}

/** What `config.redis` is when the file sets only what the seed sets (host and port). */
const REDIS_DEFAULTS: RedisConfig = {
	host: "localhost",
	port: 6379,
	url: undefined,
	username: undefined,
	password: undefined,
	database: 0,
	tls: false,
	clusterNodes: [],
	timeoutMs: 100,
	failurePolicy: "local",
	replicas: undefined,
	leaseTtlMs: 30_000,
	heartbeatMs: 5_000,
};

const MINUTE_US = 60_000_000;
const HOUR_US = 60 * MINUTE_US;
const DAY_US = 24 * HOUR_US;

/** The problems of a configuration that must be refused. */
function problemsOf(yaml: string, env: Env = {}): readonly string[] {
	try {
		parseConfig(yaml, env, "test.yaml");
	} catch (err) {
		if (err instanceof ConfigError) {
			expect(err.source).toBe("test.yaml");
			expect(err.problems.length).toBeGreaterThan(0);
			for (const p of err.problems) expect(err.message).toContain(p);
			return err.problems;
		}
		throw err;
	}
	throw new Error("expected a ConfigError, but the configuration was accepted");
}

function model(config: GatewayConfig, id: string): ModelConfig {
	const m = config.models.get(id);
	if (m === undefined) throw new Error(`model ${id} missing`);
	return m;
}

/** A minimal valid file around one model's limits and service. */
function oneModel(limits: string, service: string, id = "llama2-7b"): string {
	return `token:
  rate-limit:
    models:
      ${JSON.stringify(id)}:
${limits}
vllm:
  services:
    ${JSON.stringify(id)}: ${service}
`;
}

describe("parseConfig: the seed's application.yml", () => {
	it("loads unchanged, with both models, all windows and the Redis defaults", () => {
		const config = parseConfig(SEED_APPLICATION_YML, {}, "application.yml");
		expect([...config.models.keys()]).toEqual(["llama2-7b", "gpt-3.5-turbo"]);
		expect(model(config, "llama2-7b")).toEqual({
			id: "llama2-7b",
			upstreamModel: "llama2-7b",
			upstreamUrls: ["http://vllm-llama2-7b-service:8000"],
			timeoutMs: 600_000,
			firstByteTimeoutMs: 600_000,
			idleTimeoutMs: 120_000,
			tokenizer: {
				kind: "cl100k_base",
				path: undefined,
				pattern: undefined,
				chatTemplate: undefined,
				key: "cl100k_base",
				where: "token.rate-limit.models.llama2-7b.tokenizer",
			},
			calibration: { enabled: true, ratio: undefined, direction: "up" },
			defaultMaxTokens: 256,
			exactCount: undefined,
			maxConcurrentRequests: 10,
			queue: { maxWaitMs: 30_000, maxQueued: 100 },
			userWindows: [
				{ name: "minute", windowUs: MINUTE_US, limitTokens: 2_000, burstTokens: 2_000 },
				{ name: "hour", windowUs: HOUR_US, limitTokens: 20_000, burstTokens: 20_000 },
				{ name: "day", windowUs: DAY_US, limitTokens: 200_000, burstTokens: 200_000 },
			],
			modelWindows: [],
			tenantWindows: [],
		});
		expect([...config.auth.modes]).toEqual(["none"]);
		const gpt = model(config, "gpt-3.5-turbo");
		expect(gpt.upstreamUrls).toEqual(["http://vllm-gpt35-service:8000"]);
		expect(gpt.maxConcurrentRequests).toBe(5);
		expect(gpt.userWindows.map((w) => w.limitTokens)).toEqual([1_000, 10_000, 100_000]);
		expect(config.redis).toStrictEqual(REDIS_DEFAULTS);
		// The original gateway always used Redis: spring.data.redis without a store means Redis.
		expect(config.store).toBe("redis");
		expect(config.storeReason).toBe(
			"spring.data.redis is configured and store is not (store: memory keeps limits in this process)",
		);
		const opted = parseConfig(`store: memory\n${SEED_APPLICATION_YML}`, {});
		expect(opted.store).toBe("memory");
		expect(opted.storeReason).toBe("store");
		expect(config.server).toEqual({
			host: "0.0.0.0",
			port: 8080,
			maxBodyBytes: 4 * 1024 * 1024,
			maxMessages: 2048,
			maxPromptTokens: undefined,
			drainMs: 30_000,
			portFrom: "default",
		});
		expect(config.logLevel).toBe("info");
	});

	it("resolves the Spring placeholders REDIS_HOST / REDIS_PORT from the environment, the port as a number", () => {
		const config = parseConfig(SEED_APPLICATION_YML, {
			REDIS_HOST: "redis.internal",
			REDIS_PORT: "6380",
		});
		expect(config.redis).toStrictEqual({ ...REDIS_DEFAULTS, host: "redis.internal", port: 6380 });
	});

	it("lets REDIS_HOST / REDIS_PORT override literal values in the file", () => {
		const literal = SEED_APPLICATION_YML.replace(
			springRef("REDIS_HOST", "localhost"),
			"file-host",
		).replace(springRef("REDIS_PORT", "6379"), "7000");
		const hostPort = (redis: RedisConfig) => ({ host: redis.host, port: redis.port });
		expect(hostPort(parseConfig(literal, {}).redis)).toEqual({ host: "file-host", port: 7000 });
		expect(hostPort(parseConfig(literal, { REDIS_HOST: "env-host" }).redis)).toEqual({
			host: "env-host",
			port: 7000,
		});
		expect(hostPort(parseConfig(literal, { REDIS_PORT: "7001" }).redis)).toEqual({
			host: "file-host",
			port: 7001,
		});
	});

	it("tolerates unknown top-level keys (management:, spring.application.name)", () => {
		const yaml = `${SEED_APPLICATION_YML.replace(
			"spring:\n",
			"spring:\n  application:\n    name: token-rate-limiter\n",
		)}management:
  endpoints:
    web:
      exposure:
        include: health,prometheus
`;
		const config = parseConfig(yaml, {});
		expect(config.models.size).toBe(2);
		expect(config.redis).toStrictEqual(REDIS_DEFAULTS);
	});

	it("reports a placeholder with no default and no variable, naming the key", () => {
		const yaml = SEED_APPLICATION_YML.replace(
			springRef("REDIS_HOST", "localhost"),
			springRef("REDIS_HOST"),
		);
		expect(problemsOf(yaml)).toEqual([
			"spring.data.redis.host: environment variable REDIS_HOST is not set and has no default",
		]);
		expect(parseConfig(yaml, { REDIS_HOST: "h" }).redis.host).toBe("h");
	});

	it("substitutes placeholders inside longer strings", () => {
		const yaml = oneModel(
			"        max-tokens-per-minute: 100",
			`http://${springRef("VLLM_HOST", "localhost")}:${springRef("VLLM_PORT", "8000")}/`,
		);
		expect(model(parseConfig(yaml, {}), "llama2-7b").upstreamUrls).toEqual([
			"http://localhost:8000",
		]);
		expect(
			model(parseConfig(yaml, { VLLM_HOST: "gpu-1", VLLM_PORT: "9000" }), "llama2-7b").upstreamUrls,
		).toEqual(["http://gpu-1:9000"]);
	});
});

describe("parseConfig: errors name the key path", () => {
	it("refuses a negative limit with the exact line naming the key", () => {
		const yaml = SEED_APPLICATION_YML.replace(
			"max-tokens-per-minute: 2000",
			"max-tokens-per-minute: -5",
		);
		const problems = problemsOf(yaml);
		expect(problems).toContain(
			"token.rate-limit.models.llama2-7b.max-tokens-per-minute: expected a positive integer, got -5",
		);
		expect(problems).toHaveLength(1);
	});

	it("refuses a zero, fractional or textual limit", () => {
		for (const [value, shown] of [
			["0", "0"],
			["1.5", "1.5"],
			['"lots"', '"lots"'],
		] as const) {
			const yaml = oneModel(`        max-tokens-per-hour: ${value}`, "http://x:8000");
			expect(problemsOf(yaml)).toEqual([
				`token.rate-limit.models.llama2-7b.max-tokens-per-hour: expected a positive integer, got ${shown}`,
			]);
		}
	});

	it("reports a typo key inside a model as an unknown key with its dotted path", () => {
		const yaml = SEED_APPLICATION_YML.replace(
			"max-tokens-per-minute: 1000",
			"max-token-per-minute: 1000",
		);
		const problems = problemsOf(yaml);
		expect(problems).toHaveLength(1);
		const [line] = problems;
		expect(
			line?.startsWith("token.rate-limit.models.gpt-3.5-turbo.max-token-per-minute: unknown key"),
		).toBe(true);
		expect(line).toContain("max-tokens-per-minute");
	});

	it("reports an unknown key inside model-wide and inside vllm", () => {
		const yaml = `${oneModel(
			"        max-tokens-per-minute: 100\n        model-wide:\n          max-tokens-per-second: 5",
			"http://x:8000",
		)}  retries: 3
`;
		const problems = problemsOf(yaml);
		expect(problems).toHaveLength(2);
		expect(
			problems.some((p) =>
				p.startsWith(
					"token.rate-limit.models.llama2-7b.model-wide.max-tokens-per-second: unknown key",
				),
			),
		).toBe(true);
		expect(problems.some((p) => p.startsWith("vllm.retries: unknown key"))).toBe(true);
	});

	it("refuses a model with limits but no vLLM service, naming the key", () => {
		const yaml = SEED_APPLICATION_YML.replace(
			"    gpt-3.5-turbo: http://vllm-gpt35-service:8000\n",
			"",
		);
		expect(problemsOf(yaml)).toEqual([
			"token.rate-limit.models.gpt-3.5-turbo: no upstream for this model (add vllm.services.gpt-3.5-turbo: <url>)",
		]);
	});

	it("refuses a vLLM service with no limits, naming the key", () => {
		const yaml = SEED_APPLICATION_YML.replace(
			"    gpt-3.5-turbo: http://vllm-gpt35-service:8000\n",
			"    gpt-3.5-turbo: http://vllm-gpt35-service:8000\n    mistral-7b: http://vllm-mistral:8000\n",
		);
		expect(problemsOf(yaml)).toEqual([
			"vllm.services.mistral-7b: no limits for this model (add token.rate-limit.models.mistral-7b with at least one limit)",
		]);
	});

	it("refuses a model whose entry sets no limit at all", () => {
		const yaml = oneModel("        tokenizer: o200k_base", "http://x:8000");
		expect(problemsOf(yaml)).toEqual([
			"token.rate-limit.models.llama2-7b: sets no limit (give max-tokens-per-minute|hour|day or max-concurrent-requests)",
		]);
	});

	it("refuses a non-http(s) upstream URL", () => {
		for (const url of ["ftp://vllm:8000", "vllm:8000", "not a url"]) {
			const yaml = oneModel("        max-tokens-per-minute: 100", JSON.stringify(url));
			expect(problemsOf(yaml)).toEqual([
				`vllm.services.llama2-7b: expected an http(s) URL, got ${JSON.stringify(url)}`,
			]);
		}
	});

	it("names the list index of a bad URL in a list", () => {
		const yaml = oneModel(
			"        max-tokens-per-minute: 100",
			'["http://a:8000", "ftp://b:8000"]',
		);
		expect(problemsOf(yaml)).toEqual([
			'vllm.services.llama2-7b.1: expected an http(s) URL, got "ftp://b:8000"',
		]);
	});

	it("names model ids containing '/' and '.' exactly in error paths", () => {
		const yaml = `token:
  rate-limit:
    models:
      meta-llama/Llama-2-7b-chat-hf:
        max-tokens-per-minute: -1
      qwen2.5-7b:
        max-tokens-per-day: 0
vllm:
  services:
    meta-llama/Llama-2-7b-chat-hf: http://a:8000
    qwen2.5-7b: http://b:8000
`;
		expect(problemsOf(yaml)).toEqual([
			"token.rate-limit.models.meta-llama/Llama-2-7b-chat-hf.max-tokens-per-minute: expected a positive integer, got -1",
			"token.rate-limit.models.qwen2.5-7b.max-tokens-per-day: expected a positive integer, got 0",
		]);
		const unmatched = yaml.replace("    qwen2.5-7b: http://b:8000\n", "");
		expect(
			problemsOf(
				unmatched
					.replace("max-tokens-per-minute: -1", "max-tokens-per-minute: 1")
					.replace("max-tokens-per-day: 0", "max-tokens-per-day: 1"),
			),
		).toEqual([
			"token.rate-limit.models.qwen2.5-7b: no upstream for this model (add vllm.services.qwen2.5-7b: <url>)",
		]);
	});

	it("looks closer only where a key may be given twice", async () => {
		expect(mayRepeatKey("a: 1\nb: 2\n")).toBe(false);
		expect(mayRepeatKey("a: 1\na: 2\n")).toBe(true);
		expect(mayRepeatKey("x:\n  a: 1\n  b:\n    a: 2\n  a: 3\n")).toBe(true);
		// The same keys in different list items, under different parents, or in a block scalar.
		expect(mayRepeatKey("keys:\n  - id: a\n    user: u\n  - id: b\n    user: v\n")).toBe(false);
		expect(mayRepeatKey("m:\n  a:\n    x: 1\n  b:\n    x: 2\n")).toBe(false);
		expect(mayRepeatKey("t: |\n  a: 1\n  a: 2\nu: 1\n")).toBe(false);
		// The shipped configurations give no key twice, so their boot never loads the yaml library.
		for (const file of readdirSync(join(REPO_ROOT, "config"))) {
			const text = await Bun.file(join(REPO_ROOT, "config", file)).text();
			expect({ file, repeats: mayRepeatKey(text) }).toEqual({ file, repeats: false });
		}
	});

	it("refuses a file that is not YAML or not a mapping", () => {
		expect(problemsOf("token: [unclosed")[0]).toStartWith("not valid YAML");
		// Where, and the line itself.
		expect(
			problemsOf("server:\n  port: 8080\ntoken:\n  rate-limit:\n    models: [x\nvllm: {}\n"),
		).toEqual([
			"not valid YAML at line 6, column 1: Flow sequence in block collection must be sufficiently indented and end with a ]\n    6 | vllm: {}\n        ^",
		]);
		expect(problemsOf("server:\n\tport: 8080\n")[0]).toStartWith(
			"not valid YAML at line 2, column 1: Tabs are not allowed as indentation",
		);
		// A key given twice is refused, not silently the last one.
		expect(problemsOf("server:\n  port: 1\nserver:\n  port: 2\n")).toEqual([
			"not valid YAML at line 3, column 1: Map keys must be unique\n    3 | server:\n        ^",
		]);
		expect(problemsOf("- a\n- b\n")).toEqual(["the file must be a YAML mapping at the top level"]);
	});

	it("says which required section is missing", () => {
		const problems = problemsOf("token:\n  rate-limit:\n    models: {}\n");
		expect(problems.some((p) => p.startsWith("vllm: is required"))).toBe(true);
	});
});

describe("parseConfig: service forms and options", () => {
	it("accepts a list of URLs, trimming trailing slashes", () => {
		const yaml = oneModel(
			"        max-tokens-per-minute: 100",
			'["http://a:8000/", "https://b:8443"]',
		);
		const m = model(parseConfig(yaml, {}), "llama2-7b");
		expect(m.upstreamUrls).toEqual(["http://a:8000", "https://b:8443"]);
		expect(m.upstreamModel).toBe("llama2-7b");
	});

	it("accepts the object form {urls, upstream-model, timeout-ms}", () => {
		const yaml = oneModel(
			"        max-tokens-per-minute: 100",
			"\n      urls:\n        - http://a:8000\n        - http://b:8000\n      upstream-model: meta-llama/Llama-2-7b-chat-hf\n      timeout-ms: 30000",
		);
		const m = model(parseConfig(yaml, {}), "llama2-7b");
		expect(m.upstreamUrls).toEqual(["http://a:8000", "http://b:8000"]);
		expect(m.upstreamModel).toBe("meta-llama/Llama-2-7b-chat-hf");
		expect(m.timeoutMs).toBe(30_000);
	});

	it("accepts the object form with a single URL string and the vllm-wide default timeout", () => {
		const yaml = `${oneModel("        max-tokens-per-minute: 100", "{urls: 'http://a:8000'}")}  timeout-ms: 1234
`;
		const m = model(parseConfig(yaml, {}), "llama2-7b");
		expect(m.upstreamUrls).toEqual(["http://a:8000"]);
		expect(m.timeoutMs).toBe(1_234);
	});

	it("refuses an object-form service with an unknown key or a bad timeout", () => {
		for (const service of [
			"{urls: 'http://a', retries: 2}",
			"{urls: 'http://a', timeout-ms: -1}",
		]) {
			const problems = problemsOf(oneModel("        max-tokens-per-minute: 100", service));
			expect(problems).toHaveLength(1);
			expect(problems[0]).toStartWith(
				"vllm.services.llama2-7b: expected a URL, a list of URLs, or an object {urls, upstream-model, timeout-ms}",
			);
		}
	});

	it("applies burst-factor to every window, user and model-wide", () => {
		const yaml = oneModel(
			"        max-tokens-per-minute: 1000\n        burst-factor: 1.5\n        model-wide:\n          max-tokens-per-hour: 40000",
			"http://a:8000",
		);
		const m = model(parseConfig(yaml, {}), "llama2-7b");
		expect(m.userWindows).toEqual([
			{ name: "minute", windowUs: MINUTE_US, limitTokens: 1_000, burstTokens: 1_500 },
		]);
		expect(m.modelWindows).toEqual([
			{ name: "hour", windowUs: HOUR_US, limitTokens: 40_000, burstTokens: 60_000 },
		]);
	});
});

describe("parseConfig: Redis store settings", () => {
	const base = oneModel("        max-tokens-per-minute: 100", "http://a:8000");
	/** `base` plus a `spring.data.redis` block (indented lines) and top-level extras. */
	const withRedis = (springRedis: string, top = "") =>
		`${base}${top}spring:\n  data:\n    redis:\n${springRedis}`;

	it("accepts store: redis and store: redis-cluster (memory stays the default)", () => {
		expect(parseConfig(base, {}).store).toBe("memory");
		expect(parseConfig(`${base}store: redis\n`, {}).store).toBe("redis");
		const cluster = parseConfig(
			withRedis("      cluster:\n        nodes: [a:7000]\n", "store: redis-cluster\n"),
			{},
		);
		expect(cluster.store).toBe("redis-cluster");
		expect(cluster.redis.clusterNodes).toEqual(["a:7000"]);
	});

	it("reads spring.data.redis url, username, password, database and ssl.enabled", () => {
		const config = parseConfig(
			withRedis(
				"      url: redis://cache.internal:6380/2\n      username: gateway\n      password: s3cret\n      database: 3\n      ssl:\n        enabled: true\n",
				"store: redis\n",
			),
			{},
		);
		expect(config.redis).toStrictEqual({
			...REDIS_DEFAULTS,
			url: "redis://cache.internal:6380/2",
			username: "gateway",
			password: "s3cret",
			database: 3,
			tls: true,
		});
	});

	it("takes a numeric password as text, and TLS from a rediss:// URL without ssl.enabled", () => {
		const config = parseConfig(
			withRedis("      url: rediss://cache:6380\n      password: 123456\n"),
			{},
		);
		expect(config.redis.password).toBe("123456");
		expect(config.redis.tls).toBe(true);
		expect(parseConfig(withRedis("      url: redis://cache:6380\n"), {}).redis.tls).toBe(false);
		expect(parseConfig(withRedis("      ssl:\n        enabled: false\n"), {}).redis.tls).toBe(
			false,
		);
	});

	it("treats an empty password placeholder as no password", () => {
		const yaml = withRedis(`      password: ${springRef("REDIS_PASSWORD", "")}\n`);
		expect(parseConfig(yaml, {}).redis.password).toBeUndefined();
		expect(parseConfig(yaml, { REDIS_PASSWORD: "pw" }).redis.password).toBe("pw");
	});

	it("reads cluster.nodes as a YAML list or a comma-separated string, trimming and dropping empty entries", () => {
		const list = parseConfig(
			withRedis(
				"      cluster:\n        nodes:\n          - 10.0.0.1:7000\n          - 10.0.0.2:7000\n",
			),
			{},
		);
		expect(list.redis.clusterNodes).toEqual(["10.0.0.1:7000", "10.0.0.2:7000"]);
		const comma = parseConfig(
			withRedis('      cluster:\n        nodes: "10.0.0.1:7000, 10.0.0.2:7000,,10.0.0.3:7000 "\n'),
			{},
		);
		expect(comma.redis.clusterNodes).toEqual(["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]);
	});

	it("reads cluster.nodes from a placeholder, as config/prod-cluster.yaml does", () => {
		const yaml = withRedis(
			`      cluster:\n        nodes: ${springRef("REDIS_CLUSTER_NODES", "r0:6379,r1:6379")}\n`,
			"store: redis-cluster\n",
		);
		expect(parseConfig(yaml, {}).redis.clusterNodes).toEqual(["r0:6379", "r1:6379"]);
		expect(
			parseConfig(yaml, { REDIS_CLUSTER_NODES: "n1:7000,n2:7001,n3:7002" }).redis.clusterNodes,
		).toEqual(["n1:7000", "n2:7001", "n3:7002"]);
	});

	it("reads redis.timeout-ms, failure-policy, replicas, lease-ttl-ms and heartbeat-ms", () => {
		const config = parseConfig(
			`${base}store: redis\nredis:\n  timeout-ms: 75\n  failure-policy: closed\n  replicas: 4\n  lease-ttl-ms: 12000\n  heartbeat-ms: 2500\n`,
			{},
		);
		expect(config.redis).toStrictEqual({
			...REDIS_DEFAULTS,
			timeoutMs: 75,
			failurePolicy: "closed",
			replicas: 4,
			leaseTtlMs: 12_000,
			heartbeatMs: 2_500,
		});
		for (const policy of ["open", "closed", "local"] as const) {
			const yaml = `${base}redis:\n  failure-policy: ${policy}\n`;
			expect(parseConfig(yaml, {}).redis.failurePolicy).toBe(policy);
		}
	});

	it("refuses store: redis-cluster without cluster nodes, naming spring.data.redis.cluster.nodes", () => {
		const message =
			"spring.data.redis.cluster.nodes: is required with store: redis-cluster (host:port of at least one node)";
		expect(problemsOf(`${base}store: redis-cluster\n`)).toEqual([message]);
		expect(
			problemsOf(withRedis("      cluster:\n        nodes: []\n", "store: redis-cluster\n")),
		).toEqual([message]);
		expect(
			problemsOf(withRedis('      cluster:\n        nodes: " , "\n', "store: redis-cluster\n")),
		).toEqual([message]);
		// A URL is a seed node too.
		const viaUrl = parseConfig(
			withRedis("      url: redis://seed:7000\n", "store: redis-cluster\n"),
			{},
		);
		expect(viaUrl.redis.clusterNodes).toEqual([]);
		expect(viaUrl.redis.url).toBe("redis://seed:7000");
	});

	it("refuses a bad failure-policy, naming the key path and the allowed values", () => {
		expect(problemsOf(`${base}redis:\n  failure-policy: sometimes\n`)).toEqual([
			'redis.failure-policy: expected one of open, closed, local, got "sometimes"',
		]);
	});

	it("refuses a bad store, a bad redis URL, non-positive numbers and unknown redis keys, each by key path", () => {
		expect(problemsOf(`${base}store: mongo\n`)).toEqual([
			'store: expected one of memory, redis, redis-cluster, got "mongo"',
		]);
		expect(problemsOf(withRedis("      url: http://cache:6379\n"))).toEqual([
			'spring.data.redis.url: expected a redis:// or rediss:// URL, got "http://cache:6379"',
		]);
		expect(problemsOf(`${base}redis:\n  timeout-ms: 0\n  lease-ttl-ms: -1\n`)).toEqual([
			"redis.timeout-ms: expected a positive integer, got 0",
			"redis.lease-ttl-ms: expected a positive integer, got -1",
		]);
		expect(problemsOf(`${base}redis:\n  timeout: 5\n`)).toEqual([
			"redis.timeout: unknown key (allowed: timeout-ms, failure-policy, replicas, lease-ttl-ms, heartbeat-ms)",
		]);
		expect(problemsOf(withRedis("      ssl:\n        enabled: yes\n"))).toEqual([
			'spring.data.redis.ssl.enabled: expected true or false, got "yes"',
		]);
	});
});

describe("parseConfig: strict keys, and the Spring gateway's sections", () => {
	it("refuses every unknown key, naming its path and the closest valid key", () => {
		const yaml = `server:
  prot: 18282
stroe: redis
token:
  ratelimit: {}
  rate-limit:
    models:
      llama2-7b:
        max-tokens-per-minute: 2000
        max-tokens-per-minut: 5
vllm:
  services:
    llama2-7b: http://localhost:8000
`;
		expect(problemsOf(yaml)).toEqual([
			"stroe: unknown key; did you mean store? (allowed: server, store, redis, token, vllm, spring, auth, metrics, logging)",
			"server.prot: unknown key; did you mean port? (allowed: port, host, max-body-bytes, max-messages, max-prompt-tokens, drain-ms)",
			"token.ratelimit: unknown key; did you mean rate-limit? (allowed: rate-limit)",
			"token.rate-limit.models.llama2-7b.max-tokens-per-minut: unknown key; did you mean max-tokens-per-minute? (allowed: max-tokens-per-minute, max-tokens-per-hour, max-tokens-per-day, max-requests-per-minute, max-concurrent-requests, max-queue-wait-ms, max-queued-requests, burst-factor, default-max-tokens, tokenizer, calibration, exact-count, tenant, model-wide)",
		]);
	});

	it("refuses the Spring settings whose absence would mislead, saying what to do instead", () => {
		expect(problemsOf(`server:\n  ssl:\n    enabled: true\n${SEED_APPLICATION_YML}`)).toEqual([
			"server.ssl: the gateway serves plain HTTP; terminate TLS in front of it (an Ingress or a load balancer) and remove server.ssl",
		]);
		expect(
			problemsOf(
				SEED_APPLICATION_YML.replace(
					"    redis:\n",
					"    redis:\n      sentinel:\n        master: mymaster\n",
				),
			),
		).toEqual([
			"spring.data.redis.sentinel: Redis Sentinel is not supported; give the primary's address (host/port or url) or use store: redis-cluster",
		]);
	});

	it("keeps the memory store when only REDIS_HOST / REDIS_PORT name a Redis, with no section in the file", () => {
		const yaml = SEED_APPLICATION_YML.replace(/^spring:\n(\s+.*\n)*/m, "");
		expect(yaml).not.toContain("spring:");
		const config = parseConfig(yaml, { REDIS_HOST: "redis.internal" });
		expect(config.store).toBe("memory");
		expect(config.redis.host).toBe("redis.internal");
	});

	it("loads a Spring application.yml with sections it does not use, and lists them", () => {
		const yaml = `${SEED_APPLICATION_YML}
management:
  endpoints:
    web:
      exposure:
        include: health,prometheus
logging:
  pattern:
    console: "%d %msg%n"
`.replace("spring:\n", "spring:\n  application:\n    name: token-rate-limiter\n");
		const config = parseConfig(yaml, {}, "application.yml");
		expect(config.ignoredSettings).toEqual(["management", "spring.application", "logging.pattern"]);
		expect(config.models.has("llama2-7b")).toBe(true);
		expect(parseConfig(SEED_APPLICATION_YML, {}).ignoredSettings).toEqual([]);
	});
});

describe("parseConfig: the port from the environment", () => {
	it("takes SERVER_PORT (as Spring does), else PORT, over server.port", () => {
		expect(parseConfig(SEED_APPLICATION_YML, { SERVER_PORT: "18282" }).server.port).toBe(18282);
		expect(parseConfig(SEED_APPLICATION_YML, { PORT: "18283" }).server.port).toBe(18283);
		expect(
			parseConfig(SEED_APPLICATION_YML, { SERVER_PORT: "18282", PORT: "18283" }).server.port,
		).toBe(18282);
		expect(parseConfig(SEED_APPLICATION_YML, {}).server.port).toBe(8080);
	});

	it("refuses a SERVER_PORT that is not a port, naming the variable", () => {
		expect(() =>
			parseConfig(SEED_APPLICATION_YML, { SERVER_PORT: "tcp://10.0.0.7:80" }, "app.yml"),
		).toThrow(
			'SERVER_PORT (environment): expected a port number (0-65535) for server.port, got "tcp://10.0.0.7:80"',
		);
	});
});

describe("configPathFrom", () => {
	it("takes --config <path>", () => {
		expect(configPathFrom(["--config", "x.yaml"], {})).toBe("x.yaml");
	});

	it("takes --config=<path>", () => {
		expect(configPathFrom(["--config=y.yaml"], {})).toBe("y.yaml");
	});

	it("prefers the flag over TRL_CONFIG", () => {
		expect(configPathFrom(["--port", "1", "--config", "x.yaml"], { TRL_CONFIG: "env.yaml" })).toBe(
			"x.yaml",
		);
	});

	it("falls back to TRL_CONFIG, then config/dev.yaml", () => {
		expect(configPathFrom([], { TRL_CONFIG: "env.yaml" })).toBe("env.yaml");
		expect(configPathFrom(["--config"], { TRL_CONFIG: "env.yaml" })).toBe("env.yaml");
		expect(configPathFrom([], {})).toBe("config/dev.yaml");
	});
});

describe("shipped configuration files", () => {
	const dir = join(REPO_ROOT, "config");
	const files = readdirSync(dir).filter((f) => f.endsWith(".yaml") || f.endsWith(".yml"));

	it("has configuration files to check", () => {
		expect(files).toContain("dev.yaml");
	});

	for (const file of files) {
		it(`config/${file} parses with an empty environment`, async () => {
			const config = await loadConfigFile(join(dir, file), {});
			expect(config.models.size).toBeGreaterThan(0);
			for (const m of config.models.values()) {
				expect(m.upstreamUrls.length).toBeGreaterThan(0);
			}
		});
	}

	it("reports a missing file as a ConfigError naming the path", async () => {
		const path = join(tmpdir(), "trl-does-not-exist.yaml");
		const err = await loadConfigFile(path, {}).then(
			() => undefined,
			(e: unknown) => e,
		);
		expect(err).toBeInstanceOf(ConfigError);
		expect(err instanceof ConfigError ? err.problems : []).toEqual([`file not found: ${path}`]);
	});
});

/** Runs `bun src/main.ts --config <file>` to its end: exit code and stderr. */
async function boot(file: string): Promise<{ code: number; stderr: string }> {
	const proc = Bun.spawn([process.execPath, "src/main.ts", "--config", file], {
		cwd: REPO_ROOT,
		env: { PATH: process.env.PATH ?? "" },
		stdout: "pipe",
		stderr: "pipe",
	});
	const [code, stderr] = await Promise.all([proc.exited, new Response(proc.stderr).text()]);
	return { code, stderr };
}

describe("bun src/main.ts on the command line", () => {
	const main = async (args: string[], env: Record<string, string> = {}) => {
		const proc = Bun.spawn([process.execPath, "src/main.ts", ...args], {
			cwd: REPO_ROOT,
			env: { PATH: process.env.PATH ?? "", ...env },
			stdout: "pipe",
			stderr: "pipe",
		});
		const [code, stdout, stderr] = await Promise.all([
			proc.exited,
			new Response(proc.stdout).text(),
			new Response(proc.stderr).text(),
		]);
		return { code, stdout, stderr };
	};

	it("prints its version with --version", async () => {
		const { code, stdout } = await main(["--version"]);
		expect(code).toBe(0);
		expect(stdout).toBe(`token-rate-limiter ${pkg.version}\n`);
	});

	it("lists its options and environment with --help", async () => {
		const { code, stdout } = await main(["--help"]);
		expect(code).toBe(0);
		for (const word of [
			"--config <file>",
			"--port <n>",
			"--server.port=<n>",
			"TRL_CONFIG",
			"SERVER_PORT, PORT",
			"REDIS_HOST, REDIS_PORT",
		]) {
			expect(stdout).toContain(word);
		}
	});

	it("refuses a --port that is not a port, naming the flag", async () => {
		const { code, stderr } = await main(["--port", "abc"]);
		expect(code).toBe(2);
		expect(stderr).toBe('--port: expected a port number (0-65535), got "abc"\n');
	});

	it("refuses an argument it does not know, in one line", async () => {
		const { code, stdout, stderr } = await main(["--prot", "18282"]);
		expect(code).toBe(2);
		expect(stdout).toBe("");
		expect(stderr).toBe('unknown argument "--prot"; token-rate-limiter --help lists the options\n');
	});

	it("listens on --port, SERVER_PORT or PORT, and says which it was when the port is taken", async () => {
		const taken = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("") });
		const file = join(tmpdir(), `trl-port-${process.pid}.yaml`);
		await Bun.write(
			file,
			`server:\n  host: 127.0.0.1\n${SEED_APPLICATION_YML.replace(/^server:\n(\s+.*\n)*/m, "")}`,
		);
		try {
			for (const [args, env, from] of [
				[["--config", file, "--port", String(taken.port)], {}, "--port"],
				[["--config", file, `--server.port=${taken.port}`], {}, "--port"],
				[["--config", file], { SERVER_PORT: String(taken.port) }, "SERVER_PORT"],
				[["--config", file], { PORT: String(taken.port) }, "PORT"],
			] as const) {
				const { code, stderr } = await main([...args], { ...env });
				expect({ args, code, stderr }).toEqual({
					args,
					code: 2,
					stderr: `cannot listen on 127.0.0.1:${taken.port}: the address is in use (the port from ${from})\n`,
				});
			}
		} finally {
			await taken.stop(true);
			rmSync(file, { force: true });
		}
	});
});

describe("bun src/main.ts with a bad configuration", () => {
	const tmp = mkdtempSync(join(tmpdir(), "trl-config-"));
	afterAll(() => rmSync(tmp, { recursive: true, force: true }));

	it("exits non-zero and prints the problem on stderr", async () => {
		const bad = join(tmp, "bad.yaml");
		await Bun.write(
			bad,
			SEED_APPLICATION_YML.replace("max-tokens-per-minute: 2000", "max-tokens-per-minute: -5"),
		);
		const { code, stderr } = await boot(bad);
		expect(code).not.toBe(0);
		expect(stderr).toContain(`invalid configuration (${bad})`);
		expect(stderr).toContain(
			"token.rate-limit.models.llama2-7b.max-tokens-per-minute: expected a positive integer, got -5",
		);
	});

	it("says the port was the default when the file sets none and it is taken", async () => {
		// 8080 taken here, or by whatever holds it already: either way the gateway cannot have it.
		let holder: ReturnType<typeof Bun.serve> | undefined;
		try {
			holder = Bun.serve({ port: 8080, hostname: "0.0.0.0", fetch: () => new Response("") });
		} catch {
			holder = undefined;
		}
		const file = join(tmp, "no-port.yaml");
		await Bun.write(file, `store: memory\n${SEED_APPLICATION_YML}`);
		try {
			const { code, stderr } = await boot(file);
			expect(code).toBe(2);
			expect(stderr).toBe(
				`cannot listen on 0.0.0.0:8080: the address is in use (the default port 8080, as ${file} sets no server.port; set server.port, SERVER_PORT or --port)\n`,
			);
		} finally {
			await holder?.stop(true);
		}
	});

	it("exits 2 naming server.port when the port is taken, without a stack trace", async () => {
		const taken = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("") });
		const file = join(tmp, "taken-port.yaml");
		await Bun.write(
			file,
			`server:\n  port: ${taken.port}\n  host: 127.0.0.1\n${SEED_APPLICATION_YML.replace(/^server:\n(\s+.*\n)*/m, "")}`,
		);
		try {
			const { code, stderr } = await boot(file);
			expect(code).toBe(2);
			expect(stderr).toBe(
				`cannot listen on 127.0.0.1:${taken.port}: the address is in use (server.host / server.port in ${file})\n`,
			);
		} finally {
			await taken.stop(true);
		}
	});

	it("exits 2 naming the file and the key when a tokenizer file is not a tokenizer, without a stack trace", async () => {
		const garbage = join(tmp, "tokenizer.model");
		await Bun.write(garbage, "hello\n");
		const bad = join(tmp, "bad-tokenizer.yaml");
		await Bun.write(
			bad,
			SEED_APPLICATION_YML.replace(
				"max-tokens-per-minute: 2000",
				`max-tokens-per-minute: 2000\n        tokenizer:\n          kind: tiktoken-ranks\n          path: ${garbage}`,
			),
		);
		const { code, stderr } = await boot(bad);
		expect(code).toBe(2);
		expect(stderr).toStartWith(`invalid configuration (${bad}):`);
		expect(stderr).toContain(
			`token.rate-limit.models.llama2-7b.tokenizer.path: cannot load tiktoken-ranks tokenizer ${garbage}`,
		);
		expect(stderr).not.toContain("    at ");
	});
});
