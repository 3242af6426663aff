import { beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { Deployment, type IDeployment } from "kubernetes-models/apps/v1/Deployment";
import { type IStatefulSet, StatefulSet } from "kubernetes-models/apps/v1/StatefulSet";
import {
	HorizontalPodAutoscaler,
	type IHorizontalPodAutoscaler,
} from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler";
import {
	type IPodDisruptionBudget,
	PodDisruptionBudget,
} from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { ConfigMap, type IConfigMap } from "kubernetes-models/v1/ConfigMap";
import type { IContainer } from "kubernetes-models/v1/Container";
import { Namespace } from "kubernetes-models/v1/Namespace";
import type { IPodTemplateSpec } from "kubernetes-models/v1/PodTemplateSpec";
import type { IProbe } from "kubernetes-models/v1/Probe";
import { type ISecret, Secret } from "kubernetes-models/v1/Secret";
import { type IService, Service } from "kubernetes-models/v1/Service";
import pkg from "../package.json" with { type: "json" };
import { createApp } from "../src/app.ts";
import { buildGateway } from "../src/bootstrap.ts";
import { configPathFrom, parseConfig } from "../src/config/loader.ts";
import type { GatewayConfig } from "../src/config/schema.ts";
import { Logger } from "../src/log.ts";
import { startRedis } from "./support/redis.ts";
import { run } from "./support/run.ts";

// Renders kustomizations with kubectl and boots gateways in-process.
setDefaultTimeout(30_000);

/**
 * The Kubernetes manifests in k8s/ (base, dev and prod overlays), rendered by
 * `kubectl kustomize` as an operator's `kubectl apply -k` would, validated
 * against the Kubernetes API schemas, and cross-checked against the gateway
 * itself (its config loader, health and metrics endpoints) and the Dockerfile.
 */

const ROOT = `${import.meta.dir}/..`;
const NAMESPACE = "model-serving";
const GATEWAY = "token-rate-limiter";
const SECRET = "token-rate-limiter-secrets";
/** The dev overlay's example ops key, as its comment gives it. */
const DEV_EXAMPLE_KEY = "trl_ops_dev-example-key-not-for-production";
/** What an operator puts in their own Secret (base and prod ship none). */
const OPERATOR_SECRET: Record<string, string> = {
	OPS_API_KEY_SHA256: `sha256:${sha256("an operator's key")}`,
	JWT_SECRET: "an-operator-jwt-secret-of-32-chars",
	REDIS_PASSWORD: "an-operator-redis-password",
};

interface Target {
	readonly name: string;
	readonly dir: string;
	/** Redis StatefulSet and headless Service in the output. */
	readonly inClusterRedis: boolean;
	/** Ships the example Secret. */
	readonly exampleSecret: boolean;
	readonly minReplicas: number;
	readonly maxReplicas: number;
	/** HPA also scales on the gateway's token_concurrent_requests. */
	readonly customMetric: boolean;
}

const TARGETS: readonly Target[] = [
	{
		name: "base",
		dir: "k8s/base",
		inClusterRedis: true,
		exampleSecret: false,
		minReplicas: 3,
		maxReplicas: 10,
		customMetric: false,
	},
	{
		name: "k8s/ itself (kubectl apply -k k8s/)",
		dir: "k8s",
		inClusterRedis: true,
		exampleSecret: true,
		minReplicas: 3,
		maxReplicas: 10,
		customMetric: false,
	},
	{
		name: "dev overlay",
		dir: "k8s/overlays/dev",
		inClusterRedis: true,
		exampleSecret: true,
		minReplicas: 1,
		maxReplicas: 2,
		customMetric: false,
	},
	{
		name: "prod overlay",
		dir: "k8s/overlays/prod",
		inClusterRedis: false,
		exampleSecret: false,
		minReplicas: 3,
		maxReplicas: 10,
		customMetric: true,
	},
];

// --- rendering and schema validation ---------------------------------------------------------

interface K8sObject {
	apiVersion: string;
	kind: string;
	metadata: {
		name: string;
		namespace?: string;
		labels?: Record<string, string>;
		annotations?: Record<string, string>;
	};
	spec?: unknown;
}

function isRecord(value: unknown): value is Record<string, unknown> {
	return value !== null && typeof value === "object" && !Array.isArray(value);
}

function isK8sObject(value: unknown): value is K8sObject {
	return (
		isRecord(value) &&
		typeof value.apiVersion === "string" &&
		typeof value.kind === "string" &&
		isRecord(value.metadata) &&
		typeof value.metadata.name === "string"
	);
}

async function kustomize(dir: string): Promise<K8sObject[]> {
	const { code, stdout: out, stderr: err } = await run(["kubectl", "kustomize", `${ROOT}/${dir}`]);
	if (code !== 0) throw new Error(`kubectl kustomize ${dir} failed (${code}): ${err}`);
	// Bun.YAML.parse returns an array for a multi-document stream.
	const parsed: unknown = Bun.YAML.parse(out);
	const docs = Array.isArray(parsed) ? parsed : [parsed];
	return docs
		.filter((d) => d !== null)
		.map((d, i) => {
			if (!isK8sObject(d)) throw new Error(`document ${i} of ${dir} is not a Kubernetes object`);
			return d;
		});
}

/** A kubernetes-models class: validate() throws on what the API server's schema rejects. */
type Validatable = new (data: never) => { validate(): void };

const SCHEMAS: Record<string, Validatable> = {
	"v1/Namespace": Namespace,
	"v1/ConfigMap": ConfigMap,
	"v1/Secret": Secret,
	"v1/Service": Service,
	"apps/v1/Deployment": Deployment,
	"apps/v1/StatefulSet": StatefulSet,
	"autoscaling/v2/HorizontalPodAutoscaler": HorizontalPodAutoscaler,
	"policy/v1/PodDisruptionBudget": PodDisruptionBudget,
};

/** Prometheus Operator CRDs have no model here: their shape is checked by hand. */
const CRD_SHAPES: Record<string, (spec: unknown) => string[]> = {
	"monitoring.coreos.com/v1/ServiceMonitor": (spec) => {
		const problems: string[] = [];
		if (!isRecord(spec) || !isRecord(spec.selector)) return ["spec.selector is required"];
		const endpoints = spec.endpoints;
		if (!Array.isArray(endpoints) || endpoints.length === 0)
			problems.push("spec.endpoints is empty");
		for (const e of Array.isArray(endpoints) ? endpoints : []) {
			if (!isRecord(e) || typeof e.port !== "string") problems.push("endpoint without a port name");
			else if (e.path !== undefined && typeof e.path !== "string") problems.push("bad path");
		}
		return problems;
	},
	"monitoring.coreos.com/v1/PrometheusRule": (spec) => {
		if (!isRecord(spec) || !Array.isArray(spec.groups) || spec.groups.length === 0) {
			return ["spec.groups is empty"];
		}
		const problems: string[] = [];
		for (const g of spec.groups) {
			if (!isRecord(g) || typeof g.name !== "string" || !Array.isArray(g.rules)) {
				problems.push("a group without name or rules");
				continue;
			}
			for (const r of g.rules) {
				const named = isRecord(r) && (typeof r.alert === "string" || typeof r.record === "string");
				if (!named || typeof r.expr !== "string") problems.push(`${g.name}: a rule without expr`);
			}
		}
		return problems;
	},
};

function schemaProblems(obj: K8sObject): string[] {
	const key = `${obj.apiVersion}/${obj.kind}`;
	const Model = SCHEMAS[key];
	if (Model !== undefined) {
		try {
			// The rendered object is untyped YAML; validate() is what checks it.
			new Model(obj as never).validate();
			return [];
		} catch (err) {
			return [`${key} ${obj.metadata.name}: ${err instanceof Error ? err.message : String(err)}`];
		}
	}
	const shape = CRD_SHAPES[key];
	if (shape === undefined) return [`${key} ${obj.metadata.name}: no schema to check it against`];
	return shape(obj.spec).map((p) => `${key} ${obj.metadata.name}: ${p}`);
}

// --- lookups -----------------------------------------------------------------------------------

function must<T>(value: T | undefined | null, what: string): T {
	if (value === undefined || value === null) throw new Error(`missing: ${what}`);
	return value;
}

type Named = { metadata?: { name?: string } };

function all<T extends Named>(objects: readonly unknown[], is: (v: unknown) => v is T): T[] {
	return objects.filter(is);
}

function byName<T extends Named>(
	objects: readonly unknown[],
	is: (v: unknown) => v is T,
	name: string,
): T | undefined {
	return all(objects, is).find((o) => o.metadata?.name === name);
}

function selects(selector: Record<string, string> | undefined, labels: Record<string, string>) {
	const entries = Object.entries(selector ?? {});
	return entries.length > 0 && entries.every(([k, v]) => labels[k] === v);
}

type Workload = IDeployment | IStatefulSet;

function podTemplate(w: Workload): IPodTemplateSpec {
	return must(w.spec?.template, `${w.metadata?.name} pod template`);
}

/** The Deployments and StatefulSets whose pods a Service selects. */
function workloadsOf(objects: readonly unknown[], service: IService): Workload[] {
	const workloads: Workload[] = [...all(objects, Deployment.is), ...all(objects, StatefulSet.is)];
	return workloads.filter((w) =>
		selects(service.spec?.selector, podTemplate(w).metadata?.labels ?? {}),
	);
}

/** The container port a Service port or probe port (a name or a number) lands on. */
function containerPortOf(container: IContainer, port: number | string | undefined) {
	return container.ports?.find(
		(p) => (typeof port === "string" ? p.name : p.containerPort) === port,
	);
}

function gatewayDeployment(objects: readonly unknown[]): IDeployment {
	return must(byName(objects, Deployment.is, GATEWAY), `Deployment ${GATEWAY}`);
}

function gatewayContainer(objects: readonly unknown[]): IContainer {
	const spec = must(podTemplate(gatewayDeployment(objects)).spec, "gateway pod spec");
	return must(
		spec.containers.find((c) => c.name === "gateway"),
		"container gateway",
	);
}

interface MonitorSpec {
	matchLabels: Record<string, string>;
	endpoints: { port: string; path?: string }[];
}

/** The one ServiceMonitor's selector and endpoints (its shape is checked by CRD_SHAPES). */
function serviceMonitor(objects: readonly K8sObject[]): MonitorSpec {
	const monitors = objects.filter((o) => o.kind === "ServiceMonitor");
	expect(monitors.length).toBe(1);
	const spec = must(monitors[0], "ServiceMonitor").spec;
	const out: MonitorSpec = { matchLabels: {}, endpoints: [] };
	if (!isRecord(spec)) return out;
	const matchLabels = isRecord(spec.selector) ? spec.selector.matchLabels : undefined;
	for (const [k, v] of Object.entries(isRecord(matchLabels) ? matchLabels : {})) {
		if (typeof v === "string") out.matchLabels[k] = v;
	}
	for (const e of Array.isArray(spec.endpoints) ? spec.endpoints : []) {
		if (!isRecord(e) || typeof e.port !== "string") continue;
		out.endpoints.push(
			typeof e.path === "string" ? { port: e.port, path: e.path } : { port: e.port },
		);
	}
	return out;
}

function sha256(text: string): string {
	return createHash("sha256").update(text).digest("hex");
}

/** A Secret's value for a key, from stringData or base64 data. */
function secretValue(secret: ISecret, key: string): string | undefined {
	const plain = secret.stringData?.[key];
	if (plain !== undefined) return plain;
	const encoded = secret.data?.[key];
	return encoded === undefined ? undefined : Buffer.from(encoded, "base64").toString("utf8");
}

/**
 * The gateway container's environment as the kubelet would build it: plain
 * values, and secretKeyRefs from the Secret in the output or else from the
 * operator's Secret (OPERATOR_SECRET). A required reference that nothing can
 * fill is reported.
 */
function containerEnv(objects: readonly unknown[], container: IContainer) {
	const env: Record<string, string> = {};
	const unresolved: string[] = [];
	for (const e of container.env ?? []) {
		if (e.value !== undefined) {
			env[e.name] = e.value;
			continue;
		}
		const ref = e.valueFrom?.secretKeyRef;
		if (ref === undefined) {
			unresolved.push(`${e.name}: only value and secretKeyRef are expected`);
			continue;
		}
		const shipped = byName(objects, Secret.is, ref.name ?? "");
		const value = shipped === undefined ? OPERATOR_SECRET[ref.key] : secretValue(shipped, ref.key);
		if (value !== undefined) env[e.name] = value;
		else if (ref.optional !== true) unresolved.push(`${e.name}: ${ref.name}/${ref.key}`);
	}
	if ((container.envFrom ?? []).length > 0) unresolved.push("envFrom: list each variable instead");
	return { env, unresolved };
}

interface Rendered {
	readonly objects: K8sObject[];
	readonly configPath: string;
	readonly yaml: string;
	readonly config: GatewayConfig;
}

/** Renders a target and loads the gateway's configuration the way the pod would. */
async function render(target: Target): Promise<Rendered> {
	const objects = await kustomize(target.dir);
	const container = gatewayContainer(objects);
	const configPath = configPathFrom(container.args ?? [], {});
	const mount = must(
		container.volumeMounts?.find((m) => m.mountPath === dirname(configPath)),
		`a volume mounted at ${dirname(configPath)}`,
	);
	// A subPath mount would never see ConfigMap updates (no hot reload).
	if (mount.subPath !== undefined) throw new Error(`${mount.name} is mounted with a subPath`);
	const volume = must(
		podTemplate(gatewayDeployment(objects)).spec?.volumes?.find((v) => v.name === mount.name),
		`volume ${mount.name}`,
	);
	const configMapName = must(volume.configMap?.name, `volume ${mount.name} from a ConfigMap`);
	const configMap: IConfigMap = must(
		byName(objects, ConfigMap.is, configMapName),
		`ConfigMap ${configMapName}`,
	);
	const yaml = must(
		configMap.data?.[basename(configPath)],
		`${basename(configPath)} in the ConfigMap`,
	);
	const { env, unresolved } = containerEnv(objects, container);
	if (unresolved.length > 0) {
		throw new Error(`${target.dir}: gateway environment unresolved: ${unresolved.join(", ")}`);
	}
	const config = parseConfig(yaml, env, `${target.dir} ConfigMap ${configMapName}`);
	return { objects, configPath, yaml, config };
}

/** Runs `use` against the gateway of a configuration, in-process (memory store, no upstream probes). */
async function withGateway<T>(
	config: GatewayConfig,
	use: (get: (path: string, headers?: Record<string, string>) => Promise<Response>) => Promise<T>,
): Promise<T> {
	const gateway = await buildGateway(
		{ ...config, store: "memory", healthCheckMs: 0 },
		{ logger: new Logger("silent") },
	);
	const app = createApp(gateway);
	try {
		return await use((path, headers = {}) =>
			app.handle(new Request(`http://localhost${path}`, { headers })),
		);
	} finally {
		for (const pool of gateway.pools.values()) pool.stopHealthChecks();
		gateway.deps.watcher.stop();
		await gateway.deps.limiter.store.close();
	}
}

function httpProbes(container: IContainer): [string, IProbe][] {
	const probes: [string, IProbe | undefined][] = [
		["startupProbe", container.startupProbe],
		["readinessProbe", container.readinessProbe],
		["livenessProbe", container.livenessProbe],
	];
	return probes.filter((p): p is [string, IProbe] => p[1] !== undefined);
}

// --- the checks, per rendered target --------------------------------------------------------

for (const target of TARGETS) {
	describe(`k8s ${target.name}`, () => {
		let r: Rendered;

		beforeAll(async () => {
			r = await render(target);
		});

		it("renders objects the Kubernetes API schemas accept", () => {
			expect(r.objects.length).toBeGreaterThan(5);
			expect(r.objects.flatMap(schemaProblems)).toEqual([]);
			const ids = r.objects.map((o) => `${o.kind}/${o.metadata.name}`);
			expect(ids.length).toBe(new Set(ids).size);
		});

		it(`puts everything in the namespace ${NAMESPACE}, which it creates`, () => {
			const namespaces = r.objects.filter((o) => o.kind === "Namespace");
			expect(namespaces.map((n) => n.metadata.name)).toEqual([NAMESPACE]);
			const elsewhere = r.objects
				.filter((o) => o.kind !== "Namespace" && o.metadata.namespace !== NAMESPACE)
				.map((o) => `${o.kind}/${o.metadata.name}`);
			expect(elsewhere).toEqual([]);
		});

		it("runs the gateway image of this version with the mounted configuration", () => {
			const container = gatewayContainer(r.objects);
			const image = must(container.image, "gateway image");
			expect(image.endsWith(`${GATEWAY}:${pkg.version}`)).toBe(true);
			expect(r.configPath).toBe("/etc/token-rate-limiter/application.yaml");
		});

		it("serves the ConfigMap's configuration with shared limits in Redis", () => {
			expect(r.config.store).toBe("redis");
			expect(r.config.server.host).toBe("0.0.0.0");
			expect(r.config.models.size).toBeGreaterThan(0);
			expect(r.config.auth.modes.has("none")).toBe(false);
		});

		it("takes from the Secret only variables that application.yaml uses", () => {
			const placeholders = new Set(
				[...r.yaml.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_.-]*)/g)].map((m) => m[1]),
			);
			const secretVars = (gatewayContainer(r.objects).env ?? [])
				.filter((e) => e.valueFrom?.secretKeyRef !== undefined)
				.map((e) => e.name);
			for (const name of secretVars) expect(placeholders).toContain(name);
			// REDIS_HOST / REDIS_PORT are also read directly by the loader.
			expect(placeholders).toContain("REDIS_HOST");
			expect(placeholders).toContain("REDIS_PORT");
		});

		it("listens on the container port named http, which the Service targets", () => {
			const container = gatewayContainer(r.objects);
			const http = must(containerPortOf(container, "http"), "container port http");
			expect(http.containerPort).toBe(r.config.server.port);
			const service = must(byName(r.objects, Service.is, GATEWAY), `Service ${GATEWAY}`);
			expect(service.spec?.type ?? "ClusterIP").toBe("ClusterIP");
			const workloads = workloadsOf(r.objects, service).map((w) => w.metadata?.name);
			expect(workloads).toEqual([GATEWAY]);
			for (const port of must(service.spec?.ports, "Service ports")) {
				expect(containerPortOf(container, port.targetPort ?? port.port)).toBeDefined();
			}
		});

		it("has probes, scrape path and Docker HEALTHCHECK on paths the gateway answers 200", async () => {
			const container = gatewayContainer(r.objects);
			const probes = httpProbes(container);
			expect(probes.map(([kind]) => kind).sort()).toEqual([
				"livenessProbe",
				"readinessProbe",
				"startupProbe",
			]);
			const paths = new Map<string, string>();
			for (const [kind, probe] of probes) {
				const get = must(probe.httpGet, `${kind}.httpGet`);
				expect(containerPortOf(container, get.port)).toBeDefined();
				paths.set(kind, must(get.path, `${kind} path`));
			}
			expect(paths.get("readinessProbe")).toBe("/health/ready");
			expect(paths.get("livenessProbe")).toBe("/health/live");
			const annotations = podTemplate(gatewayDeployment(r.objects)).metadata?.annotations ?? {};
			paths.set("prometheus.io/path", must(annotations["prometheus.io/path"], "scrape path"));
			expect(Number(annotations["prometheus.io/port"])).toBe(r.config.server.port);
			for (const e of serviceMonitor(r.objects).endpoints) {
				paths.set(`ServiceMonitor port ${e.port}`, e.path ?? "/metrics");
			}
			const script = await Bun.file(`${ROOT}/docker/healthcheck.sh`).text();
			paths.set("HEALTHCHECK", must(/GET (\S+) HTTP/.exec(script)?.[1], "healthcheck path"));

			const statuses = await withGateway(r.config, async (get) => {
				const out: Record<string, number> = {};
				for (const [where, path] of paths) out[`${where} ${path}`] = (await get(path)).status;
				return out;
			});
			for (const [where, status] of Object.entries(statuses)) {
				expect({ where, status }).toEqual({ where, status: 200 });
			}
		});

		it("gives the pod longer than preStop plus the gateway's drain to stop", () => {
			const spec = must(podTemplate(gatewayDeployment(r.objects)).spec, "pod spec");
			const sleep = must(
				gatewayContainer(r.objects).lifecycle?.preStop?.sleep?.seconds,
				"preStop sleep",
			);
			expect(sleep).toBeGreaterThan(0);
			const grace = must(spec.terminationGracePeriodSeconds, "terminationGracePeriodSeconds");
			expect(grace).toBeGreaterThan(sleep + r.config.server.drainMs / 1000);
		});

		it("runs the gateway as non-root on a read-only root filesystem", () => {
			const spec = must(podTemplate(gatewayDeployment(r.objects)).spec, "pod spec");
			expect(spec.securityContext).toMatchObject({
				runAsNonRoot: true,
				seccompProfile: { type: "RuntimeDefault" },
			});
			expect(spec.securityContext?.runAsUser ?? 0).toBeGreaterThan(0);
			expect(spec.automountServiceAccountToken).toBe(false);
			// A Service named redis would otherwise inject REDIS_PORT=tcp://...
			expect(spec.enableServiceLinks).toBe(false);
			const container = gatewayContainer(r.objects);
			expect(container.securityContext).toMatchObject({
				runAsNonRoot: true,
				readOnlyRootFilesystem: true,
				allowPrivilegeEscalation: false,
				capabilities: { drop: ["ALL"] },
			});
			expect(container.securityContext?.capabilities?.add ?? []).toEqual([]);
			expect(container.securityContext?.privileged ?? false).toBe(false);
			expect(container.resources?.requests?.cpu).toBeDefined();
			expect(container.resources?.limits?.memory).toBeDefined();
			expect(spec.topologySpreadConstraints?.map((c) => c.topologyKey).sort()).toEqual([
				"kubernetes.io/hostname",
				"topology.kubernetes.io/zone",
			]);
		});

		it(`scales the Deployment with an HPA from ${target.minReplicas} to ${target.maxReplicas}`, async () => {
			const hpas: IHorizontalPodAutoscaler[] = all(r.objects, HorizontalPodAutoscaler.is);
			expect(hpas.length).toBe(1);
			const hpa = must(hpas[0], "HPA");
			expect(hpa.spec?.scaleTargetRef).toEqual({
				apiVersion: "apps/v1",
				kind: "Deployment",
				name: GATEWAY,
			});
			// The HPA owns the replica count; `kubectl apply` must not reset it.
			expect(gatewayDeployment(r.objects).spec?.replicas).toBeUndefined();
			expect(hpa.spec?.minReplicas).toBe(target.minReplicas);
			expect(hpa.spec?.maxReplicas).toBe(target.maxReplicas);
			const metrics = hpa.spec?.metrics ?? [];
			expect(metrics.find((m) => m.type === "Resource")?.resource).toEqual({
				name: "cpu",
				target: { type: "Utilization", averageUtilization: 70 },
			});
			const custom = metrics.filter((m) => m.type === "Pods").map((m) => m.pods?.metric.name);
			expect(custom).toEqual(target.customMetric ? ["token_concurrent_requests"] : []);
			if (target.customMetric) {
				const text = await withGateway(r.config, async (get) => (await get("/metrics")).text());
				expect(text).toContain("# TYPE token_concurrent_requests gauge");
			}
		});

		it("keeps a PodDisruptionBudget over the gateway pods that never blocks a drain", () => {
			const pdbs: IPodDisruptionBudget[] = all(r.objects, PodDisruptionBudget.is);
			expect(pdbs.length).toBe(1);
			const pdb = must(pdbs[0], "PDB");
			const labels = podTemplate(gatewayDeployment(r.objects)).metadata?.labels ?? {};
			expect(selects(pdb.spec?.selector?.matchLabels, labels)).toBe(true);
			const minAvailable = pdb.spec?.minAvailable;
			if (typeof minAvailable === "number") expect(minAvailable).toBeLessThan(target.minReplicas);
			else expect(pdb.spec?.maxUnavailable).toBe(1);
		});

		it("scrapes the gateway Service's http port with a ServiceMonitor", () => {
			const monitor = serviceMonitor(r.objects);
			const selected = all(r.objects, Service.is).filter((s) =>
				selects(monitor.matchLabels, s.metadata?.labels ?? {}),
			);
			expect(selected.map((s) => s.metadata?.name)).toEqual([GATEWAY]);
			const portNames = (must(selected[0], "Service").spec?.ports ?? []).map((p) => p.name);
			expect(monitor.endpoints.length).toBeGreaterThan(0);
			for (const e of monitor.endpoints) expect(portNames).toContain(e.port);
			expect(portNames).toContain("http");
		});

		it("includes the alert rules and the Grafana dashboard of deploy/monitoring", () => {
			expect(r.objects.some((o) => o.kind === "PrometheusRule")).toBe(true);
			const dashboard = must(
				all(r.objects, ConfigMap.is).find(
					(c) => c.metadata?.labels?.grafana_dashboard !== undefined,
				),
				"dashboard ConfigMap",
			);
			const json = must(dashboard.data?.["grafana-dashboard.json"], "dashboard JSON");
			expect(JSON.parse(json)).toHaveProperty("panels");
		});

		it("sends every model to a vLLM Service in the output that serves it", () => {
			for (const model of r.config.models.values()) {
				for (const raw of model.upstreamUrls) {
					const url = new URL(raw);
					const [host = "", ns] = url.hostname.split(".");
					if (ns !== undefined) expect(ns).toBe(NAMESPACE);
					const port = url.port === "" ? 80 : Number(url.port);
					const service = must(byName(r.objects, Service.is, host), `Service ${host} for ${raw}`);
					const servicePort = must(
						service.spec?.ports?.find((p) => p.port === port),
						`port ${port} on Service ${host}`,
					);
					const workloads = workloadsOf(r.objects, service);
					expect(workloads.length).toBe(1);
					const pod = must(podTemplate(must(workloads[0], "vLLM")).spec, "vLLM pod spec");
					const vllm = must(
						pod.containers.find((c) =>
							containerPortOf(c, servicePort.targetPort ?? servicePort.port),
						),
						`a container behind ${host}:${port}`,
					);
					const args = vllm.args ?? [];
					expect(args[args.indexOf("--served-model-name") + 1]).toBe(model.upstreamModel);
					expect(vllm.readinessProbe?.httpGet?.path).toBe("/health");
					expect(vllm.resources?.limits?.["nvidia.com/gpu"]).toBeDefined();
				}
			}
		});

		if (target.inClusterRedis) {
			it("runs Redis in the cluster as a non-root StatefulSet behind a headless Service", () => {
				const statefulSet = must(byName(r.objects, StatefulSet.is, "redis"), "StatefulSet redis");
				const service = must(
					byName(r.objects, Service.is, r.config.redis.host),
					`Service ${r.config.redis.host}`,
				);
				expect(service.spec?.clusterIP).toBe("None");
				expect(statefulSet.spec?.serviceName).toBe(service.metadata?.name);
				expect(workloadsOf(r.objects, service)).toEqual([statefulSet]);
				const port = must(
					service.spec?.ports?.find((p) => p.port === r.config.redis.port),
					`port ${r.config.redis.port}`,
				);
				const pod = must(podTemplate(statefulSet).spec, "redis pod spec");
				const redis = must(pod.containers[0], "redis container");
				expect(containerPortOf(redis, port.targetPort ?? port.port)).toBeDefined();
				expect(pod.securityContext?.runAsNonRoot).toBe(true);
				expect(redis.securityContext).toMatchObject({
					readOnlyRootFilesystem: true,
					allowPrivilegeEscalation: false,
					capabilities: { drop: ["ALL"] },
				});
			});
		} else {
			it("uses a managed Redis over TLS with a password, and no in-cluster Redis", () => {
				expect(all(r.objects, StatefulSet.is)).toEqual([]);
				expect(byName(r.objects, Service.is, "redis")).toBeUndefined();
				expect(byName(r.objects, Service.is, r.config.redis.host)).toBeUndefined();
				expect(r.config.redis.host).toContain(".");
				expect(r.config.redis.tls).toBe(true);
				expect(r.config.redis.password).toBe(OPERATOR_SECRET.REDIS_PASSWORD);
				const ref = gatewayContainer(r.objects).env?.find((e) => e.name === "REDIS_PASSWORD");
				expect(ref?.valueFrom?.secretKeyRef?.optional).toBe(false);
			});
		}

		if (target.exampleSecret) {
			it("ships an example Secret, marked as one, that lets the example key in", async () => {
				const secret = must(byName(r.objects, Secret.is, SECRET), `Secret ${SECRET}`);
				expect(secret.metadata?.annotations?.["kubernetes.io/description"]).toContain("EXAMPLE");
				expect(secretValue(secret, "OPS_API_KEY_SHA256")).toBe(`sha256:${sha256(DEV_EXAMPLE_KEY)}`);
				const statuses = await withGateway(r.config, async (get) => [
					(await get("/v1/models")).status,
					(await get("/v1/models", { authorization: `Bearer ${DEV_EXAMPLE_KEY}` })).status,
				]);
				expect(statuses).toEqual([401, 200]);
			});
		} else {
			it("ships no Secret: the operator creates it with the keys the README names", async () => {
				expect(all(r.objects, Secret.is)).toEqual([]);
				const readme = await Bun.file(`${ROOT}/README.md`).text();
				// The README's command, from `create secret generic <name>` to the end of its code block.
				const command = must(
					new RegExp(`create secret generic ${SECRET}[^]*?\`\`\``).exec(readme)?.[0],
					`README: kubectl create secret generic ${SECRET}`,
				);
				const required = (gatewayContainer(r.objects).env ?? [])
					.map((e) => e.valueFrom?.secretKeyRef)
					.filter((ref) => ref !== undefined && ref.optional !== true)
					.map((ref) => ref?.key);
				expect(required.length).toBeGreaterThan(0);
				for (const key of required) expect(command).toContain(`--from-literal=${key}=`);
			});
		}
	});
}

describe("the shipped Redis (k8s and Compose)", () => {
	it("caps its memory and never evicts limit state: a real redis-server with those arguments says so", async () => {
		const objects = await kustomize("k8s/base");
		const redisSet = must(
			all(objects, StatefulSet.is).find((w) => w.metadata?.name === "redis"),
			"redis StatefulSet",
		);
		const container = must(podTemplate(redisSet).spec?.containers[0], "redis container");
		const composeRedis = (
			Bun.YAML.parse(await Bun.file(`${ROOT}/docker-compose.yml`).text()) as {
				services: Record<string, { command?: string[] }>;
			}
		).services.redis;
		const composeArgs = (composeRedis?.command ?? []).slice(1);
		expect(composeArgs).toEqual(container.args ?? []);
		const server = await startRedis({ args: container.args ?? [] });
		try {
			expect(await server.cli("CONFIG", "GET", "maxmemory-policy")).toBe(
				"maxmemory-policy\nnoeviction",
			);
			expect(await server.cli("CONFIG", "GET", "maxmemory")).toBe(
				`maxmemory\n${200 * 1024 * 1024}`,
			);
		} finally {
			await server.stop();
		}
		// Below the container's memory limit, with room for Redis's own overhead.
		expect(container.resources?.limits?.memory).toBe("256Mi");
	});
});

describe("the original gateway's kubectl commands", () => {
	it("find the pods by the seed's app labels (app=token-rate-limiter, app=redis, app=vllm-llama2-7b)", async () => {
		const objects = await kustomize("k8s/base");
		const workloads: Workload[] = [...all(objects, Deployment.is), ...all(objects, StatefulSet.is)];
		const apps = workloads.map((w) => podTemplate(w).metadata?.labels?.app).sort();
		expect(apps).toEqual(["redis", "token-rate-limiter", "vllm-llama2-7b"]);
	});
});

describe("Dockerfile", () => {
	it("agrees with the manifests on port, user, config path and base image", async () => {
		const dockerfile = await Bun.file(`${ROOT}/Dockerfile`).text();
		const objects = await kustomize("k8s/base");
		const container = gatewayContainer(objects);
		const pod = must(podTemplate(gatewayDeployment(objects)).spec, "pod spec");
		// The Bun that CI tests with.
		const ci = await Bun.file(`${ROOT}/.ci/run`).text();
		const bunVersion = must(/^BUN_VERSION=(\S+)$/m.exec(ci)?.[1], "BUN_VERSION in .ci/run");
		expect(dockerfile).toContain(`ARG BUN_VERSION=${bunVersion}`);
		expect(dockerfile).toMatch(/^FROM oven\/bun:\$\{BUN_VERSION\} AS build$/m);
		expect(dockerfile).toContain("bun install --frozen-lockfile --production");
		expect(dockerfile).toContain("RUN bun run build");
		expect(dockerfile).toContain(
			`EXPOSE ${must(containerPortOf(container, "http"), "http").containerPort}`,
		);
		expect(dockerfile).toContain(
			`USER ${pod.securityContext?.runAsUser}:${pod.securityContext?.runAsGroup}`,
		);
		expect(dockerfile).toContain(`ENV TRL_CONFIG=${configPathFrom(container.args ?? [], {})}`);
		// The script whose path the probe test checks is the one the image runs.
		expect(dockerfile).toContain(
			"COPY --chmod=0555 docker/healthcheck.sh /usr/local/bin/healthcheck",
		);
		expect(dockerfile).toMatch(/^HEALTHCHECK .*\n\s*CMD \["\/usr\/local\/bin\/healthcheck"\]$/m);
	});

	it("copies in every file the gateway embeds from outside src/ (the WASM counter, the ranks)", async () => {
		const dockerfile = await Bun.file(`${ROOT}/Dockerfile`).text();
		const ignored = (await Bun.file(`${ROOT}/.dockerignore`).text())
			.split("\n")
			.map((l) => l.trim())
			.filter((l) => l !== "" && !l.startsWith("#"));
		const beforeBuild = dockerfile.slice(0, dockerfile.indexOf("RUN bun run build"));
		const copied = [...beforeBuild.matchAll(/^COPY (\S+) \S+$/gm)].map((m) => m[1] ?? "");
		const embedded = new Set<string>();
		for await (const file of new Bun.Glob("src/**/*.ts").scan(ROOT)) {
			const text = await Bun.file(`${ROOT}/${file}`).text();
			for (const m of text.matchAll(/from "(\.[^"]+)" with \{ type: "file" \}/g)) {
				const path = join(dirname(file), m[1] ?? "");
				if (!path.startsWith("src/")) embedded.add(path);
			}
		}
		expect([...embedded].sort()).toEqual([
			"wasm/counter.wasm",
			"wasm/ranks/cl100k_base.ranks",
			"wasm/ranks/o200k_base.ranks",
		]);
		for (const path of embedded) {
			expect(existsSync(`${ROOT}/${path}`)).toBe(true);
			expect(copied.some((c) => path === c || path.startsWith(`${c}/`))).toBe(true);
			expect(ignored.some((i) => new Bun.Glob(i).match(path) || path.startsWith(`${i}/`))).toBe(
				false,
			);
		}
	});
});
