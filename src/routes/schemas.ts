import { t } from "elysia";

/** Response schemas: they document the API in OpenAPI and are the types routes return. */

export const ErrorBody = t.Object(
	{
		error: t.Object({
			message: t.String(),
			type: t.String(),
			param: t.Union([t.String(), t.Null()]),
			code: t.Union([t.String(), t.Null()]),
		}),
	},
	{
		description:
			"OpenAI-shaped error. Codes include invalid_value, missing_required_parameter, model_not_found, invalid_api_key, missing_credentials, expired_token, forbidden, rate_limit_exceeded, concurrency_limit_exceeded, tokens_exceed_limit, store_unavailable.",
		examples: [
			{
				error: {
					message: "The model 'gpt-5' does not exist or is not served by this gateway.",
					type: "invalid_request_error",
					param: "model",
					code: "model_not_found",
				},
			},
		],
	},
);

export const OpenAIModelList = t.Object(
	{
		object: t.Literal("list"),
		data: t.Array(
			t.Object({
				id: t.String(),
				object: t.Literal("model"),
				created: t.Integer(),
				owned_by: t.String(),
			}),
		),
	},
	{
		examples: [
			{
				object: "list",
				data: [
					{ id: "llama2-7b", object: "model", created: 1700000000, owned_by: "token-rate-limiter" },
				],
			},
		],
	},
);

const Limits = t.Object({
	"max-tokens-per-minute": t.Optional(t.Integer()),
	"max-tokens-per-hour": t.Optional(t.Integer()),
	"max-tokens-per-day": t.Optional(t.Integer()),
	"max-concurrent-requests": t.Optional(t.Integer()),
});

const CALIBRATION_EXAMPLE = {
	enabled: true,
	direction: "up",
	ratio: 1.23,
	source: "learned",
	template: "llama2",
	learnedRatio: 1.23,
	samples: 512,
	pinned: null,
	configRatio: null,
};

export const CalibrationBody = t.Object(
	{
		enabled: t.Boolean({ description: "Whether the learned ratio is applied (config)." }),
		direction: t.Union([t.Literal("up"), t.Literal("both")], {
			description: "up: a learned ratio only raises estimates; both: it may lower them too.",
		}),
		ratio: t.Number({
			description: "The ratio applied to the counted prompt tokens of every estimate now.",
		}),
		source: t.Union(
			[t.Literal("pinned"), t.Literal("config"), t.Literal("learned"), t.Literal("none")],
			{ description: "Where the applied ratio comes from." },
		),
		template: t.Union(
			[
				t.Literal("openai"),
				t.Literal("llama2"),
				t.Literal("llama3"),
				t.Literal("mistral"),
				t.Literal("chatml"),
			],
			{
				description:
					"The chat template whose framing fits the model server's counts best (learned; the model's own until then).",
			},
		),
		learnedRatio: t.Number({
			description:
				"The model server's tokens per counted token of message content, as learned with that template.",
		}),
		samples: t.Integer({ description: "Requests learned from, across every replica." }),
		pinned: t.Union([t.Number(), t.Null()], { description: "An operator's pin, if any." }),
		configRatio: t.Union([t.Number(), t.Null()], {
			description: "The configuration's fixed ratio, if any.",
		}),
	},
	{
		description:
			"Self-calibration of the prompt estimate from the model server's own counts, shared by every replica.",
		examples: [CALIBRATION_EXAMPLE],
	},
);

export const CalibrationPinBody = t.Object(
	{
		ratio: t.Number({
			minimum: 0.25,
			maximum: 4,
			description: "The ratio to apply instead of the learned one (0.25-4).",
			examples: [1.2],
		}),
	},
	{ additionalProperties: false },
);

export const ModelCalibration = t.Object({
	model: t.String(),
	calibration: CalibrationBody,
});

export const ModelSummary = t.Object({
	id: t.String(),
	upstreamModel: t.String(),
	replicas: t.Integer({ description: "Number of vLLM replicas configured." }),
	tokenizer: t.String({
		description:
			"What counts the estimate: cl100k_base, o200k_base, tiktoken-ranks or huggingface.",
	}),
	tokenizerFile: t.Union([t.String(), t.Null()], {
		description: "The tokenizer file or model directory (tiktoken-ranks, huggingface).",
	}),
	chatTemplate: t.String({
		description:
			"Whose chat framing is counted per message: openai, llama2, llama3, mistral, chatml.",
	}),
	calibration: CalibrationBody,
	defaultMaxTokens: t.Integer(),
	limits: Limits,
	modelWideLimits: Limits,
});

export const ModelCatalog = t.Object(
	{ models: t.Array(ModelSummary) },
	{
		examples: [
			{
				models: [
					{
						id: "llama2-7b",
						upstreamModel: "meta-llama/Llama-2-7b-chat-hf",
						replicas: 1,
						tokenizer: "cl100k_base",
						tokenizerFile: null,
						chatTemplate: "openai",
						calibration: CALIBRATION_EXAMPLE,
						defaultMaxTokens: 256,
						limits: {
							"max-tokens-per-minute": 2000,
							"max-tokens-per-hour": 20000,
							"max-tokens-per-day": 200000,
							"max-concurrent-requests": 10,
						},
						modelWideLimits: {},
					},
				],
			},
		],
	},
);

export const ModelHealth = t.Object(
	{
		model: t.String(),
		status: t.Union([t.Literal("UP"), t.Literal("DOWN")]),
		replicas: t.Array(
			t.Object({
				url: t.String(),
				healthy: t.Boolean(),
				status: t.Union([t.Integer(), t.Null()]),
				latencyMs: t.Integer(),
				inFlight: t.Integer(),
				breaker: t.Union([t.Literal("closed"), t.Literal("half-open"), t.Literal("open")], {
					description:
						"The replica's circuit breaker: open while it keeps failing (or its /health fails).",
				}),
				error: t.Optional(t.String()),
			}),
		),
		concurrency: t.Object({
			inUse: t.Integer(),
			limit: t.Union([t.Integer(), t.Null()]),
		}),
		queue: t.Object(
			{
				waiting: t.Integer({
					description:
						"Requests waiting for a concurrency slot: on every replica with a shared store (Redis), else on this one.",
				}),
				waitingHere: t.Integer({
					description: "Of those, the requests waiting on this replica.",
				}),
				maxQueued: t.Integer({ description: "max-queued-requests (0: no queue)." }),
				maxWaitMs: t.Integer({ description: "max-queue-wait-ms (0: no queue)." }),
			},
			{ description: "Requests that found every slot taken wait here, fairly, for one." },
		),
	},
	{
		examples: [
			{
				model: "llama2-7b",
				status: "UP",
				replicas: [
					{
						url: "http://vllm-llama2-7b-service:8000",
						healthy: true,
						status: 200,
						latencyMs: 3,
						inFlight: 2,
						breaker: "closed",
					},
				],
				concurrency: { inUse: 2, limit: 10 },
				queue: { waiting: 0, waitingHere: 0, maxQueued: 100, maxWaitMs: 30000 },
			},
		],
	},
);

export const TokenUsage = t.Object(
	{
		model: t.String(),
		user: t.String(),
		windows: t.Array(
			t.Object({
				window: t.Union([t.Literal("minute"), t.Literal("hour"), t.Literal("day")]),
				unit: t.Union([t.Literal("tokens"), t.Literal("requests")], {
					description: "What the window counts: tokens, or requests (max-requests-per-minute).",
				}),
				scope: t.Union([t.Literal("user"), t.Literal("tenant"), t.Literal("model")], {
					description:
						"user: this user's budget; tenant: the user's tenant's; model: all users of the model together.",
				}),
				limit: t.Integer(),
				burst: t.Integer(),
				used: t.Integer({ description: "Tokens still counted against the window." }),
				remaining: t.Integer({ description: "Tokens that could be spent right now." }),
				resetSeconds: t.Integer({ description: "Seconds until the window is fully replenished." }),
			}),
		),
		concurrency: t.Object({ inUse: t.Integer(), limit: t.Union([t.Integer(), t.Null()]) }),
	},
	{
		examples: [
			{
				model: "llama2-7b",
				user: "user123",
				windows: [
					{
						window: "minute",
						scope: "user",
						limit: 2000,
						burst: 2000,
						used: 400,
						remaining: 1600,
						resetSeconds: 12,
					},
					{
						window: "hour",
						scope: "user",
						limit: 20000,
						burst: 20000,
						used: 400,
						remaining: 19600,
						resetSeconds: 72,
					},
					{
						window: "day",
						scope: "user",
						limit: 200000,
						burst: 200000,
						used: 400,
						remaining: 199600,
						resetSeconds: 173,
					},
				],
				concurrency: { inUse: 0, limit: 10 },
			},
		],
	},
);

export const HealthStatus = t.Object(
	{
		status: t.Union([t.Literal("UP"), t.Literal("DOWN")]),
		components: t.Optional(
			t.Record(t.String(), t.Object({ status: t.String() }, { additionalProperties: true })),
		),
	},
	{ examples: [{ status: "UP", components: { store: { status: "UP", kind: "memory" } } }] },
);

export const InfoBody = t.Object(
	{
		app: t.Object({ name: t.String(), version: t.String(), description: t.String() }),
		runtime: t.Object({ bun: t.String() }),
		store: t.String(),
		models: t.Array(t.String()),
	},
	{
		examples: [
			{
				app: {
					name: "token-rate-limiter",
					version: "0.1.0",
					description: "OpenAI-compatible token-rate-limiting gateway for vLLM",
				},
				runtime: { bun: "1.4.5" },
				store: "memory",
				models: ["llama2-7b", "gpt-3.5-turbo"],
			},
		],
	},
);

const WindowView = t.Object({
	scope: t.Union([t.Literal("user"), t.Literal("tenant"), t.Literal("model")]),
	window: t.Union([t.Literal("minute"), t.Literal("hour"), t.Literal("day")]),
	unit: t.Union([t.Literal("tokens"), t.Literal("requests")]),
	limit: t.Integer(),
	burst: t.Integer(),
	used: t.Integer(),
	remaining: t.Integer(),
	resetSeconds: t.Integer(),
});

export const OwnLimits = t.Object(
	{
		user: t.String(),
		tenant: t.Union([t.String(), t.Null()]),
		models: t.Array(
			t.Object({
				model: t.String(),
				windows: t.Array(WindowView),
				concurrency: t.Object({
					inUse: t.Integer({ description: "Requests of this model in flight, all callers." }),
					limit: t.Union([t.Integer(), t.Null()], {
						description: "The model's concurrency limit.",
					}),
					userLimit: t.Union([t.Integer(), t.Null()], {
						description: "The caller's own limit, if set.",
					}),
					tenantLimit: t.Union([t.Integer(), t.Null()], {
						description: "The caller's tenant's limit, if set.",
					}),
				}),
			}),
		),
	},
	{
		examples: [
			{
				user: "app-a",
				tenant: "team-a",
				models: [
					{
						model: "llama2-7b",
						windows: [
							{
								scope: "user",
								window: "minute",
								limit: 2000,
								burst: 2000,
								used: 350,
								remaining: 1650,
								resetSeconds: 11,
							},
							{
								scope: "tenant",
								window: "minute",
								limit: 20000,
								burst: 20000,
								used: 4200,
								remaining: 15800,
								resetSeconds: 13,
							},
						],
						concurrency: { inUse: 1, limit: 10 },
					},
				],
			},
		],
	},
);

const limitFields = {
	"max-tokens-per-minute": t.Optional(t.Integer({ minimum: 1 })),
	"max-tokens-per-hour": t.Optional(t.Integer({ minimum: 1 })),
	"max-tokens-per-day": t.Optional(t.Integer({ minimum: 1 })),
	"max-requests-per-minute": t.Optional(t.Integer({ minimum: 1 })),
	"max-concurrent-requests": t.Optional(
		t.Integer({
			minimum: 1,
			description: "This user's or tenant's own requests in flight at once.",
		}),
	),
};

export const KeyInfoBody = t.Object({
	id: t.String(),
	user: t.String(),
	tenant: t.Union([t.String(), t.Null()]),
	roles: t.Array(t.String()),
	limits: t.Union([t.Object(limitFields), t.Null()]),
	priority: t.Union([t.Literal("high"), t.Literal("normal"), t.Literal("low")], {
		description: "The key's place in a model's queue for slots (high, normal, low).",
	}),
	source: t.Union([t.Literal("config"), t.Literal("runtime")]),
	createdAt: t.Union([t.String(), t.Null()]),
	createdBy: t.Union([t.String(), t.Null()]),
});

export const IssueKeyBody = t.Object(
	{
		id: t.Optional(t.String({ pattern: "^[A-Za-z0-9-]+$", minLength: 1, maxLength: 64 })),
		user: t.String({ minLength: 1, maxLength: 256 }),
		tenant: t.Optional(t.String({ minLength: 1, maxLength: 256 })),
		roles: t.Optional(t.Array(t.String({ minLength: 1 }))),
		limits: t.Optional(t.Object(limitFields, { additionalProperties: false })),
		priority: t.Optional(
			t.Union([t.Literal("high"), t.Literal("normal"), t.Literal("low")], {
				description:
					"Its requests' place in a model's queue for slots: high first, low last (a waiting request rises a class every 10 s). Default normal.",
			}),
		),
	},
	{
		additionalProperties: false,
		examples: [
			{
				id: "team-a-app",
				user: "app-a",
				tenant: "team-a",
				roles: ["user"],
				limits: { "max-tokens-per-minute": 5000 },
			},
		],
	},
);

export const IssuedKey = t.Object(
	{
		key: t.String({ description: "The API key. It is shown this once and never again." }),
		info: KeyInfoBody,
	},
	{
		examples: [
			{
				key: "trl_team-a-app_0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978",
				info: {
					id: "team-a-app",
					user: "app-a",
					tenant: "team-a",
					roles: ["user"],
					limits: { "max-tokens-per-minute": 5000 },
					priority: "normal",
					source: "runtime",
					createdAt: "2026-11-26T12:00:00.000Z",
					createdBy: "ops",
				},
			},
		],
	},
);

export const LimitValues = t.Object(limitFields, {
	additionalProperties: false,
	minProperties: 1,
	examples: [{ "max-tokens-per-minute": 5000, "max-tokens-per-day": 500000 }],
});

export const OverrideView = t.Object(
	{
		model: t.String(),
		scope: t.Union([t.Literal("user"), t.Literal("tenant")]),
		name: t.String(),
		configured: t.Record(t.String(), t.Integer(), {
			description: "The configuration's windows for this scope.",
		}),
		override: t.Union([
			t.Object({
				limits: t.Record(t.String(), t.Integer()),
				updatedAt: t.String(),
				updatedBy: t.String(),
			}),
			t.Null(),
		]),
		effective: t.Record(t.String(), t.Integer(), { description: "What applies now." }),
	},
	{
		examples: [
			{
				model: "llama2-7b",
				scope: "user",
				name: "user123",
				configured: { "max-tokens-per-minute": 2000 },
				override: {
					limits: { "max-tokens-per-minute": 8000 },
					updatedAt: "2026-11-26T12:00:00.000Z",
					updatedBy: "ops",
				},
				effective: { "max-tokens-per-minute": 8000 },
			},
		],
	},
);
