import { CircuitState } from "cockatiel";
import { Elysia, t } from "elysia";
import { limitsOf } from "../config/loader.ts";
import type { ModelConfig, WindowLimit } from "../config/schema.ts";
import { modelNotFound } from "../errors.ts";
import type { Runtime } from "../runtime.ts";
import { probeHealth } from "../upstream/pool.ts";
import { CALLER_SECURITY } from "./completions.ts";
import { ErrorBody, ModelCatalog, ModelHealth, OpenAIModelList } from "./schemas.ts";

const BOOT_S = Math.floor(Date.now() / 1000);

function breakerName(state: CircuitState): "closed" | "half-open" | "open" {
	if (state === CircuitState.Closed) return "closed";
	return state === CircuitState.HalfOpen ? "half-open" : "open";
}

function withConcurrency(windows: readonly WindowLimit[], concurrency?: number) {
	const out = limitsOf(windows);
	if (concurrency !== undefined) out["max-concurrent-requests"] = concurrency;
	return out;
}

function summary(runtime: Runtime, m: ModelConfig) {
	return {
		id: m.id,
		upstreamModel: m.upstreamModel,
		replicas: m.upstreamUrls.length,
		tokenizer: m.tokenizer.kind,
		tokenizerFile: m.tokenizer.path ?? null,
		chatTemplate: runtime.counters.of(m.id).framing.template,
		calibration: runtime.calibration(m.id),
		defaultMaxTokens: m.defaultMaxTokens,
		limits: withConcurrency(m.userWindows, m.maxConcurrentRequests),
		modelWideLimits: limitsOf(m.modelWindows),
	};
}

/** Model catalogue: OpenAI's list, the seed's list with limits, and per-model health. */
export function modelRoutes(runtime: Runtime) {
	const { limiter, auth } = runtime.deps;
	const models = () => [...runtime.config.models.values()];
	const modelList = () => ({
		object: "list" as const,
		data: models().map((m) => ({
			id: m.id,
			object: "model" as const,
			created: BOOT_S,
			owned_by: "token-rate-limiter",
		})),
	});
	// With authentication on, the catalogue is for callers only; health and metrics stay open.
	const caller = async (request: Request) => {
		if (auth.required) await auth.authenticate(request);
	};
	return new Elysia()
		.get(
			"/v1/models",
			async ({ request }) => {
				await caller(request);
				return modelList();
			},
			{
				response: { 200: OpenAIModelList, 401: ErrorBody },
				detail: {
					tags: ["OpenAI"],
					summary: "Models served through the gateway (OpenAI format)",
					security: CALLER_SECURITY,
				},
			},
		)
		.get(
			"/api/v1/models",
			async ({ request }) => {
				await caller(request);
				return { models: models().map((m) => summary(runtime, m)) };
			},
			{
				response: { 200: ModelCatalog, 401: ErrorBody },
				detail: {
					tags: ["Seed API"],
					summary: "Models with their configured limits",
					security: CALLER_SECURITY,
				},
			},
		)
		.get(
			"/api/v1/models/:model/health",
			async ({ params, status }) => {
				const model = runtime.config.models.get(params.model);
				if (model === undefined) throw modelNotFound(params.model);
				const pool = runtime.pools.get(model.id);
				const replicas = await Promise.all(
					(pool?.replicas ?? []).map(async (r) => ({
						...(await probeHealth(r.url)),
						inFlight: r.inFlight,
						breaker: breakerName(r.breaker.state),
					})),
				);
				const body = {
					model: model.id,
					// Up while some replica answers /health and its breaker lets requests through.
					status: replicas.some((r) => r.healthy && r.breaker !== "open")
						? ("UP" as const)
						: ("DOWN" as const),
					replicas,
					concurrency: {
						inUse: await limiter.slotsInUse(model),
						limit: model.maxConcurrentRequests ?? null,
					},
					queue: {
						waiting: await limiter.waitingEverywhere(model),
						waitingHere: limiter.queueDepth(model.id),
						maxQueued: model.queue.maxQueued,
						maxWaitMs: model.queue.maxWaitMs,
					},
				};
				return body.status === "UP" ? body : status(503, body);
			},
			{
				params: t.Object({ model: t.String({ examples: ["llama2-7b"] }) }),
				response: { 200: ModelHealth, 503: ModelHealth, 404: ErrorBody },
				detail: {
					tags: ["Seed API"],
					summary: "Upstream health and concurrency slots of one model",
					description: "Probes every vLLM replica's /health. 503 when none answers.",
				},
			},
		);
}
