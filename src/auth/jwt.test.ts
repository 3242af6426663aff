import { afterAll, beforeAll, describe, expect, it } from "bun:test";
import {
	base64url,
	type CryptoKey,
	exportJWK,
	exportSPKI,
	generateKeyPair,
	type JWK,
	type JWTPayload,
	SignJWT,
	UnsecuredJWT,
} from "jose";
import { GatewayError } from "../errors.ts";
import { claimAt, JwtVerifier } from "./jwt.ts";
import type { Principal } from "./principal.ts";

/**
 * JwtVerifier with real signatures: HS256 with a shared secret, RS256/ES256 from a real JWKS
 * endpoint served on 127.0.0.1 (key rotation, caching, outage).
 */

const SECRET = "0123456789abcdef0123456789abcdef";
const OTHER_SECRET = "fedcba9876543210fedcba9876543210";
const ISSUER = "https://idp.test";
const AUDIENCE = "gateway";

interface SignOptions {
	readonly alg?: string;
	readonly kid?: string;
	readonly issuer?: string;
	readonly audience?: string;
	/** Relative like "5m" / "-2m", or absent for no exp claim. */
	readonly expiresIn?: string | null;
	readonly notBefore?: string;
}

function sign(
	claims: JWTPayload,
	key: CryptoKey | Uint8Array,
	options: SignOptions = {},
): Promise<string> {
	const jwt = new SignJWT(claims)
		.setProtectedHeader({
			alg: options.alg ?? "HS256",
			typ: "JWT",
			...(options.kid === undefined ? {} : { kid: options.kid }),
		})
		.setIssuer(options.issuer ?? ISSUER)
		.setAudience(options.audience ?? AUDIENCE)
		.setIssuedAt();
	if (options.expiresIn !== null) jwt.setExpirationTime(options.expiresIn ?? "5m");
	if (options.notBefore !== undefined) jwt.setNotBefore(options.notBefore);
	return jwt.sign(key);
}

const secretKey = (s: string) => new TextEncoder().encode(s);

/** The GatewayError a failed verification throws (anything else fails the test). */
async function refusal(verifier: JwtVerifier, token: string): Promise<GatewayError> {
	let thrown: unknown;
	try {
		await verifier.verify(token);
	} catch (err) {
		thrown = err;
	}
	if (!(thrown instanceof GatewayError)) {
		throw new Error(`expected a GatewayError, got ${String(thrown)}`);
	}
	expect(thrown.status).toBe(401);
	expect(thrown.type).toBe("authentication_error");
	const challenge = thrown.headers["www-authenticate"] ?? "";
	expect(challenge).toContain('error="invalid_token"');
	// The token (or any of its parts) never shows up in what the client sees.
	for (const part of token.split(".").filter((p) => p.length > 8)) {
		expect(thrown.message).not.toContain(part);
		expect(challenge).not.toContain(part);
	}
	return thrown;
}

async function expectCode(
	verifier: JwtVerifier,
	token: string,
	code: string,
): Promise<GatewayError> {
	const err = await refusal(verifier, token);
	expect(err.code).toBe(code);
	return err;
}

describe("HS256 with a shared secret", () => {
	const verifier = new JwtVerifier({ secret: SECRET, issuer: ISSUER, audience: AUDIENCE });

	it("maps a valid token to a principal with user, tenant and roles", async () => {
		const token = await sign(
			{ sub: "dave", tenant: "team-d", roles: ["user", "admin"] },
			secretKey(SECRET),
		);
		expect(await verifier.verify(token)).toEqual({
			user: "dave",
			tenant: "team-d",
			roles: ["user", "admin"],
			via: "jwt",
		});
	});

	it("accepts roles as a space- or comma-separated string, and no tenant", async () => {
		const token = await sign({ sub: "erin", roles: "user  admin,ops, user" }, secretKey(SECRET));
		const principal = await verifier.verify(token);
		expect(principal.user).toBe("erin");
		expect(principal.tenant).toBeUndefined();
		expect(principal.roles).toEqual(["user", "admin", "ops"]);
	});

	it("reads the caller's queue priority from its claim (high, normal, low; anything else: none)", async () => {
		const high = await sign({ sub: "fay", priority: "HIGH" }, secretKey(SECRET));
		expect((await verifier.verify(high)).priority).toBe("high");
		const odd = await sign({ sub: "fay", priority: "urgent" }, secretKey(SECRET));
		expect((await verifier.verify(odd)).priority).toBeUndefined();
		const named = new JwtVerifier({ secret: SECRET, priorityClaim: "tier" });
		const low = await sign({ sub: "fay", tier: "low" }, secretKey(SECRET));
		expect((await named.verify(low)).priority).toBe("low");
	});

	it("gives no roles when the claim is absent or not a list", async () => {
		const none = await sign({ sub: "erin" }, secretKey(SECRET));
		expect((await verifier.verify(none)).roles).toEqual([]);
		const odd = await sign({ sub: "erin", roles: { admin: true } }, secretKey(SECRET));
		expect((await verifier.verify(odd)).roles).toEqual([]);
	});

	it("follows dotted claim paths (Keycloak) and claim names with dots (Auth0)", async () => {
		const keycloak = new JwtVerifier({
			secret: SECRET,
			userClaim: "preferred_username",
			tenantClaim: "org.id",
			rolesClaim: "realm_access.roles",
		});
		const token = await sign(
			{
				sub: "f:1234",
				preferred_username: "frank",
				org: { id: "acme" },
				realm_access: { roles: ["admin", "offline_access"] },
			},
			secretKey(SECRET),
		);
		expect(await keycloak.verify(token)).toEqual({
			user: "frank",
			tenant: "acme",
			roles: ["admin", "offline_access"],
			via: "jwt",
		});

		const auth0 = new JwtVerifier({ secret: SECRET, rolesClaim: "https://gw.example.com/roles" });
		const namespaced = await sign(
			{ sub: "auth0|42", "https://gw.example.com/roles": ["admin"] },
			secretKey(SECRET),
		);
		expect((await auth0.verify(namespaced)).roles).toEqual(["admin"]);
	});

	it("refuses a token without the user claim: 401 invalid_token", async () => {
		const token = await sign({ tenant: "team-d", roles: ["admin"] }, secretKey(SECRET));
		const err = await expectCode(verifier, token, "invalid_token");
		expect(err.message).toContain('"sub"');
		const empty = await sign({ sub: "  " }, secretKey(SECRET));
		await expectCode(verifier, empty, "invalid_token");
	});

	it("refuses an expired token: 401 expired_token with an invalid_token challenge", async () => {
		const token = await sign({ sub: "dave" }, secretKey(SECRET), { expiresIn: "-2m" });
		const err = await expectCode(verifier, token, "expired_token");
		expect(err.headers["www-authenticate"]).toContain('error="invalid_token"');
		expect(err.headers["www-authenticate"]).toStartWith("Bearer ");
	});

	it("tolerates clock skew within clockToleranceS", async () => {
		const token = await sign({ sub: "dave" }, secretKey(SECRET), { expiresIn: "-10s" });
		expect((await verifier.verify(token)).user).toBe("dave");
		const strict = new JwtVerifier({ secret: SECRET, clockToleranceS: 0 });
		await expectCode(strict, token, "expired_token");
	});

	it("refuses a token that is not yet valid (nbf in the future)", async () => {
		const token = await sign({ sub: "dave" }, secretKey(SECRET), { notBefore: "10m" });
		const err = await expectCode(verifier, token, "invalid_token");
		expect(err.message).toContain("not yet valid");
	});

	it("refuses a token signed with another secret", async () => {
		const token = await sign({ sub: "dave" }, secretKey(OTHER_SECRET));
		const err = await expectCode(verifier, token, "invalid_token");
		expect(err.message).toContain("signature");
	});

	it("refuses a wrong audience and a wrong issuer", async () => {
		const aud = await sign({ sub: "dave" }, secretKey(SECRET), { audience: "another-service" });
		expect((await expectCode(verifier, aud, "invalid_token")).message).toContain("audience");
		const iss = await sign({ sub: "dave" }, secretKey(SECRET), { issuer: "https://evil.test" });
		expect((await expectCode(verifier, iss, "invalid_token")).message).toContain("issuer");
	});

	it("accepts any of several issuers / audiences", async () => {
		const multi = new JwtVerifier({
			secret: SECRET,
			issuer: ["a", ISSUER],
			audience: ["x", AUDIENCE],
		});
		const token = await sign({ sub: "dave" }, secretKey(SECRET));
		expect((await multi.verify(token)).user).toBe("dave");
	});

	it('refuses alg "none", even with valid claims', async () => {
		const now = Math.floor(Date.now() / 1000);
		const unsecured = new UnsecuredJWT({ sub: "root", roles: ["admin"] })
			.setIssuer(ISSUER)
			.setAudience(AUDIENCE)
			.setIssuedAt(now)
			.setExpirationTime(now + 300)
			.encode();
		await expectCode(verifier, unsecured, "invalid_token");
		// The same with a (bogus) signature part appended.
		await expectCode(verifier, `${unsecured}${base64url.encode("sig")}`, "invalid_token");
	});

	it("refuses algorithms outside the allowed list (HS512 when only HS256 is allowed)", async () => {
		const token = await sign({ sub: "dave" }, secretKey(SECRET), { alg: "HS512" });
		await expectCode(verifier, token, "invalid_token");
		const hs512 = new JwtVerifier({ secret: SECRET, algorithms: ["HS256", "HS512"] });
		expect((await hs512.verify(token)).user).toBe("dave");
	});

	it("refuses malformed tokens", async () => {
		for (const junk of [
			"",
			"abc",
			"a.b.c",
			"eyJhbGciOiJIUzI1NiJ9.e30.",
			`x.${"y".repeat(20_000)}.z`,
		]) {
			await expectCode(verifier, junk, "invalid_token");
		}
	});

	it("refuses inconsistent settings at construction", () => {
		expect(() => new JwtVerifier({})).toThrow(/exactly one/);
		expect(() => new JwtVerifier({ secret: SECRET, jwksUrl: "http://127.0.0.1/jwks" })).toThrow(
			/exactly one/,
		);
		expect(() => new JwtVerifier({ secret: SECRET, algorithms: ["none"] })).toThrow(/none/);
		expect(() => new JwtVerifier({ secret: SECRET, algorithms: ["RS256"] })).toThrow(/JWKS/);
		expect(
			() => new JwtVerifier({ jwksUrl: "http://127.0.0.1/jwks", algorithms: ["HS256"] }),
		).toThrow(/secret/);
		expect(() => new JwtVerifier({ jwksUrl: "file:///etc/jwks.json" })).toThrow(/http/);
		expect(() => new JwtVerifier({ secret: SECRET, clockToleranceS: -1 })).toThrow(
			/clockToleranceS/,
		);
		expect(() => new JwtVerifier({ secret: SECRET, audience: [] })).toThrow(/audience/);
	});
});

describe("claimAt", () => {
	it("prefers the exact claim name, then walks the dotted path through own properties", () => {
		const claims = { "a.b": 1, a: { b: 2, c: { d: 3 } }, "x.y": { z: 4 } };
		expect(claimAt(claims, "a.b")).toBe(1);
		expect(claimAt(claims, "a.c.d")).toBe(3);
		expect(claimAt(claims, "x.y.z")).toBe(4);
		expect(claimAt(claims, "a.missing")).toBeUndefined();
		expect(claimAt(claims, "constructor")).toBeUndefined();
		expect(claimAt(claims, "a.__proto__")).toBeUndefined();
		expect(claimAt(claims, "a.b.toString")).toBeUndefined();
	});
});

// --- JWKS -------------------------------------------------------------------------------------

interface SigningKey {
	readonly kid: string;
	readonly alg: string;
	readonly privateKey: CryptoKey;
	readonly publicKey: CryptoKey;
	readonly jwk: JWK;
}

async function signingKey(alg: "RS256" | "ES256", kid: string): Promise<SigningKey> {
	const { privateKey, publicKey } = await generateKeyPair(alg);
	const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: "sig" };
	return { kid, alg, privateKey, publicKey, jwk };
}

/** A JWKS endpoint whose keys (and health) the test controls, counting requests. */
class JwksServer {
	keys: SigningKey[] = [];
	status = 200;
	/** Never answer (to trigger the fetch timeout). */
	hang = false;
	hits = 0;
	private readonly server = Bun.serve({
		hostname: "127.0.0.1",
		port: 0,
		fetch: async (request) => {
			if (new URL(request.url).pathname !== "/jwks")
				return new Response("not found", { status: 404 });
			this.hits++;
			if (this.hang) await new Promise<void>((resolve) => setTimeout(resolve, 2_000));
			if (this.status !== 200) return new Response("unavailable", { status: this.status });
			return Response.json({ keys: this.keys.map((k) => k.jwk) });
		},
	});

	get url(): string {
		return `http://127.0.0.1:${this.server.port}/jwks`;
	}

	stop(): void {
		this.server.stop(true);
	}
}

const tokenFor = (
	key: SigningKey,
	claims: JWTPayload = { sub: "grace", tenant: "team-g", roles: ["user"] },
) => sign(claims, key.privateKey, { alg: key.alg, kid: key.kid });

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe("asymmetric keys from a JWKS endpoint", () => {
	let jwks: JwksServer;
	let rsa: SigningKey;
	let ec: SigningKey;

	beforeAll(async () => {
		jwks = new JwksServer();
		rsa = await signingKey("RS256", "rsa-1");
		ec = await signingKey("ES256", "ec-1");
	});

	afterAll(() => jwks.stop());

	const verifierFor = (
		extra: Partial<{ jwksCacheMs: number; jwksCooldownMs: number; jwksTimeoutMs: number }> = {},
	) => new JwtVerifier({ jwksUrl: jwks.url, issuer: ISSUER, audience: AUDIENCE, ...extra });

	it("verifies RS256 and ES256 tokens", async () => {
		jwks.keys = [rsa, ec];
		const verifier = verifierFor();
		const expected: Principal = { user: "grace", tenant: "team-g", roles: ["user"], via: "jwt" };
		expect(await verifier.verify(await tokenFor(rsa))).toEqual(expected);
		expect(await verifier.verify(await tokenFor(ec))).toEqual(expected);
	});

	it("still checks claims: expired, wrong audience, missing user", async () => {
		jwks.keys = [rsa];
		const verifier = verifierFor();
		const expired = await sign({ sub: "grace" }, rsa.privateKey, {
			alg: "RS256",
			kid: rsa.kid,
			expiresIn: "-5m",
		});
		await expectCode(verifier, expired, "expired_token");
		const aud = await sign({ sub: "grace" }, rsa.privateKey, {
			alg: "RS256",
			kid: rsa.kid,
			audience: "other",
		});
		await expectCode(verifier, aud, "invalid_token");
		await expectCode(verifier, await tokenFor(rsa, { tenant: "t" }), "invalid_token");
	});

	it("refuses a token signed by a key that is not in the set (forged kid)", async () => {
		jwks.keys = [rsa];
		const impostor = await signingKey("RS256", "rsa-1"); // same kid, different key
		await expectCode(verifierFor(), await tokenFor(impostor), "invalid_token");
	});

	it("refuses HS256 tokens (algorithm confusion), none, and HS256 keyed with the public key", async () => {
		jwks.keys = [rsa];
		const verifier = verifierFor();
		const hs = await sign({ sub: "mallory" }, secretKey(SECRET), { kid: rsa.kid });
		expect((await expectCode(verifier, hs, "invalid_token")).message).toContain("algorithm");
		// The classic attack: HMAC keyed with the verifier's own public key (PEM and JWK JSON).
		const pem = await exportSPKI(rsa.publicKey);
		const withPem = await sign({ sub: "mallory" }, secretKey(pem), { kid: rsa.kid });
		await expectCode(verifier, withPem, "invalid_token");
		const withJwk = await sign({ sub: "mallory" }, secretKey(JSON.stringify(rsa.jwk)), {
			kid: rsa.kid,
		});
		await expectCode(verifier, withJwk, "invalid_token");
		const none = new UnsecuredJWT({ sub: "mallory" })
			.setIssuer(ISSUER)
			.setAudience(AUDIENCE)
			.encode();
		expect((await expectCode(verifier, none, "invalid_token")).message).toContain("algorithm");
		// The genuine RS256 token still verifies with the same verifier.
		expect((await verifier.verify(await tokenFor(rsa))).user).toBe("grace");
	});

	it("caches the key set: many verifications with a known kid fetch it once", async () => {
		jwks.keys = [rsa, ec];
		const verifier = verifierFor();
		const token = await tokenFor(rsa);
		const before = jwks.hits;
		await Promise.all(Array.from({ length: 50 }, () => verifier.verify(token)));
		for (let i = 0; i < 50; i++) await verifier.verify(token);
		expect(jwks.hits - before).toBe(1);
	});

	it("does not refetch for unknown kids within the cooldown", async () => {
		jwks.keys = [rsa];
		const verifier = verifierFor(); // default cooldown, 30 s
		await verifier.verify(await tokenFor(rsa));
		const before = jwks.hits;
		const stranger = await tokenFor(await signingKey("RS256", "unknown-kid"));
		for (let i = 0; i < 20; i++) await expectCode(verifier, stranger, "invalid_token");
		expect(jwks.hits - before).toBe(0);
	});

	it("follows key rotation: a new kid triggers a refetch once the cooldown has passed", async () => {
		jwks.keys = [rsa];
		const verifier = verifierFor({ jwksCooldownMs: 200 });
		await verifier.verify(await tokenFor(rsa));
		const afterFirst = jwks.hits;

		const rotated = await signingKey("ES256", "ec-2");
		jwks.keys = [rotated];
		const token = await tokenFor(rotated, { sub: "heidi" });
		// Within the cooldown the new kid is not fetched yet.
		await expectCode(verifier, token, "invalid_token");
		expect(jwks.hits).toBe(afterFirst);

		await sleep(250);
		expect((await verifier.verify(token)).user).toBe("heidi");
		expect(jwks.hits).toBe(afterFirst + 1);

		// Cached again: many more verifications of the same kid, no more fetches.
		for (let i = 0; i < 100; i++) await verifier.verify(token);
		expect(jwks.hits).toBe(afterFirst + 1);

		// The retired key is gone from the set: its tokens no longer verify.
		await sleep(250);
		await expectCode(verifier, await tokenFor(rsa), "invalid_token");
		expect(jwks.hits).toBeLessThanOrEqual(afterFirst + 2);
	});

	it("refetches the key set once it is older than jwksCacheMs", async () => {
		jwks.keys = [rsa];
		const verifier = verifierFor({ jwksCacheMs: 150 });
		const token = await tokenFor(rsa);
		const before = jwks.hits;
		await verifier.verify(token);
		await verifier.verify(token);
		expect(jwks.hits - before).toBe(1);
		await sleep(200);
		await verifier.verify(token);
		expect(jwks.hits - before).toBe(2);
	});

	it("refuses with invalid_token when the endpoint errors, and backs off instead of hammering it", async () => {
		jwks.keys = [rsa];
		jwks.status = 503;
		try {
			const verifier = verifierFor({ jwksCooldownMs: 30_000 });
			const token = await tokenFor(rsa);
			const before = jwks.hits;
			for (let i = 0; i < 20; i++) {
				const err = await expectCode(verifier, token, "invalid_token");
				expect(err.message).toContain("unavailable");
			}
			expect(jwks.hits - before).toBe(1);
		} finally {
			jwks.status = 200;
		}
	});

	it("recovers after an outage once the backoff has passed", async () => {
		jwks.keys = [rsa];
		jwks.status = 500;
		const verifier = verifierFor({ jwksCooldownMs: 100 });
		const token = await tokenFor(rsa);
		await expectCode(verifier, token, "invalid_token");
		jwks.status = 200;
		await sleep(150);
		expect((await verifier.verify(token)).user).toBe("grace");
	});

	it("refuses with invalid_token when the endpoint does not answer in time", async () => {
		jwks.keys = [rsa];
		jwks.hang = true;
		try {
			const verifier = verifierFor({ jwksTimeoutMs: 200 });
			const started = performance.now();
			const err = await expectCode(verifier, await tokenFor(rsa), "invalid_token");
			expect(performance.now() - started).toBeLessThan(1_500);
			expect(err.message).toContain("in time");
		} finally {
			jwks.hang = false;
		}
	});

	it("refuses with invalid_token when the endpoint is down (connection refused)", async () => {
		const gone = new JwksServer();
		const url = gone.url;
		gone.stop();
		const verifier = new JwtVerifier({ jwksUrl: url, issuer: ISSUER, audience: AUDIENCE });
		const err = await expectCode(verifier, await tokenFor(rsa), "invalid_token");
		expect(err.message).toContain("unavailable");
		// And again, within the backoff, without a network round-trip.
		await expectCode(verifier, await tokenFor(ec), "invalid_token");
	});

	it("refuses with invalid_token when the endpoint serves something that is not a key set", async () => {
		const bad = Bun.serve({
			hostname: "127.0.0.1",
			port: 0,
			fetch: () => new Response("<html>login</html>", { headers: { "content-type": "text/html" } }),
		});
		try {
			const verifier = new JwtVerifier({ jwksUrl: `http://127.0.0.1:${bad.port}/jwks` });
			await expectCode(verifier, await tokenFor(rsa), "invalid_token");
		} finally {
			bad.stop(true);
		}
	});
});
