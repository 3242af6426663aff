import { Elysia, t } from "elysia";
import type { OpenAPIV3 } from "openapi-types";
import type { CompletionKind } from "../completion/exchange.ts";
import { newExchange, runCompletion } from "../completion/pipeline.ts";
import { GatewayError } from "../errors.ts";
import { ChatCompletionRequest, CompletionRequest, SeedChatCompletionRequest } from "../openai.ts";
import { requestIdOf } from "../request-id.ts";
import type { Runtime } from "../runtime.ts";
import { ErrorBody } from "./schemas.ts";

/** An error response in the API description, with an example of its own. */
function errorDoc(description: string, type: string, code: string, message: string) {
	return {
		description,
		content: {
			"application/json": {
				schema: doc(ErrorBody),
				example: { error: { message, type, param: null, code } },
			},
		},
	};
}

const errors = {
	400: errorDoc(
		"Invalid request, or a request larger than a window's whole capacity (code tokens_exceed_limit).",
		"invalid_request_error",
		"missing_required_parameter",
		"Missing required parameter: 'messages'.",
	),
	401: errorDoc(
		"Missing, invalid or expired credentials (with WWW-Authenticate).",
		"authentication_error",
		"invalid_api_key",
		"Invalid API key.",
	),
	404: errorDoc(
		"Unknown model (code model_not_found).",
		"invalid_request_error",
		"model_not_found",
		"The model 'gpt-5' does not exist or is not served by this gateway.",
	),
	413: errorDoc(
		"Body larger than server.max-body-bytes.",
		"invalid_request_error",
		"request_too_large",
		"Request body exceeds the limit of 4194304 bytes.",
	),
	429: errorDoc(
		"Token or request budget spent (code rate_limit_exceeded, with Retry-After) or no concurrency slot free (code concurrency_limit_exceeded).",
		"tokens",
		"rate_limit_exceeded",
		"Rate limit reached for model llama2-7b (user user123) on tokens per minute: limit 2000, remaining 150, requested 400. Please try again in 6s.",
	),
	502: errorDoc(
		"The model server failed.",
		"server_error",
		"upstream_error",
		"The model server failed (500): ...",
	),
	503: errorDoc(
		"The model server is unreachable or overloaded, or the limit store is unavailable with failure-policy closed.",
		"server_error",
		"upstream_unavailable",
		"The model server for llama2-7b is unreachable: connection refused",
	),
};

const STRING: OpenAPIV3.SchemaObject = { type: "string" };

/** A TypeBox schema as the plain JSON Schema object OpenAPI embeds. */
function doc(schema: object): OpenAPIV3.SchemaObject {
	return JSON.parse(JSON.stringify(schema)) as OpenAPIV3.SchemaObject;
}

const rateLimitHeaders = {
	"x-ratelimit-limit-tokens": { schema: STRING, description: "Limit of the tightest window." },
	"x-ratelimit-remaining-tokens": {
		schema: STRING,
		description: "Tokens left in the tightest window.",
	},
	"x-ratelimit-reset-tokens": {
		schema: STRING,
		description: "Time until that window is full again, e.g. 6m0s.",
	},
	RateLimit: { schema: STRING, description: 'IETF draft, every window: "tpm";r=1500;t=12' },
	"RateLimit-Policy": {
		schema: STRING,
		description: 'IETF draft, every window: "tpm";q=2000;w=60',
	},
};

const CHAT_EXAMPLE = {
	id: "chatcmpl-8f2c1b0e4d",
	object: "chat.completion",
	created: 1764763200,
	model: "llama2-7b",
	choices: [
		{
			index: 0,
			message: { role: "assistant", content: "안녕하세요! 무엇을 도와드릴까요?" },
			finish_reason: "stop",
		},
	],
	usage: { prompt_tokens: 12, completion_tokens: 11, total_tokens: 23 },
};

const COMPLETION_EXAMPLE = {
	id: "cmpl-4b9d2e7a1c",
	object: "text_completion",
	created: 1764763200,
	model: "llama2-7b",
	choices: [{ index: 0, text: " a gateway that counts tokens.", finish_reason: "stop" }],
	usage: { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12 },
};

const CHAT_STREAM_EXAMPLE = `data: {"id":"chatcmpl-8f2c1b0e4d","object":"chat.completion.chunk","created":1764763200,"model":"llama2-7b","choices":[{"index":0,"delta":{"role":"assistant","content":"안녕"},"finish_reason":null}]}

data: {"id":"chatcmpl-8f2c1b0e4d","object":"chat.completion.chunk","created":1764763200,"model":"llama2-7b","choices":[{"index":0,"delta":{"content":"하세요!"},"finish_reason":"stop"}]}

data: [DONE]

`;

function ok(description: string, example: object) {
	return {
		description,
		headers: rateLimitHeaders,
		content: {
			"application/json": {
				schema: { type: "object" as const, description: "The model server's response, unchanged." },
				example,
			},
			"text/event-stream": {
				schema: {
					type: "string" as const,
					description:
						"With stream: true, vLLM's events as they are generated, ending with data: [DONE].",
				},
				example: CHAT_STREAM_EXAMPLE,
			},
		},
	};
}

/** Who may call: an API key or a JWT when authentication is on (with auth.mode none, X-User-ID names the caller). */
export const CALLER_SECURITY: Record<string, string[]>[] = [{ apiKey: [] }, { bearer: [] }];

const userHeader = {
	in: "header" as const,
	name: "X-User-ID",
	required: false,
	description: "Whose budget to spend (seed behaviour); anonymous when absent.",
	schema: { type: "string" as const },
	example: "user123",
};

function methodNotAllowed({ request }: { request: Request }): Response {
	return new GatewayError(
		405,
		"invalid_request_error",
		"method_not_allowed",
		"This endpoint only accepts POST.",
		null,
		{ allow: "POST" },
	).toResponse({ "x-request-id": requestIdOf(request) });
}

const hidden = { detail: { hide: true } };

/** OpenAI-compatible completion endpoints, and the seed's per-model path. */
export function completionRoutes(runtime: Runtime) {
	const complete = (kind: CompletionKind, request: Request, pathModel?: string) =>
		runCompletion(runtime, newExchange(runtime, kind, request, pathModel));
	return new Elysia()
		.get("/v1/chat/completions", methodNotAllowed, hidden)
		.get("/v1/completions", methodNotAllowed, hidden)
		.get("/api/v1/models/:model/chat/completions", methodNotAllowed, hidden)
		.post("/v1/chat/completions", ({ request }) => complete("chat", request), {
			parse: "none",
			detail: {
				parameters: [userHeader],
				tags: ["OpenAI"],
				summary: "Chat completion (token-limited)",
				description:
					"OpenAI's chat completion. The prompt plus max_tokens is reserved before the call; vLLM's reported usage settles it afterwards.",
				requestBody: {
					required: true,
					content: { "application/json": { schema: doc(ChatCompletionRequest) } },
				},
				security: CALLER_SECURITY,
				responses: { 200: ok("Chat completion, or its event stream.", CHAT_EXAMPLE), ...errors },
			},
		})
		.post("/v1/completions", ({ request }) => complete("completion", request), {
			parse: "none",
			detail: {
				parameters: [userHeader],
				tags: ["OpenAI"],
				summary: "Text completion (token-limited)",
				requestBody: {
					required: true,
					content: { "application/json": { schema: doc(CompletionRequest) } },
				},
				security: CALLER_SECURITY,
				responses: {
					200: ok("Text completion, or its event stream.", COMPLETION_EXAMPLE),
					...errors,
				},
			},
		})
		.post(
			"/api/v1/models/:model/chat/completions",
			({ request, params }) => complete("chat", request, params.model),
			{
				parse: "none",
				params: t.Object({ model: t.String({ examples: ["llama2-7b"] }) }),
				detail: {
					parameters: [userHeader],
					tags: ["Seed API"],
					summary: "Chat completion for the model in the path (seed path)",
					description:
						"Same as /v1/chat/completions; the path names the model, so the body may omit it.",
					requestBody: {
						required: true,
						content: { "application/json": { schema: doc(SeedChatCompletionRequest) } },
					},
					security: CALLER_SECURITY,
					responses: { 200: ok("Chat completion, or its event stream.", CHAT_EXAMPLE), ...errors },
				},
			},
		);
}
