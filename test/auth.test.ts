import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { createHash } from "node:crypto";
import { SignJWT } from "jose";
import OpenAI from "openai";
import { type HandledGateway, handleGateway, send, startGateway } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { admitted, allSettled } from "./support/wait.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/**
 * Who is calling: API keys and JWTs identify the caller, X-User-ID is ignored
 * once authentication is on, roles guard the admin API, and tenants share a budget.
 */

const sha = (key: string) => `sha256:${createHash("sha256").update(key).digest("hex")}`;
const ALICE_KEY = "trl_app-a_4f9c2d1e8b7a6c5d4e3f2a1b0c9d8e7f";
const CAROL_KEY = "trl_app-c_0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const OPS_KEY = "trl_ops_9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";
const LEGACY_KEY = "legacy-plain-key-of-bob-1234567890";
const JWT_SECRET = "0123456789abcdef0123456789abcdef";

let mock: MockVllm;
/** Asked in-process (`handleGateway`): no test here but the OpenAI client's needs a socket. */
let gw: HandledGateway;

function config(upstream: string): string {
	return `server:
  max-body-bytes: 65536
auth:
  mode: [api-key, jwt]
  api-keys:
    - id: app-a
      hash: ${sha(ALICE_KEY)}
      user: alice
      tenant: team-a
      roles: [user]
    - id: app-c
      hash: ${sha(CAROL_KEY)}
      user: carol
      tenant: team-a
    - id: ops
      hash: ${sha(OPS_KEY)}
      user: ops
      roles: [admin]
    - id: legacy
      hash: ${sha(LEGACY_KEY)}
      user: bob
      tenant: team-b
      limits:
        max-tokens-per-minute: 100
  jwt:
    secret: ${JWT_SECRET}
    issuer: trl-test
    audience: gateway
token:
  rate-limit:
    models:
      llama2-7b:
        max-tokens-per-minute: 10000
        max-tokens-per-day: 100000
        max-concurrent-requests: 50
        tenant:
          max-tokens-per-minute: 1500
vllm:
  services:
    llama2-7b: ${upstream}
logging:
  level: silent
`;
}

beforeAll(async () => {
	mock = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 0 } });
	gw = await handleGateway(config(mock.url));
});

afterAll(async () => {
	await gw.stop();
	await mock.stop();
});

function chat(headers: Record<string, string>, maxTokens = 10) {
	return send(gw, "/v1/chat/completions", {
		method: "POST",
		headers: { "content-type": "application/json", ...headers },
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
			max_tokens: maxTokens,
		}),
	});
}

async function errorOf(res: Response) {
	return ((await res.json()) as { error: { code: string; type: string; message: string } }).error;
}

async function dayUsed(user: string, key = OPS_KEY): Promise<number> {
	const res = await send(gw, `/api/v1/admin/token-usage/llama2-7b/${user}`, {
		headers: { authorization: `Bearer ${key}` },
	});
	expect(res.status).toBe(200);
	const body = (await res.json()) as { windows: { window: string; used: number }[] };
	return body.windows.find((w) => w.window === "day")?.used ?? -1;
}

function jwt(
	claims: Record<string, unknown>,
	options: { expiresIn?: string; audience?: string; secret?: string } = {},
) {
	return new SignJWT(claims)
		.setProtectedHeader({ alg: "HS256" })
		.setIssuer("trl-test")
		.setAudience(options.audience ?? "gateway")
		.setIssuedAt()
		.setExpirationTime(options.expiresIn ?? "5m")
		.sign(new TextEncoder().encode(options.secret ?? JWT_SECRET));
}

describe("API keys", () => {
	it("refuses a request without credentials with 401 and a WWW-Authenticate challenge", async () => {
		const res = await chat({});
		expect(res.status).toBe(401);
		expect(res.headers.get("www-authenticate")).toContain('Bearer realm="token-rate-limiter"');
		const err = await errorOf(res);
		expect(err.code).toBe("missing_credentials");
		expect(err.type).toBe("authentication_error");
	});

	it("refuses an unknown key and a malformed Authorization header", async () => {
		const wrong = await chat({ authorization: "Bearer trl_app-a_0000000000000000000000000000000" });
		expect(wrong.status).toBe(401);
		expect((await errorOf(wrong)).code).toBe("invalid_api_key");
		expect(wrong.headers.get("www-authenticate")).toContain('error="invalid_token"');
		const basic = await chat({ authorization: "Basic YWxpY2U6c2VjcmV0" });
		expect(basic.status).toBe(401);
		expect(await chat({ "x-api-key": "nonsense" }).then((r) => r.status)).toBe(401);
	});

	it("accepts a key as Bearer or X-API-Key and spends its user's budget, ignoring X-User-ID", async () => {
		const before = await dayUsed("alice");
		expect(
			(await chat({ authorization: `Bearer ${ALICE_KEY}`, "x-user-id": "mallory" })).status,
		).toBe(200);
		expect((await chat({ "x-api-key": ALICE_KEY, "x-user-id": "mallory" })).status).toBe(200);
		expect(await dayUsed("alice")).toBeGreaterThan(before);
		expect(await dayUsed("mallory")).toBe(0);
	});

	it("works with the official OpenAI client's apiKey", async () => {
		// The client speaks HTTP to a listening gateway, as it would in production.
		const served = await startGateway(config(mock.url));
		try {
			const client = new OpenAI({
				baseURL: `${served.url}/v1`,
				apiKey: ALICE_KEY,
				maxRetries: 0,
			});
			const res = await client.chat.completions.create({
				model: "llama2-7b",
				messages: [{ role: "user", content: "hi" }],
				max_tokens: 3,
			});
			expect(res.object).toBe("chat.completion");
			const denied = await new OpenAI({
				baseURL: `${served.url}/v1`,
				apiKey: "trl_nobody_123",
				maxRetries: 0,
			}).models
				.list()
				.catch((e: unknown) => e);
			expect(denied).toBeInstanceOf(OpenAI.AuthenticationError);
		} finally {
			await served.stop();
		}
	});

	it("applies a key's own limits instead of the model's per-user windows", async () => {
		const res = await chat({ authorization: `Bearer ${LEGACY_KEY}` }, 200);
		expect(res.status).toBe(400);
		const err = await errorOf(res);
		expect(err.code).toBe("tokens_exceed_limit");
		expect(err.message).toContain("capacity 100");
		expect((await chat({ authorization: `Bearer ${LEGACY_KEY}` }, 50)).status).toBe(200);
	});
});

describe("tenants", () => {
	it("charges every user of a tenant to the tenant's shared window in the same reservation", async () => {
		// Whatever earlier tests reserved of team-a's window has been settled to what it cost.
		await allSettled(gw.gateway);
		mock.behavior.firstTokenDelayMs = 300;
		try {
			// 8 prompt + 900 allowance each: alice's first fits the tenant's 1500, carol's second does not.
			const first = chat({ authorization: `Bearer ${ALICE_KEY}` }, 900);
			await admitted(gw.gateway, 1);
			const second = await chat({ authorization: `Bearer ${CAROL_KEY}` }, 900);
			expect(second.status).toBe(429);
			const err = await errorOf(second);
			expect(err.message).toContain("tenant team-a");
			expect(second.headers.get("ratelimit-policy")).toContain('"tenant-tpm";q=1500;w=60');
			expect((await first).status).toBe(200);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
		}
	});

	it("keeps tenants apart: another tenant's key neither spends nor reads this tenant's budget", async () => {
		const own = async () => {
			const res = await send(gw, "/v1/rate-limits", {
				headers: { authorization: `Bearer ${ALICE_KEY}` },
			});
			const body = (await res.json()) as {
				models: { windows: { scope: string; used: number }[] }[];
			};
			return body.models[0]?.windows.find((w) => w.scope === "tenant")?.used ?? -1;
		};
		await allSettled(gw.gateway);
		const before = await own();
		// bob's key belongs to team-b.
		expect((await chat({ authorization: `Bearer ${LEGACY_KEY}` }, 50)).status).toBe(200);
		expect(await own()).toBeLessThanOrEqual(before);
		const peek = await send(gw, "/api/v1/admin/token-usage/llama2-7b/alice", {
			headers: { authorization: `Bearer ${LEGACY_KEY}` },
		});
		expect(peek.status).toBe(403);
	});

	it("reports the caller's own windows, tenant included, at /v1/rate-limits", async () => {
		const res = await send(gw, "/v1/rate-limits", {
			headers: { authorization: `Bearer ${CAROL_KEY}` },
		});
		expect(res.status).toBe(200);
		const body = (await res.json()) as {
			user: string;
			tenant: string;
			models: { model: string; windows: { scope: string; window: string; limit: number }[] }[];
		};
		expect(body.user).toBe("carol");
		expect(body.tenant).toBe("team-a");
		const scopes = body.models[0]?.windows.map((w) => `${w.scope}:${w.window}:${w.limit}`);
		expect(scopes).toEqual(["user:minute:10000", "user:day:100000", "tenant:minute:1500"]);
		expect((await send(gw, "/v1/rate-limits")).status).toBe(401);
	});
});

describe("roles", () => {
	it("lets a user read only their own usage, and an admin anyone's", async () => {
		const own = await send(gw, "/api/v1/admin/token-usage/llama2-7b/alice", {
			headers: { authorization: `Bearer ${ALICE_KEY}` },
		});
		expect(own.status).toBe(200);
		const other = await send(gw, "/api/v1/admin/token-usage/llama2-7b/bob", {
			headers: { authorization: `Bearer ${ALICE_KEY}` },
		});
		expect(other.status).toBe(403);
		expect((await errorOf(other)).type).toBe("permission_error");
		expect(await dayUsed("bob", OPS_KEY)).toBeGreaterThanOrEqual(0);
		const anonymous = await send(gw, "/api/v1/admin/token-usage/llama2-7b/alice");
		expect(anonymous.status).toBe(401);
	});

	it("keeps health, metrics and the API description open", async () => {
		for (const path of [
			"/health/live",
			"/health/ready",
			"/actuator/health",
			"/metrics",
			"/swagger/json",
		]) {
			expect((await send(gw, path)).status).toBe(200);
		}
		expect((await send(gw, "/v1/models")).status).toBe(401);
		expect((await send(gw, "/v1/models", { headers: { "x-api-key": ALICE_KEY } })).status).toBe(
			200,
		);
	});
});

describe("JWT", () => {
	it("identifies the caller from a valid token's claims, ignoring X-User-ID", async () => {
		const token = await jwt({ sub: "dave", tenant: "team-d", roles: ["user"] });
		const res = await chat({ authorization: `Bearer ${token}`, "x-user-id": "mallory" });
		expect(res.status).toBe(200);
		expect(await dayUsed("dave")).toBeGreaterThan(0);
		const self = await send(gw, "/v1/rate-limits", {
			headers: { authorization: `Bearer ${token}` },
		});
		expect(((await self.json()) as { user: string; tenant: string }).tenant).toBe("team-d");
	});

	it("refuses expired, wrongly signed and wrong-audience tokens with 401", async () => {
		const expired = await jwt({ sub: "dave" }, { expiresIn: "-2m" });
		const res = await chat({ authorization: `Bearer ${expired}` });
		expect(res.status).toBe(401);
		expect((await errorOf(res)).code).toBe("expired_token");
		expect(res.headers.get("www-authenticate")).toContain('error="invalid_token"');
		const forged = await jwt({ sub: "dave" }, { secret: "another-secret-of-32-characters!!" });
		expect((await chat({ authorization: `Bearer ${forged}` })).status).toBe(401);
		const elsewhere = await jwt({ sub: "dave" }, { audience: "another-service" });
		expect((await chat({ authorization: `Bearer ${elsewhere}` })).status).toBe(401);
	});

	it("refuses a token that never expires (no exp claim)", async () => {
		const forever = await new SignJWT({ sub: "dave" })
			.setProtectedHeader({ alg: "HS256" })
			.setIssuer("trl-test")
			.setAudience("gateway")
			.sign(new TextEncoder().encode(JWT_SECRET));
		const res = await chat({ authorization: `Bearer ${forever}` });
		expect(res.status).toBe(401);
		expect((await errorOf(res)).code).toBe("invalid_token");
	});

	it("grants the admin API to a token with the admin role", async () => {
		const admin = await jwt({ sub: "root", roles: ["admin"] });
		const res = await send(gw, "/api/v1/admin/token-usage/llama2-7b/alice", {
			headers: { authorization: `Bearer ${admin}` },
		});
		expect(res.status).toBe(200);
	});
});

describe("mixed and single modes", () => {
	it("gives a caller named only by X-User-ID no admin rights when real authentication is on too", async () => {
		const odd = "trl_alice_00112233445566778899aabbccddeeff";
		const g = await handleGateway(
			config(mock.url)
				.replace("mode: [api-key, jwt]", "mode: [none, api-key]")
				.replace(
					"    - id: ops\n",
					`    - id: alice-key\n      hash: ${sha(odd)}\n      user: alice2\n    - id: ops\n`,
				),
		);
		try {
			// Development callers still work with X-User-ID...
			const dev = await send(g, "/v1/chat/completions", {
				method: "POST",
				headers: { "content-type": "application/json", "x-user-id": "mallory" },
				body: JSON.stringify({
					model: "llama2-7b",
					messages: [{ role: "user", content: "hi" }],
					max_tokens: 2,
				}),
			});
			expect(dev.status).toBe(200);
			// ...but cannot administer, issue keys, or read anyone's usage.
			expect((await send(g, "/api/v1/admin/api-keys")).status).toBe(403);
			const issue = await send(g, "/api/v1/admin/api-keys", {
				method: "POST",
				headers: { "content-type": "application/json", "x-user-id": "mallory" },
				body: JSON.stringify({ user: "mallory", roles: ["admin"] }),
			});
			expect(issue.status).toBe(403);
			const peek = await send(g, "/api/v1/admin/token-usage/llama2-7b/mallory", {
				headers: { "x-user-id": "mallory" },
			});
			expect(peek.status).toBe(403);
			// An admin key still can.
			expect(
				(
					await send(g, "/api/v1/admin/api-keys", {
						headers: { authorization: `Bearer ${OPS_KEY}` },
					})
				).status,
			).toBe(200);
			// A configured key shaped like an issued one but under another id is found by its hash.
			expect(
				(await send(g, "/v1/rate-limits", { headers: { authorization: `Bearer ${odd}` } })).status,
			).toBe(200);
		} finally {
			await g.stop();
		}
	});

	it("answers a non-JWT bearer token in jwt-only mode with invalid_token, not missing credentials", async () => {
		const g = await handleGateway(config(mock.url).replace("mode: [api-key, jwt]", "mode: jwt"));
		try {
			const res = await send(g, "/v1/models", {
				headers: { authorization: "Bearer sk-not-a-jwt" },
			});
			expect(res.status).toBe(401);
			expect((await errorOf(res)).code).toBe("invalid_token");
		} finally {
			await g.stop();
		}
	});
});

describe("a key's own limits", () => {
	it("replace the windows they name and keep the model's others", async () => {
		const principal = await gw.gateway.deps.auth.authenticate(
			new Request("http://gateway/v1/models", {
				headers: { authorization: `Bearer ${LEGACY_KEY}` },
			}),
		);
		const model = gw.gateway.config.models.get("llama2-7b");
		if (model === undefined) throw new Error("no model");
		const windows = gw.gateway.spenderFor(model, principal).userWindows ?? [];
		expect(windows.map((w) => [w.name, w.limitTokens]).sort()).toEqual([
			["day", 100000],
			["minute", 100],
		]);
	});
});
