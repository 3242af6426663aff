import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { createHash } from "node:crypto";
import { type HandledGateway, handleGateway, send } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { type GatewayProcess, spawnGateway } from "./support/process.ts";
import { type RedisServer, startRedis } from "./support/redis.ts";
import { until, within } from "./support/wait.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/**
 * Live limit management across two gateway processes sharing one Redis: keys
 * issued and revoked, overrides set and removed, usage reset — in force on the
 * other replica within a second, and every change in the audit log.
 */

const OPS_KEY = "trl_ops_5b1e0c9d8a7f6e5d4c3b2a1908f7e6d5";
const USER_KEY = "trl_app-u_11223344556677889900aabbccddeeff";
const sha = (key: string) => `sha256:${createHash("sha256").update(key).digest("hex")}`;

let redis: RedisServer;
let mock: MockVllm;
let a: GatewayProcess;
let b: GatewayProcess;
/**
 * The same configuration built in-process, on the same Redis, for the tests that
 * only send a request and read the answer: no replica, process or socket needed.
 */
let local: HandledGateway;

beforeAll(async () => {
	redis = await startRedis();
	mock = startMockVllm({ models: ["llama2-7b"], behavior: { outputTokens: 0 } });
	const yaml = `server:
  max-body-bytes: 65536
store: redis
spring:
  data:
    redis:
      host: 127.0.0.1
      port: ${redis.port}
auth:
  mode: api-key
  api-keys:
    - id: ops
      hash: ${sha(OPS_KEY)}
      user: ops
      roles: [admin]
    - id: app-u
      hash: ${sha(USER_KEY)}
      user: uma
      tenant: team-u
token:
  rate-limit:
    models:
      llama2-7b:
        max-tokens-per-minute: 10000
        max-tokens-per-day: 1000000
        # Refused at once when the user's own slots are taken (no waiting): what these tests check.
        max-queue-wait-ms: 0
        tenant:
          max-tokens-per-minute: 50000
vllm:
  services:
    llama2-7b: ${mock.url}
logging:
  level: info
`;
	[a, b, local] = await Promise.all([spawnGateway(yaml), spawnGateway(yaml), handleGateway(yaml)]);
});

afterAll(async () => {
	await Promise.all([a.stop(), b.stop(), local.stop()]);
	await mock.stop();
	await redis.stop();
});

const ops = { authorization: `Bearer ${OPS_KEY}`, "content-type": "application/json" };

function chat(gw: GatewayProcess, key: string, maxTokens = 10, requestId?: string) {
	return fetch(`${gw.url}/v1/chat/completions`, {
		method: "POST",
		headers: {
			"content-type": "application/json",
			authorization: `Bearer ${key}`,
			...(requestId === undefined ? {} : { "x-request-id": requestId }),
		},
		body: JSON.stringify({
			model: "llama2-7b",
			messages: [{ role: "user", content: "hi" }],
			max_tokens: maxTokens,
		}),
	});
}

/** The caller's own concurrency limit on `llama2-7b`, as replica `gw` applies it. */
async function userConcurrencyLimit(gw: GatewayProcess, key: string): Promise<number | null> {
	const res = await fetch(`${gw.url}/v1/rate-limits`, {
		headers: { authorization: `Bearer ${key}` },
	});
	expect(res.status).toBe(200);
	const body = (await res.json()) as {
		models: { model: string; concurrency: { userLimit: number | null } }[];
	};
	const own = body.models.find((m) => m.model === "llama2-7b");
	if (own === undefined) throw new Error("no llama2-7b in /v1/rate-limits");
	return own.concurrency.userLimit;
}

/** Whether `gw` has logged the request's line (an admitted request's is written once it is settled). */
function requestLogged(gw: GatewayProcess, requestId: string): boolean {
	return gw
		.output()
		.split("\n")
		.some((l) => l.includes('"msg":"request"') && l.includes(`"requestId":"${requestId}"`));
}

function auditLines(gw: GatewayProcess, action: string): Record<string, unknown>[] {
	return gw
		.output()
		.split("\n")
		.filter((l) => l.includes('"msg":"audit"'))
		.map((l) => JSON.parse(l) as Record<string, unknown>)
		.filter((l) => l.action === action);
}

describe("API keys through the admin API", () => {
	it("issues a key on one replica that works on the other within a second, and revokes it likewise", async () => {
		const res = await fetch(`${a.url}/api/v1/admin/api-keys`, {
			method: "POST",
			headers: ops,
			body: JSON.stringify({ id: "fresh-app", user: "fred", tenant: "team-f", roles: ["user"] }),
		});
		expect(res.status).toBe(201);
		const issued = (await res.json()) as {
			key: string;
			info: { id: string; user: string; source: string };
		};
		expect(issued.key).toStartWith("trl_fresh-app_");
		expect(issued.info).toMatchObject({ id: "fresh-app", user: "fred", source: "runtime" });
		expect(await within(1000, async () => (await chat(b, issued.key)).status === 200)).toBe(true);

		const list = await (await fetch(`${b.url}/api/v1/admin/api-keys`, { headers: ops })).text();
		expect(list).toContain("fresh-app");
		expect(list).not.toContain(issued.key);
		expect(list).not.toContain(createHash("sha256").update(issued.key).digest("hex"));

		const revoked = await fetch(`${a.url}/api/v1/admin/api-keys/fresh-app`, {
			method: "DELETE",
			headers: ops,
		});
		expect(revoked.status).toBe(204);
		expect(await within(1000, async () => (await chat(b, issued.key)).status === 401)).toBe(true);
		expect((await chat(a, issued.key)).status).toBe(401);

		const audit = auditLines(a, "api-key.create");
		expect(audit.length).toBe(1);
		expect(audit[0]?.actor).toEqual({ user: "ops", via: "api-key", keyId: "ops" });
		expect(JSON.stringify(audit)).not.toContain(issued.key);
		expect(auditLines(a, "api-key.revoke").length).toBe(1);
	});

	it("refuses the admin API to a caller without the admin role, and to nobody", async () => {
		const asUser = await send(local, "/api/v1/admin/api-keys", {
			headers: { authorization: `Bearer ${USER_KEY}` },
		});
		expect(asUser.status).toBe(403);
		const anonymous = await send(local, "/api/v1/admin/api-keys");
		expect(anonymous.status).toBe(401);
		const configured = await send(local, "/api/v1/admin/api-keys/app-u", {
			method: "DELETE",
			headers: ops,
		});
		expect(configured.status).toBe(409);
	});
});

describe("live limit overrides", () => {
	it("applies a user override set on one replica on the other within a second, and removes it", async () => {
		// Configured: 10,000 per minute. 8 + 20,000 can never fit it.
		expect((await chat(b, USER_KEY, 20_000)).status).toBe(400);
		const put = await fetch(`${a.url}/api/v1/admin/limits/llama2-7b/users/uma`, {
			method: "PUT",
			headers: ops,
			body: JSON.stringify({ "max-tokens-per-minute": 30_000 }),
		});
		expect(put.status).toBe(200);
		const view = (await put.json()) as {
			configured: Record<string, number>;
			effective: Record<string, number>;
		};
		expect(view.configured["max-tokens-per-minute"]).toBe(10_000);
		expect(view.effective["max-tokens-per-minute"]).toBe(30_000);
		expect(await within(1000, async () => (await chat(b, USER_KEY, 20_000)).status === 200)).toBe(
			true,
		);

		const del = await fetch(`${a.url}/api/v1/admin/limits/llama2-7b/users/uma`, {
			method: "DELETE",
			headers: ops,
		});
		expect(del.status).toBe(204);
		expect(await within(1000, async () => (await chat(b, USER_KEY, 20_000)).status === 400)).toBe(
			true,
		);

		const set = auditLines(a, "limits.set").find((l) => JSON.stringify(l.target).includes("uma"));
		expect(set?.before).toBeNull();
		expect(set?.after).toEqual({ "max-tokens-per-minute": 30_000 });
		const removed = auditLines(a, "limits.delete").find((l) =>
			JSON.stringify(l.target).includes("uma"),
		);
		expect(removed?.before).toEqual({ "max-tokens-per-minute": 30_000 });
	});

	it("applies a tenant override to every user of the tenant on every replica", async () => {
		const put = await fetch(`${b.url}/api/v1/admin/limits/llama2-7b/tenants/team-u`, {
			method: "PUT",
			headers: ops,
			body: JSON.stringify({ "max-tokens-per-minute": 100 }),
		});
		expect(put.status).toBe(200);
		expect(
			await within(1000, async () => {
				const res = await chat(a, USER_KEY, 500);
				return res.status === 400 && (await res.text()).includes("tenant team-u");
			}),
		).toBe(true);
		await fetch(`${b.url}/api/v1/admin/limits/llama2-7b/tenants/team-u`, {
			method: "DELETE",
			headers: ops,
		});
		expect(await within(1000, async () => (await chat(a, USER_KEY, 500)).status === 200)).toBe(
			true,
		);
	});

	it("limits a user's own concurrency across both replicas once an override sets it", async () => {
		const put = await fetch(`${a.url}/api/v1/admin/limits/llama2-7b/users/uma`, {
			method: "PUT",
			headers: ops,
			body: JSON.stringify({ "max-concurrent-requests": 1 }),
		});
		expect(put.status).toBe(200);
		for (const gw of [a, b]) {
			await until(async () => (await userConcurrencyLimit(gw, USER_KEY)) === 1, {
				what: `${gw.url} to apply uma's concurrency override`,
			});
		}
		mock.behavior.firstTokenDelayMs = 400;
		try {
			const first = chat(a, USER_KEY, 10, "uma-first");
			// At the model server, so admitted on replica a and holding uma's one slot.
			await until(() => mock.requests.some((r) => r.headers["x-request-id"] === "uma-first"), {
				what: "the first request to reach the model server",
			});
			const second = await chat(b, USER_KEY);
			expect(second.status).toBe(429);
			const err = ((await second.json()) as { error: { code: string; message: string } }).error;
			expect(err.code).toBe("concurrency_limit_exceeded");
			expect(err.message).toContain("user uma");
			expect((await first).status).toBe(200);
			// Freed when the first was settled (replica a logs a request once it is).
			await until(() => requestLogged(a, "uma-first"), {
				what: "replica a to settle the first request",
			});
			expect((await chat(b, USER_KEY)).status).toBe(200);
		} finally {
			mock.behavior.firstTokenDelayMs = 0;
			await fetch(`${a.url}/api/v1/admin/limits/llama2-7b/users/uma`, {
				method: "DELETE",
				headers: ops,
			});
		}
	});

	it("replaces only the windows an override names: a requests-per-minute override keeps the token windows", async () => {
		const put = await fetch(`${a.url}/api/v1/admin/limits/llama2-7b/users/uma`, {
			method: "PUT",
			headers: ops,
			body: JSON.stringify({ "max-requests-per-minute": 1000, "max-concurrent-requests": 3 }),
		});
		const view = (await put.json()) as { effective: Record<string, number> };
		expect(view.effective).toEqual({
			"max-tokens-per-minute": 10_000,
			"max-tokens-per-day": 1_000_000,
			"max-requests-per-minute": 1000,
			"max-concurrent-requests": 3,
		});
		// The token window still refuses what can never fit it.
		expect(await within(1000, async () => (await chat(b, USER_KEY, 20_000)).status === 400)).toBe(
			true,
		);
		const userLimit = async () => {
			const res = await fetch(`${b.url}/v1/rate-limits`, {
				headers: { authorization: `Bearer ${USER_KEY}` },
			});
			const body = (await res.json()) as {
				models: { concurrency: { userLimit: number | null } }[];
			};
			return body.models[0]?.concurrency.userLimit;
		};
		expect(await within(1000, async () => (await userLimit()) === 3)).toBe(true);
		await fetch(`${a.url}/api/v1/admin/limits/llama2-7b/users/uma`, {
			method: "DELETE",
			headers: ops,
		});
	});

	it("rejects an override with no limit or a bad value", async () => {
		for (const body of [
			"{}",
			JSON.stringify({ "max-tokens-per-minute": -1 }),
			JSON.stringify({ rpm: 3 }),
		]) {
			const res = await send(local, "/api/v1/admin/limits/llama2-7b/users/uma", {
				method: "PUT",
				headers: ops,
				body,
			});
			expect(res.status).toBe(400);
		}
		const unknown = await send(local, "/api/v1/admin/limits/nope/users/uma", {
			method: "PUT",
			headers: ops,
			body: JSON.stringify({ "max-tokens-per-minute": 5 }),
		});
		expect(unknown.status).toBe(404);
	});
});

describe("usage reset", () => {
	it("gives a user's windows back in full, on every replica, and audits the usage it cleared", async () => {
		expect((await chat(a, USER_KEY, 3000)).status).toBe(200);
		const used = async (gw: GatewayProcess) => {
			const res = await fetch(`${gw.url}/api/v1/admin/token-usage/llama2-7b/uma`, { headers: ops });
			const body = (await res.json()) as { windows: { window: string; used: number }[] };
			return body.windows.find((w) => w.window === "day")?.used ?? -1;
		};
		expect(await used(b)).toBeGreaterThan(0);
		const reset = await fetch(`${b.url}/api/v1/admin/token-usage/llama2-7b/uma`, {
			method: "DELETE",
			headers: ops,
		});
		expect(reset.status).toBe(204);
		expect(await used(a)).toBe(0);
		const line = auditLines(b, "usage.reset")[0];
		expect(line?.target).toEqual({ model: "llama2-7b", user: "uma" });
		const before = (line?.before ?? {}) as Record<string, number>;
		expect(Number(before["user-day"])).toBeGreaterThan(0);
	});
});
