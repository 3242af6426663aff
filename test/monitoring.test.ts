import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { oneModelConfig, type RunningGateway, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { exportedSeriesNames, promqlMetricNames, promtool } from "./support/promql.ts";

// Runs promtool and starts real servers (mock vLLM, a gateway).
setDefaultTimeout(30_000);

/**
 * The alert rules and the Grafana dashboard in deploy/monitoring, checked by
 * Prometheus's own promtool and against what the gateway really exports.
 */

const DIR = `${import.meta.dir}/../deploy/monitoring`;

interface Rule {
	alert?: string;
	record?: string;
	expr: string;
}
interface RuleFile {
	groups: { name: string; rules: Rule[] }[];
}
interface RuleTest {
	alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[];
}

async function yamlFile(name: string): Promise<unknown> {
	return Bun.YAML.parse(await Bun.file(`${DIR}/${name}`).text());
}

let mock: MockVllm;
let gw: RunningGateway;
let exported: Set<string>;

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"] });
	gw = await startGateway(oneModelConfig(mock.url, {}, "metrics:\n  per-user-labels: true\n"));
	exported = exportedSeriesNames(await (await fetch(`${gw.url}/metrics`)).text());
});

afterAll(async () => {
	await gw.stop();
	await mock.stop();
});

describe("PromQL metric-name extraction", () => {
	it("finds the metrics of an expression and nothing else", () => {
		expect([
			...promqlMetricNames(
				'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{stream="false",x=~"$m"}[5m]))) > 30 and on (model) b_total offset 5m / c:rate5m * 1e3',
			),
		]).toEqual(["a_bucket", "b_total", "c:rate5m"]);
	});
});

describe("alert rules", () => {
	it("pass promtool check rules", async () => {
		const { code, output } = await promtool(["check", "rules", `${DIR}/rules.yaml`]);
		expect(output).toContain("SUCCESS");
		expect(code).toBe(0);
	});

	it("pass their promtool unit tests", async () => {
		const { code, output } = await promtool(["test", "rules", `${DIR}/rules.test.yaml`]);
		expect(output).toContain("SUCCESS");
		expect(code).toBe(0);
	});

	it("include the seed's HighTokenUsageRate alert as the seed wrote it", async () => {
		const file = (await yamlFile("rules.yaml")) as RuleFile;
		const rule = file.groups.flatMap((g) => g.rules).find((r) => r.alert === "HighTokenUsageRate");
		expect(rule).toMatchObject({
			expr: "rate(token_usage_total[5m]) > 100",
			for: "5m",
			labels: { severity: "warning" },
		});
	});

	it("each have a unit test where they fire and one where they stay quiet", async () => {
		const file = (await yamlFile("rules.yaml")) as RuleFile;
		const alerts = file.groups.flatMap((g) => g.rules).flatMap((r) => r.alert ?? []);
		expect(alerts).toEqual(
			expect.arrayContaining([
				"HighTokenUsageRate",
				"TokenRateLimitRejectionsHigh",
				"UpstreamCircuitOpen",
				"ModelUnavailable",
				"TokenLimiterRedisFallback",
				"ModelRequestLatencyHigh",
			]),
		);
		const tests = ((await yamlFile("rules.test.yaml")) as { tests: RuleTest[] }).tests;
		const cases = tests.flatMap((t) => t.alert_rule_test ?? []);
		for (const alert of alerts) {
			const mine = cases.filter((c) => c.alertname === alert);
			expect({ alert, fires: mine.some((c) => c.exp_alerts.length > 0) }).toEqual({
				alert,
				fires: true,
			});
			expect({ alert, quiet: mine.some((c) => c.exp_alerts.length === 0) }).toEqual({
				alert,
				quiet: true,
			});
		}
	});

	it("read only metrics the gateway exports", async () => {
		const file = (await yamlFile("rules.yaml")) as RuleFile;
		for (const rule of file.groups.flatMap((g) => g.rules)) {
			const names = [...promqlMetricNames(rule.expr)];
			expect(names.length).toBeGreaterThan(0);
			for (const name of names)
				expect({ rule: rule.alert, name, exported: exported.has(name) }).toEqual({
					rule: rule.alert,
					name,
					exported: true,
				});
		}
	});

	it("are the same groups in the PrometheusRule for the Prometheus Operator", async () => {
		const plain = (await yamlFile("rules.yaml")) as RuleFile;
		const crd = (await yamlFile("prometheusrule.yaml")) as {
			apiVersion: string;
			kind: string;
			spec: RuleFile;
		};
		expect(crd.apiVersion).toBe("monitoring.coreos.com/v1");
		expect(crd.kind).toBe("PrometheusRule");
		expect(crd.spec).toEqual(plain);
	});
});

interface Panel {
	type: string;
	title: string;
	targets?: { expr: string }[];
	panels?: Panel[];
}

describe("Grafana dashboard", () => {
	async function dashboard() {
		return JSON.parse(await Bun.file(`${DIR}/grafana-dashboard.json`).text()) as {
			uid: string;
			title: string;
			panels: Panel[];
			templating: { list: { name: string; query?: unknown; definition?: string }[] };
		};
	}

	it("parses and has the panels operators look for", async () => {
		const d = await dashboard();
		expect(d.uid).toBe("token-rate-limiter");
		const titles = d.panels.map((p) => p.title);
		for (const t of [
			"Tokens/s by model",
			"Refused by limits, by reason",
			"Request duration",
			"Time to first token",
			"Concurrency vs limit",
			"Prompt estimate error",
			"Redis call latency",
			"Circuit breakers",
		]) {
			expect(titles).toContain(t);
		}
	});

	it("queries only metrics the gateway exports", async () => {
		const d = await dashboard();
		const exprs = d.panels.flatMap((p) =>
			(p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })),
		);
		for (const v of d.templating.list) {
			if (v.definition !== undefined)
				exprs.push({
					panel: `$${v.name}`,
					expr: v.definition.replace(/^label_values\(([^,]+),.*$/, "$1"),
				});
		}
		expect(exprs.length).toBeGreaterThan(20);
		const used = new Set<string>();
		for (const { panel, expr } of exprs) {
			const names = [...promqlMetricNames(expr)];
			expect({ panel, expr, names: names.length > 0 }).toEqual({ panel, expr, names: true });
			for (const name of names) {
				used.add(name);
				expect({ panel, name, exported: exported.has(name) }).toEqual({
					panel,
					name,
					exported: true,
				});
			}
		}
		// The seed's four metrics are all on it.
		for (const seed of [
			"token_usage_total",
			"token_rate_limit_exceeded_total",
			"model_request_duration_seconds_bucket",
			"token_concurrent_requests",
		]) {
			expect(used).toContain(seed);
		}
	});

	it("ships with the rules as a kustomization", async () => {
		const k = (await yamlFile("kustomization.yaml")) as {
			resources: string[];
			configMapGenerator: { files: string[] }[];
		};
		for (const f of [...k.resources, ...k.configMapGenerator.flatMap((g) => g.files)]) {
			expect(await Bun.file(`${DIR}/${f}`).exists()).toBe(true);
		}
	});
});
