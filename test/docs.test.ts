import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { Type } from "@sinclair/typebox";
import {
	configReference,
	configRows,
	defaultReaders,
	END_MARKER,
	NOTES,
	renderConfigTable,
	replaceSection,
	START_MARKER,
} from "../scripts/config-reference.ts";
import { RawConfigSchema } from "../src/config/schema.ts";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { exportedSeriesNames } from "./support/promql.ts";

// Starts a gateway to compare the runbook's metric names with what it exports.
setDefaultTimeout(30_000);

/**
 * docs/operations.md stays true to the code: the configuration reference is
 * regenerated from the schema and compared, and every metric, log line, error
 * code, Redis key, API path, alert and file the page names is checked against
 * the gateway, its sources and the repository.
 */

const ROOT = join(import.meta.dir, "..");
const DOC_PATH = join(ROOT, "docs", "operations.md");
const doc = await Bun.file(DOC_PATH).text();

/** Every TypeScript source of the gateway, concatenated. */
async function sources(): Promise<string> {
	const files = [...new Bun.Glob("src/**/*.ts").scanSync(ROOT)].filter(
		(f) => !f.endsWith(".test.ts"),
	);
	return (await Promise.all(files.map((f) => Bun.file(join(ROOT, f)).text()))).join("\n");
}

describe("configuration reference", () => {
	it("is what the schema and the loader give today (run `bun run docs:config`)", () => {
		expect(replaceSection(doc, configReference())).toBe(doc);
	});

	it("covers the seed's keys and the extensions, with the loader's defaults", () => {
		const table = configReference();
		for (const [key, dflt] of [
			["token.rate-limit.models.<model>.max-tokens-per-minute", ""],
			["token.rate-limit.models.<model>.max-concurrent-requests", ""],
			["vllm.services", "required"],
			["vllm.services.<model>", ""],
			["spring.data.redis.host", "`localhost`"],
			["spring.data.redis.port", "`6379`"],
			["server.port", "`8080`"],
			["store", "`memory`"],
			["redis.failure-policy", "`local`"],
			["redis.timeout-ms", "`100`"],
			["vllm.timeout-ms", "`600000`"],
			["token.rate-limit.models.<model>.burst-factor", "`1`"],
			["token.rate-limit.models.<model>.default-max-tokens", "`256`"],
		] as const) {
			const row = table.split("\n").find((l) => l.startsWith(`| \`${key}\` |`));
			expect({ key, row: row !== undefined }).toEqual({ key, row: true });
			const cells = (row ?? "").split(/(?<!\\)\|/).map((c) => c.trim());
			expect({ key, dflt: cells[3] }).toEqual({ key, dflt });
		}
	});

	it("reads a default for keys that exist, and adds notes only where the schema has no description", () => {
		const rows = configRows(RawConfigSchema);
		const keys = new Set(rows.map((r) => r.key));
		for (const key of Object.keys(defaultReaders()))
			expect({ key, exists: keys.has(key) }).toEqual({ key, exists: true });
		for (const key of Object.keys(NOTES)) {
			const row = rows.find((r) => r.key === key);
			expect({ key, exists: row !== undefined, ownDescription: row?.documented }).toEqual({
				key,
				exists: true,
				ownDescription: false,
			});
		}
	});

	it("walks every form a schema takes: literals, unions, records, lists, optional keys", () => {
		const schema = Type.Object({
			mode: Type.Optional(
				Type.Union([Type.Literal("a"), Type.Literal("b")], { description: "Pick | one." }),
			),
			models: Type.Record(
				Type.String(),
				Type.Object({ limit: Type.Integer({ minimum: 1, maximum: 10 }) }),
			),
			keys: Type.Optional(Type.Array(Type.Object({ id: Type.String({ expected: "an id" }) }))),
			calibration: Type.Optional(
				Type.Union([
					Type.Boolean(),
					Type.Object({ ratio: Type.Optional(Type.Number({ exclusiveMinimum: 0 })) }),
				]),
			),
			nested: Type.Object(
				{ deep: Type.Optional(Type.Boolean()) },
				{ description: "A documented group." },
			),
		});
		const rows = configRows(schema);
		expect(rows.map((r) => [r.key, r.type, r.required])).toEqual([
			["mode", "one of a, b", false],
			["models", "a map", true],
			["models.<model>.limit", "integer (≥ 1, ≤ 10)", true],
			["keys", "a list of an object", false],
			["keys[].id", "an id", true],
			["calibration", "true or false or an object", false],
			["calibration.ratio", "number (> 0)", false],
			["nested", "an object", true],
			["nested.deep", "true or false", false],
		]);
		const table = renderConfigTable(rows, { mode: () => "a", "nested.deep": () => false });
		expect(table).toContain("| `mode` | one of a, b | `a` | Pick \\| one. |");
		expect(table).toContain("| `models.<model>.limit` | integer (≥ 1, ≤ 10) | required |");
		expect(table).toContain("| `nested.deep` | true or false | `false` |");
	});

	it("replaces only the text between its markers", () => {
		const text = `# t\n\n${START_MARKER}\nold\n${END_MARKER}\n\nafter\n`;
		expect(replaceSection(text, "new")).toBe(
			`# t\n\n${START_MARKER}\nnew\n${END_MARKER}\n\nafter\n`,
		);
		expect(() => replaceSection("no markers", "x")).toThrow("markers");
	});
});

/** One gateway for the checks against what is served, with the per-user series the docs name. */
let mock: MockVllm | undefined;
let gw: RunningGateway | undefined;
beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"] });
	gw = await startGateway(oneModelConfig(mock.url, {}, "metrics:\n  per-user-labels: true\n"));
});
afterAll(async () => {
	await gw?.stop();
	await mock?.stop();
});

describe("docs/operations.md", () => {
	it("names only metrics the gateway exports", async () => {
		const exported = exportedSeriesNames(await (await fetch(`${gw?.url}/metrics`)).text());
		const named = new Set(
			[...doc.matchAll(/\b((?:token|model|upstream)_[a-z_]+)(?:\{|\b)/g)].flatMap((m) =>
				m[1] === undefined ? [] : [m[1]],
			),
		);
		// Error codes and config words share the prefixes: only names with a metric's shape count.
		const metrics = [...named].filter((n) =>
			/_(total|seconds|ratio|up|state|requests|limit|count|bucket)$|^token_limit$/.test(n),
		);
		expect(metrics.length).toBeGreaterThanOrEqual(10);
		for (const name of metrics)
			expect({ name, exported: exported.has(name) }).toEqual({ name, exported: true });
	});

	it("quotes log lines the gateway writes", async () => {
		const src = await sources();
		for (const msg of [
			"redis connection error",
			"limit store unavailable",
			"limit store recovered",
			"limit store",
			"gateway listening",
			"upstream replica",
			"request",
			"config reloaded",
			"config reload rejected; the previous configuration stays in force",
			"breaker open",
			"breaker closed",
			"taken out: /health failed",
			"back in: /health passed",
		]) {
			expect({ msg, inDoc: doc.includes(`\`${msg}\``) || doc.includes(`"msg":"${msg}"`) }).toEqual({
				msg,
				inDoc: true,
			});
			expect({ msg, inSource: src.includes(`"${msg}"`) }).toEqual({ msg, inSource: true });
		}
	});

	it("names error codes the gateway answers with", async () => {
		const src = await sources();
		for (const code of [
			"limiter_unavailable",
			"upstream_unavailable",
			"upstream_timeout",
			"upstream_error",
			"upstream_overloaded",
			"rate_limit_exceeded",
			"tokens_exceed_limit",
			"concurrency_limit_exceeded",
		]) {
			expect(doc).toContain(code);
			expect({ code, inSource: src.includes(`"${code}"`) }).toEqual({ code, inSource: true });
		}
	});

	it("lays out Redis keys the way the stores write them", async () => {
		const src = await sources();
		const templates = [...src.matchAll(/[`"](trl:[^`"\s]*)[`"]/g)].flatMap((m) =>
			m[1] === undefined ? [] : [m[1]],
		);
		const patterns = templates.map(
			(t) =>
				new RegExp(
					`^${t
						.split(/\$\{[^}]*\}\}?/)
						.map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
						.join(".+")}$`,
				),
		);
		const section = doc.slice(doc.indexOf("## Redis key layout"), doc.indexOf("## Runbook"));
		const keys = [...section.matchAll(/^\| `(trl:[^`]+)` \|/gm)].flatMap((m) =>
			m[1] === undefined ? [] : [m[1]],
		);
		expect(keys.length).toBeGreaterThanOrEqual(10);
		for (const key of keys) {
			const example = key.replace(/<[^>]+>/g, "x");
			expect({ key, written: patterns.some((p) => p.test(example)) }).toEqual({
				key,
				written: true,
			});
		}
	});

	it("calls only API paths the gateway serves", async () => {
		const spec = JSON.parse(await Bun.file(join(ROOT, "docs", "openapi.json")).text()) as {
			paths: Record<string, unknown>;
		};
		const served = Object.keys(spec.paths).map(
			(p) => new RegExp(`^${p.replace(/\{[^}]+\}/g, "[^/]+")}$`),
		);
		const called = [...doc.matchAll(/localhost:8080(\/[^\s'"`)]*)/g)].flatMap((m) =>
			m[1] === undefined ? [] : [m[1]],
		);
		expect(called.length).toBeGreaterThan(5);
		for (const path of called.map((p) => p.split("?")[0] ?? p)) {
			const known = path === "/" || path === "/swagger" || served.some((r) => r.test(path));
			expect({ path, known }).toEqual({ path, known: true });
		}
	});

	it("names alerts that the rules define", async () => {
		const rules = await Bun.file(join(ROOT, "deploy", "monitoring", "rules.yaml")).text();
		const alerts = new Set([...rules.matchAll(/- alert: (\w+)/g)].map((m) => m[1]));
		const named = [
			...doc.matchAll(/`([A-Z][A-Za-z]+(?:High|Open|Unavailable|Fallback|Slow|Drift))`/g),
		];
		expect(named.length).toBeGreaterThan(4);
		for (const m of named) expect(alerts).toContain(m[1]);
	});

	it("links only to files that exist, and the README links to it", async () => {
		const links = [...doc.matchAll(/\]\(([^)#]+)(?:#[^)]*)?\)/g)].flatMap((m) =>
			m[1] === undefined || /^https?:/.test(m[1]) ? [] : [m[1]],
		);
		expect(links.length).toBeGreaterThan(5);
		for (const link of links) {
			const target = join(dirname(DOC_PATH), link);
			expect({ link, exists: existsSync(target) }).toEqual({ link, exists: true });
		}
		const readme = await Bun.file(join(ROOT, "README.md")).text();
		expect(readme.includes("(docs/operations.md)")).toBe(true);
	});
});

describe("README.md", () => {
	const README = join(ROOT, "README.md");

	it("lists in its API table exactly the routes the gateway serves", async () => {
		const readme = await Bun.file(README).text();
		const table = readme.slice(readme.indexOf("| Methods | Path | What |"));
		const rows = table.slice(0, table.indexOf("\n\n")).split("\n").slice(2);
		const listed = new Set<string>();
		for (const row of rows) {
			const [, methods = "", path = ""] = row.split("|").map((c) => c.trim().replaceAll("`", ""));
			for (const method of methods.split(",")) listed.add(`${method.trim()} ${path}`);
		}
		const doc = (await (await fetch(`${gw?.url}/swagger/json`)).json()) as {
			paths: Record<string, Record<string, unknown>>;
		};
		const served = new Set(["GET /swagger", "GET /swagger/json"]);
		for (const [path, ops] of Object.entries(doc.paths)) {
			for (const method of Object.keys(ops)) served.add(`${method.toUpperCase()} ${path}`);
		}
		expect([...listed].sort()).toEqual([...served].sort());
	});

	it("names in its metrics table every metric the gateway exports", async () => {
		const readme = await Bun.file(README).text();
		const exported = exportedSeriesNames(await (await fetch(`${gw?.url}/metrics`)).text());
		const families = new Set(
			[...exported]
				.filter((n) => /^(token|model|upstream|gateway)_/.test(n))
				.map((n) => n.replace(/_(bucket|sum|count)$/, "")),
		);
		expect(families.size).toBeGreaterThan(15);
		for (const name of families) {
			expect({ name, inReadme: readme.includes(`\`${name}\``) }).toEqual({ name, inReadme: true });
		}
	});
});
