import {
	createRemoteJWKSet,
	customFetch,
	errors,
	type FetchImplementation,
	type JWTPayload,
	type JWTVerifyOptions,
	jwtVerify,
	type RemoteJWKSet,
} from "jose";
import type { GatewayError } from "../errors.ts";
import type { Priority } from "../limits/queue.ts";
import { type Principal, unauthenticated } from "./principal.ts";

export interface JwtSettings {
	/** HS256 shared secret (UTF-8). Exactly one of secret / jwksUrl. */
	readonly secret?: string;
	/** JWKS endpoint for RS256/ES256 (and other asymmetric algs the key set declares). */
	readonly jwksUrl?: string;
	readonly issuer?: string | readonly string[];
	readonly audience?: string | readonly string[];
	/** Allowed algorithms; default ["HS256"] with a secret, ["RS256","ES256"] with JWKS. */
	readonly algorithms?: readonly string[];
	/**
	 * Claim naming the user (default "sub"), the tenant (default "tenant"; may be absent in a
	 * token), the roles (default "roles": an array of strings, or a space/comma-separated string).
	 * Dotted paths like "realm_access.roles" work (Keycloak); a claim whose own name contains dots
	 * (Auth0's "https://example.com/roles") is found too.
	 */
	readonly userClaim?: string;
	readonly tenantClaim?: string;
	readonly rolesClaim?: string;
	/** Claim giving the caller's queue priority (default "priority": high, normal or low; else normal). */
	readonly priorityClaim?: string;
	/** Allowed clock skew, seconds (default 30). */
	readonly clockToleranceS?: number;
	/**
	 * JWKS cache: how long a fetched key set is trusted (default 10 min) and the minimum gap between
	 * refetches when an unknown `kid` shows up (default 30 s) — jose's createRemoteJWKSet options
	 * cacheMaxAge / cooldownDuration.
	 */
	readonly jwksCacheMs?: number;
	readonly jwksCooldownMs?: number;
	/** JWKS fetch timeout, milliseconds (default 3000) — jose's timeoutDuration. */
	readonly jwksTimeoutMs?: number;
}

const DEFAULT_CLOCK_TOLERANCE_S = 30;
const DEFAULT_JWKS_CACHE_MS = 10 * 60_000;
const DEFAULT_JWKS_COOLDOWN_MS = 30_000;
const DEFAULT_JWKS_TIMEOUT_MS = 3_000;
/** After a failed JWKS fetch, further fetches wait this long (at most), so an outage is not hammered. */
const MAX_JWKS_FAILURE_BACKOFF_MS = 5_000;
/** Longer "tokens" are refused before any parsing. */
const MAX_TOKEN_LENGTH = 16_384;
const MAX_USER_LENGTH = 256;
const HMAC_ALGORITHM = /^HS(256|384|512)$/;

/** Why a token was refused: a message that names no part of the token, and the 401 code. */
interface Refusal {
	readonly message: string;
	readonly code: "invalid_token" | "expired_token";
}

function refuse(refusal: Refusal): GatewayError {
	return unauthenticated(refusal.message, refusal.code, "invalid_token");
}

function invalid(message: string): Refusal {
	return { message, code: "invalid_token" };
}

/** A JWKS fetch refused without touching the network, while an earlier failure is fresh. */
class JwksUnavailable extends Error {
	constructor() {
		super("JWKS fetch skipped after a recent failure");
		this.name = "JwksUnavailable";
	}
}

/** Maps whatever jose (or fetch, for a JWKS) threw to a refusal; never echoes the token. */
function refusalFor(err: unknown, remoteKeys: boolean): Refusal {
	if (err instanceof errors.JWTExpired)
		return { message: "The token has expired.", code: "expired_token" };
	if (err instanceof errors.JWTClaimValidationFailed) {
		switch (err.claim) {
			case "iss":
				return invalid("The token's issuer is not accepted.");
			case "aud":
				return invalid("The token's audience is not accepted.");
			case "nbf":
				return invalid("The token is not yet valid.");
			case "iat":
				return invalid("The token's issued-at time is invalid.");
			case "exp":
				return invalid("The token's expiration time is invalid.");
			default:
				return invalid("The token's claims are invalid.");
		}
	}
	if (err instanceof errors.JWSSignatureVerificationFailed)
		return invalid("The token's signature is invalid.");
	if (err instanceof errors.JOSEAlgNotAllowed)
		return invalid("The token's signing algorithm is not accepted.");
	if (err instanceof errors.JWKSNoMatchingKey)
		return invalid("No signing key matches the token's key id.");
	if (err instanceof errors.JWKSMultipleMatchingKeys)
		return invalid("More than one signing key matches the token; it needs a key id.");
	if (err instanceof errors.JWKSTimeout)
		return invalid("The token could not be verified: the signing keys did not arrive in time.");
	if (err instanceof errors.JWKSInvalid || err instanceof errors.JWKInvalid)
		return invalid("The token could not be verified: the published signing keys are invalid.");
	if (err instanceof errors.JOSENotSupported)
		return invalid("The token's algorithm or key type is not supported.");
	if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid)
		return invalid("The token is malformed.");
	// Left: the JWKS endpoint refused, failed or was unreachable (fetch errors are not jose's).
	return invalid(
		remoteKeys
			? "The token could not be verified: the signing keys are unavailable."
			: "The token could not be verified.",
	);
}

function isRecord(value: unknown): value is Record<string, unknown> {
	return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The value of `path` in `claims`: the claim with exactly that name if there is one, otherwise the
 * dotted path walked through nested objects ("realm_access.roles"). Only own properties count.
 */
export function claimAt(claims: unknown, path: string): unknown {
	if (!isRecord(claims)) return undefined;
	if (Object.hasOwn(claims, path)) return claims[path];
	for (let dot = path.indexOf("."); dot !== -1; dot = path.indexOf(".", dot + 1)) {
		const head = path.slice(0, dot);
		if (!Object.hasOwn(claims, head)) continue;
		const found = claimAt(claims[head], path.slice(dot + 1));
		if (found !== undefined) return found;
	}
	return undefined;
}

function identifier(value: unknown): string | undefined {
	if (typeof value === "string") return value.trim() === "" ? undefined : value;
	if (typeof value === "number" && Number.isSafeInteger(value)) return String(value);
	return undefined;
}

/** Roles from an array of strings, or one string separated by spaces and/or commas. */
function rolesOf(value: unknown): string[] {
	const raw =
		typeof value === "string"
			? value.split(/[\s,]+/)
			: Array.isArray(value)
				? value.filter((r): r is string => typeof r === "string").map((r) => r.trim())
				: [];
	return [...new Set(raw.filter((r) => r !== ""))];
}

function nonNegative(value: number | undefined, fallback: number, name: string): number {
	if (value === undefined) return fallback;
	if (!Number.isFinite(value) || value < 0) {
		throw new Error(`JWT settings: ${name} must be a finite number of 0 or more.`);
	}
	return value;
}

function list(
	value: string | readonly string[] | undefined,
	name: string,
): string | string[] | undefined {
	if (value === undefined || typeof value === "string") return value;
	if (value.length === 0) throw new Error(`JWT settings: ${name} must not be an empty list.`);
	return [...value];
}

/**
 * Verifies bearer JWTs (HS* with a shared secret, or asymmetric algorithms with keys from a JWKS
 * endpoint) and maps their claims to a Principal.
 */
export class JwtVerifier {
	private readonly key: Uint8Array | RemoteJWKSet;
	private readonly options: JWTVerifyOptions;
	private readonly userClaim: string;
	private readonly tenantClaim: string;
	private readonly rolesClaim: string;
	private readonly priorityClaim: string;
	/** Epoch ms before which JWKS fetches fail fast, after a failed one. */
	private jwksRetryAt = 0;

	constructor(settings: JwtSettings) {
		const { secret, jwksUrl } = settings;
		if ((secret === undefined) === (jwksUrl === undefined)) {
			throw new Error("JWT settings: configure exactly one of secret and jwksUrl.");
		}
		const algorithms = [
			...(settings.algorithms ?? (secret !== undefined ? ["HS256"] : ["RS256", "ES256"])),
		];
		if (algorithms.length === 0) throw new Error("JWT settings: algorithms must not be empty.");
		for (const alg of algorithms) {
			if (alg.toLowerCase() === "none")
				throw new Error('JWT settings: algorithm "none" is never accepted.');
			// One key, one family: an HMAC secret never verifies RS/ES tokens, and JWKS public keys
			// are never used as HMAC secrets (algorithm confusion).
			if (secret !== undefined && !HMAC_ALGORITHM.test(alg)) {
				throw new Error(`JWT settings: algorithm ${alg} needs a JWKS, not a shared secret.`);
			}
			if (jwksUrl !== undefined && HMAC_ALGORITHM.test(alg)) {
				throw new Error(`JWT settings: algorithm ${alg} needs a shared secret, not a JWKS.`);
			}
		}

		if (secret !== undefined) {
			if (secret === "") throw new Error("JWT settings: secret must not be empty.");
			this.key = new TextEncoder().encode(secret);
		} else {
			let url: URL;
			try {
				url = new URL(jwksUrl ?? "");
			} catch {
				throw new Error("JWT settings: jwksUrl must be an absolute http(s) URL.");
			}
			if (url.protocol !== "https:" && url.protocol !== "http:") {
				throw new Error("JWT settings: jwksUrl must be an absolute http(s) URL.");
			}
			const cooldownMs = nonNegative(
				settings.jwksCooldownMs,
				DEFAULT_JWKS_COOLDOWN_MS,
				"jwksCooldownMs",
			);
			const timeoutMs = Math.ceil(
				nonNegative(settings.jwksTimeoutMs, DEFAULT_JWKS_TIMEOUT_MS, "jwksTimeoutMs"),
			);
			const backoffMs = Math.min(cooldownMs, MAX_JWKS_FAILURE_BACKOFF_MS);
			const fetchJwks: FetchImplementation = async (href, init) => {
				if (Date.now() < this.jwksRetryAt) throw new JwksUnavailable();
				try {
					const response = await fetch(href, init);
					if (response.status !== 200) this.jwksRetryAt = Date.now() + backoffMs;
					return response;
				} catch (err) {
					this.jwksRetryAt = Date.now() + backoffMs;
					throw err;
				}
			};
			this.key = createRemoteJWKSet(url, {
				cacheMaxAge: nonNegative(settings.jwksCacheMs, DEFAULT_JWKS_CACHE_MS, "jwksCacheMs"),
				cooldownDuration: cooldownMs,
				timeoutDuration: timeoutMs,
				[customFetch]: fetchJwks,
			});
		}

		const issuer = list(settings.issuer, "issuer");
		const audience = list(settings.audience, "audience");
		this.options = {
			algorithms,
			clockTolerance: nonNegative(
				settings.clockToleranceS,
				DEFAULT_CLOCK_TOLERANCE_S,
				"clockToleranceS",
			),
			...(issuer === undefined ? {} : { issuer }),
			...(audience === undefined ? {} : { audience }),
			// A token that never expires cannot be taken back: refuse it.
			requiredClaims: ["exp"],
		};
		this.userClaim = settings.userClaim ?? "sub";
		this.tenantClaim = settings.tenantClaim ?? "tenant";
		this.rolesClaim = settings.rolesClaim ?? "roles";
		this.priorityClaim = settings.priorityClaim ?? "priority";
	}

	/**
	 * Verifies a compact JWS and maps its claims to a Principal (via: "jwt"). Throws the
	 * GatewayError from unauthenticated(): code "expired_token" for an expired token,
	 * "invalid_token" for every other failure. Never leaks the token in the message.
	 */
	async verify(token: string): Promise<Principal> {
		if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) {
			throw refuse(invalid("The token is malformed."));
		}
		let payload: JWTPayload;
		try {
			payload = (await jwtVerify(token, this.key, this.options)).payload;
		} catch (err) {
			throw refuse(refusalFor(err, !(this.key instanceof Uint8Array)));
		}

		const user = identifier(claimAt(payload, this.userClaim));
		if (user === undefined) {
			throw refuse(invalid(`The token has no "${this.userClaim}" claim naming the user.`));
		}
		if (user.length > MAX_USER_LENGTH) {
			throw refuse(
				invalid(
					`The token's "${this.userClaim}" claim is longer than ${MAX_USER_LENGTH} characters.`,
				),
			);
		}
		const priority = priorityOf(claimAt(payload, this.priorityClaim));
		return {
			user,
			tenant: identifier(claimAt(payload, this.tenantClaim)),
			roles: rolesOf(claimAt(payload, this.rolesClaim)),
			via: "jwt",
			...(priority === undefined ? {} : { priority }),
		};
	}
}

/** A priority claim's value: high, normal or low (any case); anything else is no priority. */
function priorityOf(value: unknown): Priority | undefined {
	if (typeof value !== "string") return undefined;
	const v = value.trim().toLowerCase();
	return v === "high" || v === "normal" || v === "low" ? v : undefined;
}
