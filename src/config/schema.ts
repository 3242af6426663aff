import { type Static, type TSchema, Type } from "@sinclair/typebox";

/**
 * The configuration file's schema, in the file's own (kebab-case) keys.
 *
 * The seed's keys (`token.rate-limit.models.<id>.*`, `vllm.services.<id>`,
 * `spring.data.redis.*`, `server.port`) are accepted unchanged; every extension
 * sits beside them. Each leaf carries `expected`, the phrase used in boot errors
 * ("expected a positive integer, got -5").
 */

function positiveInt(description: string, examples?: number[]) {
	return Type.Integer({ minimum: 1, description, expected: "a positive integer", examples });
}

const windowLimits = {
	"max-tokens-per-minute": Type.Optional(positiveInt("Token budget per rolling minute.", [2000])),
	"max-tokens-per-hour": Type.Optional(positiveInt("Token budget per rolling hour.", [20000])),
	"max-tokens-per-day": Type.Optional(positiveInt("Token budget per rolling day.", [200000])),
	"max-requests-per-minute": Type.Optional(
		positiveInt("Requests per rolling minute, whatever their tokens (OpenAI's RPM).", [60]),
	),
};

/** Token windows as operators write them: in the config file, on keys and in overrides. */
export const WindowLimitsSchema = Type.Object(
	{
		...windowLimits,
		"max-concurrent-requests": Type.Optional(
			positiveInt(
				"This user's (or tenant's) own requests in flight at once, across replicas.",
				[4],
			),
		),
	},
	{
		additionalProperties: false,
		minProperties: 1,
		expected:
			"an object with max-tokens-per-minute|hour|day, max-requests-per-minute, max-concurrent-requests",
		examples: [
			{ "max-tokens-per-minute": 5000, "max-tokens-per-day": 500000, "max-concurrent-requests": 4 },
		],
	},
);
export type WindowLimitsValue = Static<typeof WindowLimitsSchema>;

const BUILTIN_ENCODINGS = ["cl100k_base", "o200k_base"] as const;
const TOKENIZER_KINDS = [...BUILTIN_ENCODINGS, "tiktoken-ranks", "huggingface"] as const;
export const CHAT_TEMPLATES = ["openai", "llama2", "llama3", "mistral", "chatml"] as const;

export const TokenizerObjectSchema = Type.Object(
	{
		kind: Type.Union(
			TOKENIZER_KINDS.map((k) => Type.Literal(k)),
			{
				description:
					"cl100k_base / o200k_base (built in), tiktoken-ranks (a tiktoken rank file such as Llama 3's tokenizer.model), huggingface (a tokenizer.json).",
				expected: `one of ${TOKENIZER_KINDS.join(", ")}`,
			},
		),
		path: Type.Optional(
			Type.String({
				minLength: 1,
				description:
					"The tokenizer file (tiktoken-ranks, huggingface), or for huggingface the model directory holding tokenizer.json (and tokenizer_config.json).",
				expected: "a file path",
			}),
		),
		pattern: Type.Optional(
			Type.String({
				minLength: 1,
				description:
					"tiktoken-ranks only: how text is split before merging: llama3 (the default), cl100k_base, o200k_base, or a regular expression.",
				expected: "llama3, cl100k_base, o200k_base or a regular expression",
			}),
		),
		"chat-template": Type.Optional(
			Type.Union(
				CHAT_TEMPLATES.map((t) => Type.Literal(t)),
				{
					description:
						"Whose chat framing to count per message: openai, llama2, llama3, mistral, chatml. Default: openai for the built-in encodings, llama3 for tiktoken-ranks, and for huggingface the one its tokenizer_config.json's chat_template names (else openai).",
					expected: `one of ${CHAT_TEMPLATES.join(", ")}`,
				},
			),
		),
	},
	{
		additionalProperties: false,
		expected: "an object {kind, path, pattern, chat-template}",
	},
);

export const TokenizerSchema = Type.Union(
	[...BUILTIN_ENCODINGS.map((e) => Type.Literal(e)), TokenizerObjectSchema],
	{
		description:
			"How the pre-flight estimate counts tokens: a built-in tiktoken encoding, or {kind, path, chat-template}.",
		expected: '"cl100k_base", "o200k_base" or an object {kind, path, pattern, chat-template}',
		objectErrors: true,
	},
);

export const CalibrationSchema = Type.Union(
	[
		Type.Boolean(),
		Type.Object(
			{
				enabled: Type.Optional(
					Type.Boolean({
						description:
							"Learn the ratio of the model server's prompt_tokens to the estimate and apply it (default true).",
						expected: "true or false",
					}),
				),
				ratio: Type.Optional(
					Type.Number({
						minimum: 0.25,
						maximum: 4,
						description: "A fixed ratio instead of the learned one (0.25-4).",
						expected: "a number from 0.25 to 4",
					}),
				),
				direction: Type.Optional(
					Type.Union([Type.Literal("up"), Type.Literal("both")], {
						description:
							"up (the default): a learned ratio only ever raises the estimate, so an undercounting tokenizer cannot leak budget and an overcounting one only holds back a little more until settlement; both: it also lowers it.",
						expected: '"up" or "both"',
					}),
				),
			},
			{ additionalProperties: false, expected: "an object {enabled, ratio, direction}" },
		),
	],
	{
		description:
			"Self-calibration of the prompt estimate from the model server's own counts: true/false, or {enabled, ratio, direction}.",
		expected: "true, false or an object {enabled, ratio, direction}",
		objectErrors: true,
	},
);

export const ModelLimitsSchema = Type.Object(
	{
		...windowLimits,
		"max-concurrent-requests": Type.Optional(
			positiveInt("Requests of this model in flight at once, across all callers.", [10]),
		),
		"max-queue-wait-ms": Type.Optional(
			Type.Integer({
				minimum: 0,
				description:
					"How long a request that finds every concurrency slot taken may wait for one, in a fair queue, before 429 concurrency_limit_exceeded (default 30000; 0 refuses at once).",
				expected: "an integer of at least 0",
				examples: [30000],
			}),
		),
		"max-queued-requests": Type.Optional(
			Type.Integer({
				minimum: 0,
				description:
					"How many requests of this model may wait for a slot at once: across every replica with a Redis store, on this replica with the memory store; beyond it a request is refused at once (default 100; 0 refuses at once).",
				expected: "an integer of at least 0",
				examples: [100],
			}),
		),
		"burst-factor": Type.Optional(
			Type.Number({
				exclusiveMinimum: 0,
				maximum: 100,
				description:
					"Burst capacity B as a multiple of each window's limit (GCRA tolerance). 1 = the limit itself.",
				expected: "a number greater than 0 and at most 100",
			}),
		),
		"default-max-tokens": Type.Optional(
			positiveInt(
				"Completion allowance when a request names no max_tokens; also sent upstream so the model cannot exceed it.",
				[256],
			),
		),
		tokenizer: Type.Optional(TokenizerSchema),
		calibration: Type.Optional(CalibrationSchema),
		"exact-count": Type.Optional(
			Type.Object(
				{
					"above-tokens": positiveInt(
						"Prompts estimated above this many tokens are counted by the model server's /tokenize before admission.",
						[8000],
					),
					"timeout-ms": Type.Optional(
						positiveInt(
							"How long to wait for /tokenize before admitting on the estimate (default 1000).",
							[1000],
						),
					),
				},
				{
					additionalProperties: false,
					description:
						"Exact mode: long prompts are counted by vLLM's own /tokenize (one extra round trip) instead of estimated.",
					expected: "an object {above-tokens, timeout-ms}",
				},
			),
		),
		tenant: Type.Optional(
			Type.Object(windowLimits, {
				additionalProperties: false,
				description:
					"Windows shared by every user of one tenant, per tenant (callers with a tenant only).",
				expected: "an object with max-tokens-per-minute|hour|day",
			}),
		),
		"model-wide": Type.Optional(
			Type.Object(windowLimits, {
				additionalProperties: false,
				description:
					"Windows shared by every caller of this model together (protects the backend).",
				expected: "an object with max-tokens-per-minute|hour|day",
			}),
		),
	},
	{ additionalProperties: false, expected: "an object of limits" },
);

const urlList = Type.Array(Type.String({ minLength: 1, expected: "a URL" }), {
	minItems: 1,
	expected: "a non-empty list of URLs",
});

export const ServiceSchema = Type.Union(
	[
		Type.String({ minLength: 1, expected: "a URL" }),
		urlList,
		Type.Object(
			{
				urls: Type.Union([Type.String({ minLength: 1 }), urlList]),
				"upstream-model": Type.Optional(
					Type.String({
						minLength: 1,
						description: "Model name vLLM serves (--served-model-name).",
					}),
				),
				"timeout-ms": Type.Optional(positiveInt("Total time allowed for one request upstream.")),
				"first-byte-timeout-ms": Type.Optional(
					positiveInt("Time allowed until a stream's first event (prefill), default the total."),
				),
				"idle-timeout-ms": Type.Optional(
					positiveInt("Longest silence allowed between a stream's events."),
				),
			},
			{ additionalProperties: false },
		),
	],
	{
		expected: "a URL, a list of URLs, or an object {urls, upstream-model, timeout-ms}",
	},
);

const AuthModeSchema = Type.Union(
	[Type.Literal("none"), Type.Literal("api-key"), Type.Literal("jwt")],
	{
		expected: "one of none, api-key, jwt",
	},
);

/** A caller's place in a model's queue: higher first, lower rising as it waits. */
export const PrioritySchema = Type.Union(
	[Type.Literal("high"), Type.Literal("normal"), Type.Literal("low")],
	{
		description:
			"The caller's priority in a model's queue for concurrency slots: high, normal (the default) or low. A waiting request rises one class every 10 s, so low never starves.",
		expected: "one of high, normal, low",
	},
);

const ApiKeySchema = Type.Object(
	{
		id: Type.String({
			minLength: 1,
			pattern: "^[A-Za-z0-9-]+$",
			expected: "an id of letters, digits and -",
		}),
		hash: Type.String({
			pattern: "^sha256:[0-9a-f]{64}$",
			expected: "sha256:<64 hex digits> (the SHA-256 of the key; the key itself is never stored)",
		}),
		user: Type.String({ minLength: 1, expected: "the user whose budget the key spends" }),
		tenant: Type.Optional(Type.String({ minLength: 1, expected: "a tenant name" })),
		roles: Type.Optional(
			Type.Array(Type.String({ minLength: 1 }), { expected: "a list of roles" }),
		),
		limits: Type.Optional(WindowLimitsSchema),
		priority: Type.Optional(PrioritySchema),
	},
	{
		additionalProperties: false,
		expected: "an API key {id, hash, user, tenant, roles, limits, priority}",
	},
);

const JwtSchema = Type.Object(
	{
		secret: Type.Optional(
			Type.String({ minLength: 16, expected: "an HS256 secret of at least 16 characters" }),
		),
		"jwks-url": Type.Optional(Type.String({ minLength: 1, expected: "an http(s) URL" })),
		issuer: Type.Optional(
			Type.Union([Type.String(), Type.Array(Type.String())], { expected: "an issuer or a list" }),
		),
		audience: Type.Optional(
			Type.Union([Type.String(), Type.Array(Type.String())], { expected: "an audience or a list" }),
		),
		algorithms: Type.Optional(
			Type.Array(Type.String({ minLength: 1 }), { expected: "a list of JWS algorithms" }),
		),
		claims: Type.Optional(
			Type.Object(
				{
					user: Type.Optional(Type.String({ minLength: 1 })),
					tenant: Type.Optional(Type.String({ minLength: 1 })),
					roles: Type.Optional(Type.String({ minLength: 1 })),
					priority: Type.Optional(Type.String({ minLength: 1 })),
				},
				{ additionalProperties: false, expected: "claim names {user, tenant, roles, priority}" },
			),
		),
		"clock-tolerance-s": Type.Optional(
			Type.Integer({ minimum: 0, expected: "seconds (0 or more)" }),
		),
	},
	{ additionalProperties: false, expected: "JWT settings" },
);

export const RawConfigSchema = Type.Object(
	{
		server: Type.Optional(
			Type.Object(
				{
					port: Type.Optional(
						Type.Integer({ minimum: 0, maximum: 65535, expected: "a port number (0-65535)" }),
					),
					host: Type.Optional(Type.String({ minLength: 1, expected: "a host name or address" })),
					"max-body-bytes": Type.Optional(positiveInt("Largest accepted request body.")),
					"max-messages": Type.Optional(positiveInt("Most messages one chat request may carry.")),
					"max-prompt-tokens": Type.Optional(
						positiveInt("Most prompt tokens one request may carry (estimated before it is sent)."),
					),
					"drain-ms": Type.Optional(
						Type.Integer({
							minimum: 0,
							description:
								"On SIGTERM, how long in-flight requests may finish before they are cut and settled.",
							expected: "milliseconds (0 or more)",
						}),
					),
				},
				{ additionalProperties: false, expected: "an object of server settings" },
			),
		),
		store: Type.Optional(
			Type.Union([Type.Literal("memory"), Type.Literal("redis"), Type.Literal("redis-cluster")], {
				description:
					"Where limits live: this process (memory), Redis, or a Redis Cluster. Default: redis when spring.data.redis is configured (as the original gateway always used Redis), else memory.",
				expected: "one of memory, redis, redis-cluster",
			}),
		),
		redis: Type.Optional(
			Type.Object(
				{
					"timeout-ms": Type.Optional(
						positiveInt(
							"Per-call time limit for the limiter's Redis calls; past it the failure policy decides.",
						),
					),
					"failure-policy": Type.Optional(
						Type.Union([Type.Literal("open"), Type.Literal("closed"), Type.Literal("local")], {
							description:
								"When Redis is slow or down: open admits without limits, closed refuses with 503, local limits in-process with each limit divided by the live replicas.",
							expected: "one of open, closed, local",
						}),
					),
					replicas: Type.Optional(
						positiveInt(
							"Gateway replicas to divide limits by under failure-policy local (else learned from Redis).",
						),
					),
					"lease-ttl-ms": Type.Optional(
						positiveInt(
							"Concurrency leases lapse this long after the last renewal (a dead replica's slots return).",
						),
					),
					"heartbeat-ms": Type.Optional(
						positiveInt("How often each replica announces itself in Redis."),
					),
				},
				{ additionalProperties: false, expected: "an object of Redis limiter settings" },
			),
		),
		token: Type.Object(
			{
				"rate-limit": Type.Object(
					{
						models: Type.Record(Type.String({ minLength: 1 }), ModelLimitsSchema, {
							expected: "a map of model id to limits",
						}),
					},
					{ additionalProperties: false },
				),
			},
			{ additionalProperties: false },
		),
		vllm: Type.Object(
			{
				services: Type.Record(Type.String({ minLength: 1 }), ServiceSchema, {
					expected: "a map of model id to vLLM URL(s)",
				}),
				"timeout-ms": Type.Optional(
					positiveInt("Default total time allowed for one request upstream."),
				),
				"first-byte-timeout-ms": Type.Optional(
					positiveInt("Default time allowed until a stream's first event, default the total."),
				),
				"idle-timeout-ms": Type.Optional(
					positiveInt("Default longest silence between a stream's events (default 120000)."),
				),
				"health-check-ms": Type.Optional(
					Type.Integer({
						minimum: 0,
						description:
							"How often each replica's /health is probed (0: never); a failing replica is taken out.",
						expected: "milliseconds (0 or more)",
					}),
				),
				"connect-timeout-ms": Type.Optional(
					Type.Integer({
						minimum: 0,
						description:
							"How long a replica that has not answered in the last second gets to accept a connection (default 2000; 0: no check). One that does not is skipped: the request goes to another replica.",
						expected: "milliseconds (0 or more)",
					}),
				),
				"load-poll-ms": Type.Optional(
					Type.Integer({
						minimum: 0,
						description:
							"How often each replica's vLLM /metrics is read (0: never, the default): its queue (vllm:num_requests_waiting) then counts when choosing a replica.",
						expected: "milliseconds (0 or more)",
					}),
				),
				"shed-waiting-above": Type.Optional(
					positiveInt(
						"With load-poll-ms: refuse new requests (503 upstream_overloaded, Retry-After) while even the least loaded replica has this many requests waiting in its queue.",
						[32],
					),
				),
			},
			{ additionalProperties: false },
		),
		spring: Type.Optional(
			Type.Object(
				{
					data: Type.Optional(
						Type.Object(
							{
								redis: Type.Optional(
									Type.Object(
										{
											host: Type.Optional(Type.String({ minLength: 1, expected: "a host name" })),
											port: Type.Optional(
												Type.Integer({ minimum: 1, maximum: 65535, expected: "a port number" }),
											),
											url: Type.Optional(
												Type.String({ minLength: 1, expected: "a redis:// or rediss:// URL" }),
											),
											username: Type.Optional(Type.String({ expected: "a string" })),
											password: Type.Optional(
												Type.Union([Type.String(), Type.Number()], { expected: "a string" }),
											),
											database: Type.Optional(
												Type.Integer({ minimum: 0, expected: "a database number" }),
											),
											ssl: Type.Optional(
												Type.Object(
													{ enabled: Type.Optional(Type.Boolean({ expected: "true or false" })) },
													{ additionalProperties: false },
												),
											),
											cluster: Type.Optional(
												Type.Object(
													{
														nodes: Type.Optional(
															Type.Union(
																[
																	Type.String({ minLength: 1 }),
																	Type.Array(Type.String({ minLength: 1 })),
																],
																{
																	expected: "host:port entries, as a list or comma-separated",
																},
															),
														),
													},
													{ additionalProperties: false },
												),
											),
										},
										{ additionalProperties: false },
									),
								),
							},
							{ additionalProperties: false },
						),
					),
				},
				{ additionalProperties: false },
			),
		),
		auth: Type.Optional(
			Type.Object(
				{
					mode: Type.Optional(
						Type.Union([AuthModeSchema, Type.Array(AuthModeSchema, { minItems: 1 })], {
							expected: "none, api-key, jwt, or a list of them",
						}),
					),
					"api-keys": Type.Optional(Type.Array(ApiKeySchema, { expected: "a list of API keys" })),
					jwt: Type.Optional(JwtSchema),
				},
				{ additionalProperties: false, expected: "an object of authentication settings" },
			),
		),
		metrics: Type.Optional(
			Type.Object(
				{
					"per-user-labels": Type.Optional(
						Type.Boolean({
							expected: "true or false",
							description:
								"Adds per-user series (token_user_usage_total, token_user_rate_limit_exceeded_total). One series per user and model: keep off with many users.",
						}),
					),
				},
				{ additionalProperties: false, expected: "an object of metrics settings" },
			),
		),
		logging: Type.Optional(
			Type.Object(
				{
					level: Type.Optional(
						Type.Union(
							[
								Type.String({ minLength: 1 }),
								// Spring's form: a level per logger, `root` being the gateway's.
								Type.Record(Type.String(), Type.String()),
							],
							{
								expected:
									"a level (debug, info, warn, error, silent) or Spring's {root: INFO, ...}",
							},
						),
					),
				},
				{ additionalProperties: false },
			),
		),
	},
	// Sections of a Spring application.yml that the gateway does not use
	// (management.*, spring.application, logging.pattern, ...) are taken out,
	// and listed in a warning, before this schema is checked (loader.ts).
	{ additionalProperties: false },
);

export type RawConfig = Static<typeof RawConfigSchema>;
export type RawModelLimits = Static<typeof ModelLimitsSchema>;

export type Tokenizer = Static<typeof TokenizerSchema>;
/** tiktoken encodings built into the gateway. */
export type BuiltinEncoding = (typeof BUILTIN_ENCODINGS)[number];
export type TokenizerKind = (typeof TOKENIZER_KINDS)[number];
/** The chat template whose framing the estimate counts per message. */
export type ChatTemplateName = (typeof CHAT_TEMPLATES)[number];

/** What counts a model's tokens. */
export interface TokenizerSpec {
	readonly kind: TokenizerKind;
	/** The file (or Hugging Face model directory) for tiktoken-ranks and huggingface. */
	readonly path: string | undefined;
	/** tiktoken-ranks: cl100k_base, o200k_base or a regular expression. */
	readonly pattern: string | undefined;
	/** Undefined: the kind's default (for huggingface, what tokenizer_config.json names). */
	readonly chatTemplate: ChatTemplateName | undefined;
	/** The counter's identity: models with the same key share one counter. */
	readonly key: string;
	/** The configuration key path, for errors about the file. */
	readonly where: string;
}

export interface CalibrationConfig {
	/** Whether the learned ratio is applied to estimates. */
	readonly enabled: boolean;
	/** A ratio fixed in the configuration (an operator's pin through the admin API wins). */
	readonly ratio: number | undefined;
	/** up: a learned ratio below 1 is not applied; both: it is. */
	readonly direction: "up" | "both";
}
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

/** One token window of one scope, in the units the limiter works in. */
export interface WindowLimit {
	/** Short name used in headers and APIs: minute | hour | day. */
	readonly name: WindowName;
	/** Counts requests (each costs 1) instead of tokens. */
	readonly perRequest?: boolean;
	readonly windowUs: number;
	readonly limitTokens: number;
	/** GCRA burst capacity B (defaults to the limit). */
	readonly burstTokens: number;
}

export type WindowName = "minute" | "hour" | "day";

/** A window's label in metrics and logs: minute | hour | day, or rpm for requests per minute. */
export function windowLabel(w: Pick<WindowLimit, "name" | "perRequest">): WindowName | "rpm" {
	return w.perRequest === true ? "rpm" : w.name;
}

export interface ModelConfig {
	readonly id: string;
	readonly upstreamModel: string;
	readonly upstreamUrls: readonly string[];
	readonly timeoutMs: number;
	/** Until a stream's first event. */
	readonly firstByteTimeoutMs: number;
	/** Between a stream's events. */
	readonly idleTimeoutMs: number;
	readonly tokenizer: TokenizerSpec;
	readonly calibration: CalibrationConfig;
	readonly defaultMaxTokens: number;
	/** Prompts estimated above `aboveTokens` are counted by the model server's /tokenize. */
	readonly exactCount: { readonly aboveTokens: number; readonly timeoutMs: number } | undefined;
	readonly maxConcurrentRequests: number | undefined;
	/** Waiting for a concurrency slot: how long, and how many at once; 0 for either refuses at once. */
	readonly queue: { readonly maxWaitMs: number; readonly maxQueued: number };
	/** Windows charged to each caller (per user). */
	readonly userWindows: readonly WindowLimit[];
	/** Windows charged to every caller of the model together. */
	readonly modelWindows: readonly WindowLimit[];
	/** Windows charged per tenant (to callers that have one). */
	readonly tenantWindows: readonly WindowLimit[];
}

export type AuthMode = "none" | "api-key" | "jwt";

export interface ApiKeyConfig {
	readonly id: string;
	/** Lower-case hex SHA-256 of the key. */
	readonly sha256: string;
	readonly user: string;
	readonly tenant: string | undefined;
	readonly roles: readonly string[];
	/** Per-user windows of this key, instead of each model's. */
	readonly limits: readonly WindowLimit[] | undefined;
	/** This key's user's own concurrency limit. */
	readonly concurrency: number | undefined;
	/** Its requests' priority in a model's queue. */
	readonly priority?: "high" | "normal" | "low" | undefined;
}

export interface JwtConfig {
	readonly secret: string | undefined;
	readonly jwksUrl: string | undefined;
	readonly issuer: string | readonly string[] | undefined;
	readonly audience: string | readonly string[] | undefined;
	readonly algorithms: readonly string[] | undefined;
	readonly userClaim: string;
	readonly tenantClaim: string;
	readonly rolesClaim: string;
	/** Claim giving the caller's queue priority (high, normal, low); absent or other: normal. */
	readonly priorityClaim: string;
	readonly clockToleranceS: number;
}

export interface AuthConfig {
	readonly modes: ReadonlySet<AuthMode>;
	readonly apiKeys: readonly ApiKeyConfig[];
	readonly jwt: JwtConfig | undefined;
}

export type StoreKind = "memory" | "redis" | "redis-cluster";
export type FailurePolicy = "open" | "closed" | "local";

export interface RedisConfig {
	readonly host: string;
	readonly port: number;
	/** A redis:// or rediss:// URL; wins over host and port when set. */
	readonly url: string | undefined;
	readonly username: string | undefined;
	readonly password: string | undefined;
	readonly database: number;
	readonly tls: boolean;
	/** Seed nodes of a Redis Cluster, host:port. */
	readonly clusterNodes: readonly string[];
	readonly timeoutMs: number;
	readonly failurePolicy: FailurePolicy;
	/** Fixed divisor for failure-policy local; undefined = learned from heartbeats. */
	readonly replicas: number | undefined;
	readonly leaseTtlMs: number;
	readonly heartbeatMs: number;
}

export interface GatewayConfig {
	readonly server: {
		readonly host: string;
		readonly port: number;
		readonly maxBodyBytes: number;
		readonly maxMessages: number;
		readonly maxPromptTokens: number | undefined;
		readonly drainMs: number;
		/** Where the port came from: the file's server.port, SERVER_PORT, PORT, or the default. */
		readonly portFrom: "server.port" | "SERVER_PORT" | "PORT" | "default";
	};
	readonly store: StoreKind;
	/** Why this store: the `store` key, spring.data.redis without one, or the default. */
	readonly storeReason: string;
	readonly redis: RedisConfig;
	readonly logLevel: LogLevel;
	readonly metrics: { readonly perUserLabels: boolean };
	readonly auth: AuthConfig;
	readonly models: ReadonlyMap<string, ModelConfig>;
	/** How often replicas' /health is probed; 0 = never. */
	readonly healthCheckMs: number;
	/** How long an idle replica gets to accept a connection before the request goes elsewhere; 0 = no check. */
	readonly connectTimeoutMs: number;
	/** How often replicas' vLLM /metrics is read for their queue; 0 = never. */
	readonly loadPollMs: number;
	/** Refuse while the least loaded replica's queue is this long (needs loadPollMs). */
	readonly shedWaitingAbove: number | undefined;
	/** Settings of a Spring application.yml the gateway does not use, by path (warned at boot). */
	readonly ignoredSettings: readonly string[];
}

/** Any TypeBox schema node may carry the phrase used in boot errors. */
export type SchemaWithExpected = TSchema & {
	expected?: string;
	/** A union whose object form reports its own problems, key by key, for an object value. */
	objectErrors?: boolean;
};
