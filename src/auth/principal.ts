import { GatewayError } from "../errors.ts";
import type { Priority } from "../limits/queue.ts";

/** Who is calling, once authenticated: whose budget is spent and what they may do. */
export interface Principal {
	/** The user whose budget is spent. */
	readonly user: string;
	/** The tenant (team, organisation) the user belongs to, if any. */
	readonly tenant: string | undefined;
	readonly roles: readonly string[];
	/** How the caller was identified. */
	readonly via: "none" | "api-key" | "jwt";
	/** The API key's id (never the key), when identified by one. */
	readonly keyId?: string;
	/** Its place in a model's queue for slots (the key's `priority`, or the token's claim); default normal. */
	readonly priority?: Priority;
	// A key's own limits are the user's: src/limits/policy.ts finds them by user, for every request.
}

export const ADMIN_ROLE = "admin";

/**
 * 401 with a `WWW-Authenticate` challenge (RFC 6750), in OpenAI's error shape.
 * `code` is one of missing_credentials | invalid_api_key | invalid_token | expired_token.
 */
export function unauthenticated(
	message: string,
	code: string,
	challengeError?: "invalid_token" | "invalid_request",
): GatewayError {
	const challenge =
		challengeError === undefined
			? 'Bearer realm="token-rate-limiter"'
			: `Bearer realm="token-rate-limiter", error="${challengeError}", error_description="${message.replaceAll('"', "'")}"`;
	return new GatewayError(401, "authentication_error", code, message, null, {
		"www-authenticate": challenge,
	});
}

/** 403: authenticated, but not allowed to do this. */
export function forbidden(message: string): GatewayError {
	return new GatewayError(403, "permission_error", "forbidden", message);
}
