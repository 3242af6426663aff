/**
 * Errors as OpenAI's API shapes them: `{"error":{"message","type","param","code"}}`.
 * Each knows its HTTP status and extra headers, so any layer can throw one and
 * the app turns it into the same response.
 */

export interface OpenAIErrorBody {
	error: { message: string; type: string; param: string | null; code: string | null };
}

export class GatewayError extends Error {
	constructor(
		readonly status: number,
		readonly type: string,
		readonly code: string | null,
		message: string,
		readonly param: string | null = null,
		readonly headers: Readonly<Record<string, string>> = {},
	) {
		super(message);
		this.name = "GatewayError";
	}

	body(): OpenAIErrorBody {
		return {
			error: { message: this.message, type: this.type, param: this.param, code: this.code },
		};
	}

	toResponse(extraHeaders?: Readonly<Record<string, string>>): Response {
		return new Response(JSON.stringify(this.body()), {
			status: this.status,
			headers: { "content-type": "application/json", ...this.headers, ...extraHeaders },
		});
	}
}

export function invalidRequest(
	message: string,
	param: string | null = null,
	code: string | null = null,
) {
	return new GatewayError(400, "invalid_request_error", code, message, param);
}

export function modelNotFound(model: string) {
	return new GatewayError(
		404,
		"invalid_request_error",
		"model_not_found",
		`The model '${model}' does not exist or is not served by this gateway.`,
		"model",
	);
}

export function notFound(path: string) {
	return new GatewayError(404, "invalid_request_error", "not_found", `No route for ${path}.`);
}

export function bodyTooLarge(limitBytes: number) {
	return new GatewayError(
		413,
		"invalid_request_error",
		"request_too_large",
		`Request body exceeds the limit of ${limitBytes} bytes.`,
	);
}

export function upstreamUnavailable(message: string, headers: Record<string, string> = {}) {
	return new GatewayError(503, "server_error", "upstream_unavailable", message, null, headers);
}

export function upstreamTimeout(message: string) {
	return new GatewayError(504, "server_error", "upstream_timeout", message);
}

export function internalError(message = "The gateway failed to process the request.") {
	return new GatewayError(500, "server_error", "internal_error", message);
}
