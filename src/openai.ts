import { type Static, type TSchema, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { invalidRequest } from "./errors.ts";

/**
 * The parts of OpenAI's request bodies the gateway reads. Everything else passes
 * through to vLLM untouched (additionalProperties), so sampling parameters and
 * vLLM's extensions keep working.
 */

const open = { additionalProperties: true } as const;

const ContentPart = Type.Object(
	{ type: Type.String({ examples: ["text"] }), text: Type.Optional(Type.String()) },
	open,
);

/**
 * The roles OpenAI's chat API knows, and `ipython`, the tool-result role of
 * Llama 3.1's chat template, which vLLM serves.
 */
export const CHAT_ROLES = [
	"system",
	"developer",
	"user",
	"assistant",
	"tool",
	"function",
	"ipython",
] as const;

export const ChatMessage = Type.Object(
	{
		role: Type.Union(
			CHAT_ROLES.map((r) => Type.Literal(r)),
			{ description: "Who wrote the message.", examples: ["user"] },
		),
		content: Type.Optional(
			Type.Union([Type.String(), Type.Array(ContentPart), Type.Null()], {
				description: "Text, or an array of content parts.",
			}),
		),
		name: Type.Optional(Type.String()),
		tool_calls: Type.Optional(Type.Array(Type.Unknown())),
	},
	open,
);

const StreamOptions = Type.Object(
	{
		include_usage: Type.Optional(Type.Boolean()),
		continuous_usage_stats: Type.Optional(
			Type.Boolean({ description: "vLLM extension: usage on every streamed event." }),
		),
	},
	open,
);

const common = {
	model: Type.String({ minLength: 1, examples: ["llama2-7b"] }),
	max_tokens: Type.Optional(
		Type.Union([Type.Integer({ minimum: 1 }), Type.Null()], {
			description: "Completion allowance; reserved before the call and refunded after.",
			examples: [100],
		}),
	),
	n: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 128 }), Type.Null()])),
	stream: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
	stream_options: Type.Optional(Type.Union([StreamOptions, Type.Null()])),
};

export const ChatCompletionRequest = Type.Object(
	{
		...common,
		messages: Type.Array(ChatMessage, { minItems: 1 }),
		max_completion_tokens: Type.Optional(
			Type.Union([Type.Integer({ minimum: 1 }), Type.Null()], { examples: [100] }),
		),
		tools: Type.Optional(Type.Array(Type.Unknown())),
	},
	{
		...open,
		examples: [
			{
				model: "llama2-7b",
				messages: [{ role: "user", content: "Hello!" }],
				max_tokens: 100,
				temperature: 0.7,
			},
		],
	},
);

/** The seed's path names the model, so its body may omit it. */
export const SeedChatCompletionRequest = Type.Object(
	{ ...ChatCompletionRequest.properties, model: Type.Optional(common.model) },
	{
		...open,
		examples: [
			{ messages: [{ role: "user", content: "안녕하세요!" }], max_tokens: 100, temperature: 0.7 },
		],
	},
);

export const CompletionRequest = Type.Object(
	{
		...common,
		prompt: Type.Union(
			[
				Type.String(),
				Type.Array(Type.String()),
				Type.Array(Type.Integer({ minimum: 0 })),
				Type.Array(Type.Array(Type.Integer({ minimum: 0 }))),
			],
			{ description: "Text, texts, or token ids." },
		),
	},
	{ ...open, examples: [{ model: "llama2-7b", prompt: "Once upon a time", max_tokens: 50 }] },
);

export type ChatCompletionBody = Static<typeof ChatCompletionRequest>;
export type CompletionBody = Static<typeof CompletionRequest>;
export type ChatMessageBody = Static<typeof ChatMessage>;

const checkers = new Map<TSchema, ReturnType<typeof TypeCompiler.Compile>>();

function checker(schema: TSchema) {
	let compiled = checkers.get(schema);
	if (compiled === undefined) {
		compiled = TypeCompiler.Compile(schema);
		checkers.set(schema, compiled);
	}
	return compiled;
}

/**
 * Checks an already-parsed JSON body against a schema; throws a 400 OpenAI
 * error naming the first offending parameter.
 */
export function parseBody<S extends TSchema>(schema: S, value: unknown): Static<S> {
	const compiled = checker(schema);
	if (compiled.Check(value)) return value as Static<S>;
	if (value === null || typeof value !== "object" || Array.isArray(value)) {
		throw invalidRequest("The request body must be a JSON object.", null, "invalid_body");
	}
	const first = compiled.Errors(value).First();
	if (first === undefined) throw invalidRequest("Invalid request body.");
	const param = first.path
		.slice(1)
		.split("/")
		.map((p) => (/^\d+$/.test(p) ? `[${p}]` : `.${p}`))
		.join("")
		.replace(/^\./, "");
	const got = first.value === undefined ? "missing" : JSON.stringify(first.value)?.slice(0, 60);
	const message =
		first.value === undefined
			? `Missing required parameter: '${param}'.`
			: `Invalid value for '${param}': ${describe(first.schema)}, got ${got}.`;
	throw invalidRequest(
		message,
		param,
		first.value === undefined ? "missing_required_parameter" : "invalid_value",
	);
}

function describe(schema: TSchema): string {
	const s = schema as TSchema & {
		type?: string;
		minimum?: number;
		anyOf?: TSchema[];
		minItems?: number;
	};
	if (s.anyOf !== undefined) {
		const consts = s.anyOf.map((a) => (a as TSchema & { const?: unknown }).const);
		if (consts.every((c) => typeof c === "string")) return `expected one of ${consts.join(", ")}`;
		return s.anyOf.map(describe).join(" or ");
	}
	if (s.type === "integer" && s.minimum !== undefined) return `expected an integer >= ${s.minimum}`;
	if (s.type === "array" && s.minItems !== undefined)
		return `expected an array with at least ${s.minItems} item(s)`;
	if (s.type === "null") return "null";
	if (s.type !== undefined) return `expected ${s.type}`;
	return "unexpected value";
}
