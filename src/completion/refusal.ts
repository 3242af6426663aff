import { GatewayError } from "../errors.ts";
import type { Refusal } from "../limits/limiter.ts";

/**
 * The one place a limiter's refusal becomes an HTTP answer: 429 with
 * Retry-After for a budget or slot that frees later, 400 for a request that can
 * never fit a window; each with the decision's rate-limit headers.
 */
export function refusalError(
	r: Refusal,
	/** The request's prompt estimate, and the parameter that carries its prompt. */
	prompt?: { readonly tokens: number; readonly param: "messages" | "prompt" },
): GatewayError {
	if (r.reason === "concurrency_limit_exceeded") {
		const retryMs = Math.max(1000, Math.ceil((r.retryAfterUs ?? 1_000_000) / 1000));
		const retry = `Please retry in ${Math.ceil(retryMs / 1000)}s.`;
		return new GatewayError(
			429,
			"requests",
			"concurrency_limit_exceeded",
			r.queue === "timeout"
				? `Every slot of model ${r.model} stayed taken (limit ${r.limit}) while this request waited ${r.headers["x-queue-wait-ms"] ?? "its maximum"} ms for one. ${retry}`
				: r.queue === "full"
					? `Every slot of model ${r.model} is taken (limit ${r.limit}) and its queue is full. ${retry}`
					: r.who === undefined
						? `Too many concurrent requests for model ${r.model}: limit ${r.limit}. Please retry shortly.`
						: `Too many concurrent requests for model ${r.model} (${r.who}): limit ${r.limit}. Please retry shortly.`,
			null,
			{
				...r.headers,
				"retry-after": String(Math.ceil(retryMs / 1000)),
				"retry-after-ms": String(retryMs),
			},
		);
	}
	if (r.retryAfterUs === undefined) {
		const capacity = r.capacity ?? r.limit;
		if (prompt !== undefined && r.unit !== "requests" && prompt.tokens >= capacity) {
			// The prompt alone does not fit: it is the prompt that is too large, not max_tokens.
			return new GatewayError(
				400,
				"invalid_request_error",
				"tokens_exceed_limit",
				`The prompt is too large for model ${r.model} (${r.who ?? ""}) on ${r.what ?? r.window}: about ${prompt.tokens} tokens, and the window holds ${capacity} in all. Shorten the prompt; retrying will not help.`,
				prompt.param,
				{ ...r.headers },
			);
		}
		return new GatewayError(
			400,
			"invalid_request_error",
			"tokens_exceed_limit",
			`Request too large for model ${r.model} (${r.who ?? ""}) on ${r.what ?? r.window}: capacity ${r.capacity ?? r.limit}, requested ${r.requested} (prompt plus max_tokens). Reduce the prompt or max_tokens; retrying will not help.`,
			"max_tokens",
			{ ...r.headers },
		);
	}
	const retryS = Math.ceil(r.retryAfterUs / 1_000_000);
	return new GatewayError(
		429,
		r.unit === "requests" ? "requests" : "tokens",
		"rate_limit_exceeded",
		`Rate limit reached for model ${r.model} (${r.who ?? ""}) on ${r.what ?? r.window}: limit ${r.limit}, remaining ${r.remaining}, requested ${r.requested}. Please try again in ${retryS}s.`,
		null,
		{
			...r.headers,
			"retry-after": String(retryS),
			"retry-after-ms": String(Math.ceil(r.retryAfterUs / 1000)),
		},
	);
}
