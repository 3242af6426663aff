import type { ModelConfig } from "../config/schema.ts";
import { GatewayError, upstreamTimeout, upstreamUnavailable } from "../errors.ts";
import type { UpstreamCall } from "../upstream/call.ts";

/**
 * Where an admitted call failed: before vLLM answered (`send`), while the JSON
 * answer was read (`body`), or mid-stream (`stream`).
 */
export type Phase = "send" | "body" | "stream";

/** How a call that did not complete ended: its status and code, for the answer, the metrics and the log. */
export interface Ending {
	readonly status: 499 | 502 | 503 | 504;
	readonly code:
		| "client_cancelled"
		| "shutting_down"
		| "upstream_unavailable"
		| "upstream_timeout"
		| "upstream_error";
}

/**
 * The one classification of a call that did not complete, whatever the phase:
 * the client left (499), the replica is shutting down (503), the replica was
 * taken out before it answered (503), a timeout cut it (504), or the model
 * server failed — unreachable before answering (503), broken after (502).
 */
export function endingOf(call: UpstreamCall, phase: Phase): Ending {
	if (call.clientGone) return { status: 499, code: "client_cancelled" };
	if (call.drained) return { status: 503, code: "shutting_down" };
	if (phase === "send" && call.unreachable) return { status: 503, code: "upstream_unavailable" };
	if (call.timedOut) return { status: 504, code: "upstream_timeout" };
	return phase === "send"
		? { status: 503, code: "upstream_unavailable" }
		: { status: 502, code: "upstream_error" };
}

/** What the client is told of an ending (nothing for a client that left). */
export function endingError(
	ending: Ending,
	call: UpstreamCall,
	model: ModelConfig,
	phase: Phase,
	err: unknown,
	requestId: string,
): GatewayError | undefined {
	switch (ending.code) {
		case "client_cancelled":
			return undefined;
		case "shutting_down":
			return shuttingDown();
		case "upstream_timeout":
			return upstreamTimeout(timeoutMessage(call, model, phase));
		case "upstream_unavailable":
			return upstreamUnavailable(
				call.unreachable
					? `The model server for ${model.id} stopped answering (${call.replica.url} failed its /health check).`
					: `The model server for ${model.id} is unreachable: ${describe(err)}`,
				{ "x-request-id": requestId, "retry-after": "1" },
			);
		case "upstream_error":
			return new GatewayError(
				502,
				"server_error",
				"upstream_error",
				phase === "body"
					? `The model server response for ${model.id} was cut off: ${describe(err)}`
					: `The model server stream failed: ${describe(err)}`,
			);
	}
}

/** The error event that ends a stream the gateway could not finish. */
export function streamFailure(
	call: UpstreamCall,
	model: ModelConfig,
	err: unknown,
): { message: string; code: string } {
	const ending = endingOf(call, "stream");
	if (ending.code === "shutting_down") {
		return {
			message: "This gateway replica is shutting down; the stream was cut. Please retry.",
			code: "shutting_down",
		};
	}
	if (ending.code === "upstream_timeout") {
		return { message: timeoutMessage(call, model, "stream"), code: "upstream_stream_failed" };
	}
	return {
		message: `The model server stream failed: ${describe(err)}`,
		code: "upstream_stream_failed",
	};
}

function timeoutMessage(call: UpstreamCall, model: ModelConfig, phase: Phase): string {
	switch (call.timeout) {
		case "first-byte":
			return phase === "stream"
				? `The model server sent nothing within ${model.firstByteTimeoutMs} ms (first-byte-timeout-ms).`
				: `The model server for ${model.id} sent nothing within ${model.firstByteTimeoutMs} ms (first-byte-timeout-ms).`;
		case "idle":
			return `The model server went silent for ${model.idleTimeoutMs} ms mid-stream (idle-timeout-ms).`;
		default:
			return phase === "send"
				? `The model server for ${model.id} did not answer within ${model.timeoutMs} ms.`
				: phase === "body"
					? `The model server for ${model.id} did not finish within ${model.timeoutMs} ms.`
					: `The model server did not finish within ${model.timeoutMs} ms (timeout-ms).`;
	}
}

/** This replica is shutting down: a retry goes to another one. */
export function shuttingDown(): GatewayError {
	return new GatewayError(
		503,
		"server_error",
		"shutting_down",
		"This gateway replica is shutting down; please retry.",
		null,
		{ "retry-after": "1", connection: "close" },
	);
}

export function describe(err: unknown): string {
	return err instanceof Error ? err.message : String(err);
}

const TYPE_BY_STATUS: Record<number, string> = {
	400: "invalid_request_error",
	401: "authentication_error",
	403: "permission_error",
	404: "invalid_request_error",
	413: "invalid_request_error",
	422: "invalid_request_error",
	429: "rate_limit_error",
};

/**
 * The caller's error for a model server's error answer (vLLM's old
 * `{"object":"error",...}` or `{"error":{...}}`), in OpenAI's shape. 4xx stay the
 * caller's to fix, with OpenAI's types; an overloaded vLLM (503) stays
 * retryable; other 5xx are a bad gateway.
 */
export function upstreamError(
	status: number,
	text: string,
	retryAfter: string | null,
): GatewayError {
	let message = text.slice(0, 1000) || `The model server answered ${status}.`;
	let param: string | null = null;
	let code: string | null = null;
	try {
		const parsed: unknown = JSON.parse(text);
		if (parsed !== null && typeof parsed === "object") {
			const inner =
				"error" in parsed && parsed.error !== null && typeof parsed.error === "object"
					? parsed.error
					: parsed;
			if ("message" in inner && typeof inner.message === "string") message = inner.message;
			if ("param" in inner && typeof inner.param === "string") param = inner.param;
			if ("code" in inner && typeof inner.code === "string" && !/^\d+$/.test(inner.code))
				code = inner.code;
		}
	} catch {
		// Not JSON: the text itself is the message.
	}
	if (status < 500) {
		if (
			/context length|max_model_len|maximum model length|too many tokens|longer than the maximum/i.test(
				message,
			)
		) {
			code ??= "context_length_exceeded";
			param ??= "messages";
		}
		return new GatewayError(
			status,
			TYPE_BY_STATUS[status] ?? "invalid_request_error",
			code,
			message,
			param,
		);
	}
	if (status === 503) {
		return new GatewayError(
			503,
			"server_error",
			"upstream_overloaded",
			`The model server is overloaded: ${message}`,
			null,
			{ "retry-after": retryAfter ?? "1" },
		);
	}
	if (status === 504) return new GatewayError(504, "server_error", "upstream_timeout", message);
	return new GatewayError(
		502,
		"server_error",
		code ?? "upstream_error",
		`The model server failed (${status}): ${message}`,
	);
}
