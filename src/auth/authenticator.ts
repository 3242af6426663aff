import { createHash, timingSafeEqual } from "node:crypto";
import type { ApiKeyConfig, AuthConfig } from "../config/schema.ts";
import { invalidRequest } from "../errors.ts";
import type { JwtVerifier } from "./jwt.ts";
import { ADMIN_ROLE, forbidden, type Principal, unauthenticated } from "./principal.ts";

const MAX_USER_ID_LENGTH = 256;
/** Keys the gateway issues look like `trl_<id>_<secret>`: the id finds the record, the hash proves the key. */
const ISSUED_KEY = /^trl_([A-Za-z0-9-]+)_[A-Za-z0-9]+$/;
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** Where API keys are looked up: the configuration's, and those issued at runtime. */
export interface KeyDirectory {
	byId(id: string): ApiKeyConfig | undefined;
	bySha256(hex: string): ApiKeyConfig | undefined;
}

/** The keys listed in the configuration file. */
export class StaticKeys implements KeyDirectory {
	private readonly ids = new Map<string, ApiKeyConfig>();
	private readonly hashes = new Map<string, ApiKeyConfig>();

	constructor(keys: readonly ApiKeyConfig[]) {
		for (const k of keys) {
			this.ids.set(k.id, k);
			this.hashes.set(k.sha256, k);
		}
	}

	byId(id: string): ApiKeyConfig | undefined {
		return this.ids.get(id);
	}

	bySha256(hex: string): ApiKeyConfig | undefined {
		return this.hashes.get(hex);
	}
}

export function sha256Hex(text: string): string {
	return createHash("sha256").update(text).digest("hex");
}

/** Constant-time equality of two hex digests. */
function sameDigest(a: string, b: string): boolean {
	const x = Buffer.from(a, "hex");
	const y = Buffer.from(b, "hex");
	return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

function bearer(request: Request): string | undefined {
	const header = request.headers.get("authorization");
	if (header === null) return undefined;
	const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
	if (match?.[1] === undefined) {
		throw unauthenticated(
			"The Authorization header must be 'Bearer <key or token>'.",
			"invalid_authorization",
			"invalid_request",
		);
	}
	return match[1];
}

/**
 * Establishes who is calling. With `auth.mode: none` (development only) the
 * seed's `X-User-ID` names the user; with api-key or jwt the credentials do and
 * `X-User-ID` is ignored, so nobody can choose whose budget to spend.
 */
export class Authenticator {
	constructor(
		private readonly config: AuthConfig,
		private readonly keys: KeyDirectory,
		private readonly jwt: JwtVerifier | undefined,
	) {}

	/** Whether callers must present credentials (any mode besides none). */
	get required(): boolean {
		return !this.config.modes.has("none");
	}

	/** Whether any authentication is configured at all. */
	get enabled(): boolean {
		return this.config.modes.has("api-key") || this.config.modes.has("jwt");
	}

	async authenticate(request: Request): Promise<Principal> {
		const modes = this.config.modes;
		const apiKeyHeader = request.headers.get("x-api-key");
		const token = bearer(request);
		if (modes.has("api-key") && apiKeyHeader !== null) return this.apiKey(apiKeyHeader);
		if (token !== undefined) {
			// Without API keys every bearer token is taken for a JWT (and refused as one if it is not).
			if (
				modes.has("jwt") &&
				this.jwt !== undefined &&
				(JWT_SHAPE.test(token) || !modes.has("api-key"))
			) {
				return this.jwt.verify(token);
			}
			if (modes.has("api-key")) return this.apiKey(token);
		}
		if (modes.has("none")) return this.fromUserHeader(request);
		throw unauthenticated(
			modes.has("api-key")
				? "Missing credentials: send 'Authorization: Bearer <API key or token>' or 'X-API-Key'."
				: "Missing credentials: send 'Authorization: Bearer <token>'.",
			"missing_credentials",
		);
	}

	/**
	 * `admin` may use the admin API; everyone else gets 403. Only with no
	 * authentication configured at all (development) is it open. A caller named
	 * by `X-User-ID` (mode none beside real modes) never has admin rights.
	 */
	requireAdmin(principal: Principal): void {
		if (!this.enabled) return;
		if (principal.via === "none" || !principal.roles.includes(ADMIN_ROLE)) {
			throw forbidden("This operation needs the admin role.");
		}
	}

	/** An authenticated caller may read their own usage; admins may read anyone's. */
	requireSelfOrAdmin(principal: Principal, user: string): void {
		if (!this.enabled) return;
		const admin = principal.via !== "none" && principal.roles.includes(ADMIN_ROLE);
		const self = principal.via !== "none" && principal.user === user;
		if (!admin && !self) throw forbidden("You may read only your own usage.");
	}

	private apiKey(presented: string): Principal {
		const hex = sha256Hex(presented);
		const issued = ISSUED_KEY.exec(presented);
		// An issued key names its record; any other key (or a key whose embedded id is not
		// its configured id) is found by its hash. Either way the digests are compared in constant time.
		const byId = issued?.[1] !== undefined ? this.keys.byId(issued[1]) : undefined;
		const record =
			byId !== undefined && sameDigest(byId.sha256, hex) ? byId : this.keys.bySha256(hex);
		if (record === undefined || !sameDigest(record.sha256, hex)) {
			throw unauthenticated("Invalid API key.", "invalid_api_key", "invalid_token");
		}
		return {
			user: record.user,
			tenant: record.tenant,
			roles: record.roles,
			via: "api-key",
			keyId: record.id,
			...(record.priority === undefined ? {} : { priority: record.priority }),
		};
	}

	private fromUserHeader(request: Request): Principal {
		const header = request.headers.get("x-user-id")?.trim();
		if (header === undefined || header === "")
			return { user: "anonymous", tenant: undefined, roles: [], via: "none" };
		if (header.length > MAX_USER_ID_LENGTH) {
			throw invalidRequest(
				`X-User-ID must be at most ${MAX_USER_ID_LENGTH} characters.`,
				"X-User-ID",
				"invalid_user_id",
			);
		}
		const tenant = request.headers.get("x-tenant-id")?.trim();
		return {
			user: header,
			tenant: tenant === undefined || tenant === "" ? undefined : tenant,
			roles: [],
			via: "none",
		};
	}
}
