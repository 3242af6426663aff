import { invalidRequest } from "../errors.ts";
import type { Principal } from "../gateway.ts";

const MAX_USER_ID_LENGTH = 256;

/**
 * Who is calling. Until real authentication is configured the gateway trusts
 * the seed's `X-User-ID` header; a request without it spends the `anonymous`
 * budget. Every route asks this one function.
 */
export function identify(request: Request): Principal {
	const header = request.headers.get("x-user-id");
	if (header === null || header.trim() === "") return { user: "anonymous" };
	const user = header.trim();
	if (user.length > MAX_USER_ID_LENGTH) {
		throw invalidRequest(
			`X-User-ID must be at most ${MAX_USER_ID_LENGTH} characters.`,
			"X-User-ID",
			"invalid_user_id",
		);
	}
	return { user };
}
