import { afterAll, beforeAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import { createHash } from "node:crypto";
import { type HandledGateway, handleGateway, send } from "./support/gateway.ts";
import { type MockVllm, startMockVllm } from "./support/mock-vllm.ts";
import { type RedisServer, startRedis } from "./support/redis.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

/**
 * One rule for whose windows a request spends (src/limits/policy.ts): what a
 * request is charged to, what the caller sees at /v1/rate-limits and what the
 * admin API shows and resets are the same windows — an API key's own limits
 * included, for keys in the configuration and keys issued at runtime, with a
 * live override on top, and the tightest of a user's several keys.
 */

const sha = (key: string) => `sha256:${createHash("sha256").update(key).digest("hex")}`;
const OPS_KEY = "trl_ops_7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29";
const KIM_KEY = "trl_app-k_0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const OLGA_KEY = "trl_app-o_a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6";
const MILO_KEY = "trl_app-m_fedcba98765432100123456789abcdef";
const MODEL = "llama2-7b";

/**
 * The stores' clock, frozen (ahead of the wall clock, so Redis keys, which expire
 * at their TAT in real time, outlive the test): what is used stays what was spent,
 * so two views read at different moments must agree exactly.
 */
const NOW_US = Math.ceil((Date.now() * 1000 + 10 * 60_000_000) / 1_000_000) * 1_000_000;

function config(upstream: string, store: string): string {
	return `server:
  max-body-bytes: 65536
${store}
auth:
  mode: api-key
  api-keys:
    - id: ops
      hash: ${sha(OPS_KEY)}
      user: ops
      roles: [admin]
    - id: app-k
      hash: ${sha(KIM_KEY)}
      user: kim
      tenant: team-k
      limits:
        max-tokens-per-minute: 50
        max-tokens-per-hour: 400
    - id: app-o
      hash: ${sha(OLGA_KEY)}
      user: olga
      limits:
        max-tokens-per-minute: 50
        max-concurrent-requests: 4
    - id: app-m
      hash: ${sha(MILO_KEY)}
      user: milo
      tenant: team-m
      limits:
        max-tokens-per-minute: 50
        max-tokens-per-hour: 400
token:
  rate-limit:
    models:
      ${MODEL}:
        max-tokens-per-minute: 100000
        max-tokens-per-day: 1000000
        max-concurrent-requests: 50
        default-max-tokens: 64
        calibration: false
        tenant:
          max-tokens-per-minute: 5000
vllm:
  services:
    ${MODEL}: ${upstream}
logging:
  level: silent
`;
}

interface WindowView {
	scope: string;
	window: string;
	unit: string;
	limit: number;
	burst: number;
	used: number;
	remaining: number;
	resetSeconds: number;
}

interface OwnModel {
	model: string;
	windows: WindowView[];
	concurrency: { userLimit: number | null };
}

let mock: MockVllm;

beforeAll(() => {
	// "hi" is 1 + 4 prompt tokens to the mock; 7 generated: 12 tokens a request.
	mock = startMockVllm({ models: [MODEL], record: false, behavior: { outputTokens: 7 } });
});

afterAll(async () => {
	await mock.stop();
});

function find(windows: WindowView[], scope: string, window: string, unit = "tokens"): WindowView {
	const w = windows.find((x) => x.scope === scope && x.window === window && x.unit === unit);
	if (w === undefined) throw new Error(`no ${scope} ${window} ${unit} window`);
	return w;
}

for (const store of ["memory", "redis"] as const) {
	describe(`with the ${store} store`, () => {
		let redis: RedisServer | undefined;
		let gw: HandledGateway;

		beforeAll(async () => {
			let storeYaml = "store: memory";
			if (store === "redis") {
				redis = await startRedis();
				storeYaml = `store: redis
spring:
  data:
    redis:
      host: 127.0.0.1
      port: ${redis.port}`;
			}
			gw = await handleGateway(config(mock.url, storeYaml), { clock: () => NOW_US });
		});

		afterAll(async () => {
			await gw?.stop();
			await redis?.stop();
		});

		const ops = { authorization: `Bearer ${OPS_KEY}`, "content-type": "application/json" };

		const chat = (key: string, maxTokens: number) =>
			send(gw, "/v1/chat/completions", {
				method: "POST",
				headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
				body: JSON.stringify({
					model: MODEL,
					messages: [{ role: "user", content: "hi" }],
					max_tokens: maxTokens,
				}),
			});

		/** Tokens the response says were spent, once the request is settled. */
		const spent = async (res: Response): Promise<number> => {
			expect(res.status).toBe(200);
			const body = (await res.json()) as { usage: { total_tokens: number } };
			await gw.gateway.settled();
			return body.usage.total_tokens;
		};

		/** What the caller sees at /v1/rate-limits for the model. */
		const own = async (key: string): Promise<OwnModel> => {
			const res = await send(gw, "/v1/rate-limits", {
				headers: { authorization: `Bearer ${key}` },
			});
			expect(res.status).toBe(200);
			const body = (await res.json()) as { models: OwnModel[] };
			const m = body.models.find((x) => x.model === MODEL);
			if (m === undefined) throw new Error("model missing from /v1/rate-limits");
			return m;
		};

		/** What the admin API shows for the user's windows of the model. */
		const adminView = async (user: string): Promise<WindowView[]> => {
			const res = await send(gw, `/api/v1/admin/token-usage/${MODEL}/${user}`, {
				headers: ops,
			});
			expect(res.status).toBe(200);
			return ((await res.json()) as { windows: WindowView[] }).windows;
		};

		/** Both views, checked to be the same windows with the same standing. */
		const agreed = async (key: string, user: string): Promise<WindowView[]> => {
			const [mine, admin] = [(await own(key)).windows, await adminView(user)];
			expect(admin).toEqual(mine);
			return admin;
		};

		const resetUsage = async (user: string) => {
			const res = await send(gw, `/api/v1/admin/token-usage/${MODEL}/${user}`, {
				method: "DELETE",
				headers: ops,
			});
			expect(res.status).toBe(204);
		};

		it("charges, shows and resets a configured key's own limits as one window", async () => {
			const first = await chat(KIM_KEY, 10);
			// Enforced: the key's 50 per minute, not the model's 100,000.
			expect(first.headers.get("x-ratelimit-limit-tokens")).toBe("50");
			const estimate = 50 - Number(first.headers.get("x-ratelimit-remaining-tokens"));
			const promptEstimate = estimate - 10;
			const used = await spent(first);
			expect(used).toBe(12);

			const before = await agreed(KIM_KEY, "kim");
			expect(find(before, "user", "minute")).toMatchObject({
				limit: 50,
				burst: 50,
				used,
				remaining: 50 - used,
			});
			expect(find(before, "user", "hour")).toMatchObject({ limit: 400, used });
			// The model's day window, which the key does not name, stays.
			expect(find(before, "user", "day")).toMatchObject({ limit: 1_000_000, used });
			// The tenant the key names is shown as enforcement charges it.
			expect(find(before, "tenant", "minute")).toMatchObject({ limit: 5000, used });

			// A request that only an empty minute window could take.
			const whole = 50 - promptEstimate;
			const refused = await chat(KIM_KEY, whole);
			expect(refused.status).toBe(429);
			expect(((await refused.json()) as { error: { message: string } }).error.message).toContain(
				"user kim",
			);

			await resetUsage("kim");
			const after = await agreed(KIM_KEY, "kim");
			for (const name of ["minute", "hour", "day"]) {
				const w = find(after, "user", name);
				expect(w.used).toBe(0);
				expect(w.remaining).toBe(w.burst);
			}
			// The tenant's window is shared with the tenant's other users: not the user's to reset.
			expect(find(after, "tenant", "minute").used).toBe(used);
			expect(await spent(await chat(KIM_KEY, whole))).toBe(12);
		});

		it("charges, shows and resets the limits of a key issued at runtime", async () => {
			const res = await send(gw, "/api/v1/admin/api-keys", {
				method: "POST",
				headers: ops,
				body: JSON.stringify({
					id: "rt-rita",
					user: "rita",
					limits: { "max-tokens-per-minute": 40, "max-requests-per-minute": 3 },
				}),
			});
			expect(res.status).toBe(201);
			const { key } = (await res.json()) as { key: string };

			const first = await chat(key, 10);
			expect(first.headers.get("x-ratelimit-limit-tokens")).toBe("40");
			expect(first.headers.get("x-ratelimit-limit-requests")).toBe("3");
			const used = await spent(first);

			const before = await agreed(key, "rita");
			expect(find(before, "user", "minute")).toMatchObject({ limit: 40, used });
			expect(find(before, "user", "minute", "requests")).toMatchObject({ limit: 3, used: 1 });
			expect(before.some((w) => w.scope === "tenant")).toBe(false);

			await resetUsage("rita");
			const after = await agreed(key, "rita");
			expect(find(after, "user", "minute")).toMatchObject({ used: 0, remaining: 40 });
			expect(find(after, "user", "minute", "requests")).toMatchObject({ used: 0, remaining: 3 });
			expect(await spent(await chat(key, 10))).toBe(used);
		});

		it("puts a live override on top of a key's limits, for requests and both views alike", async () => {
			const put = await send(gw, `/api/v1/admin/limits/${MODEL}/users/olga`, {
				method: "PUT",
				headers: ops,
				body: JSON.stringify({ "max-tokens-per-minute": 30 }),
			});
			expect(put.status).toBe(200);
			const view = (await put.json()) as {
				configured: Record<string, number>;
				effective: Record<string, number>;
			};
			expect(view.configured["max-tokens-per-minute"]).toBe(100_000);
			// Enforced: the override's minute, the model's day, the key's concurrency.
			expect(view.effective).toEqual({
				"max-tokens-per-minute": 30,
				"max-tokens-per-day": 1_000_000,
				"max-concurrent-requests": 4,
			});

			const first = await chat(OLGA_KEY, 10);
			expect(first.headers.get("x-ratelimit-limit-tokens")).toBe("30");
			const used = await spent(first);
			expect(find(await agreed(OLGA_KEY, "olga"), "user", "minute")).toMatchObject({
				limit: 30,
				used,
				remaining: 30 - used,
			});
			expect((await own(OLGA_KEY)).concurrency.userLimit).toBe(4);

			const removed = await send(gw, `/api/v1/admin/limits/${MODEL}/users/olga`, {
				method: "DELETE",
				headers: ops,
			});
			expect(removed.status).toBe(204);
			// The key's own 50 again, everywhere. The window keeps its TAT: the backlog of `used`
			// tokens at 30 a minute is 50/30 as many at 50 a minute.
			expect(find(await agreed(OLGA_KEY, "olga"), "user", "minute")).toMatchObject({
				limit: 50,
				used: Math.ceil((used * 50) / 30),
			});
			const next = await chat(OLGA_KEY, 10);
			expect(next.headers.get("x-ratelimit-limit-tokens")).toBe("50");
			await spent(next);

			await resetUsage("olga");
			expect(find(await agreed(OLGA_KEY, "olga"), "user", "minute").used).toBe(0);
		});

		it("holds a user with several keys to the tightest limit of each window, whichever key is used", async () => {
			const res = await send(gw, "/api/v1/admin/api-keys", {
				method: "POST",
				headers: ops,
				body: JSON.stringify({
					id: "rt-milo",
					user: "milo",
					tenant: "team-m",
					limits: {
						"max-tokens-per-minute": 80,
						"max-tokens-per-day": 300,
						"max-concurrent-requests": 2,
					},
				}),
			});
			expect(res.status).toBe(201);
			const { key: second } = (await res.json()) as { key: string };

			const viaFirst = await agreed(MILO_KEY, "milo");
			expect((await own(second)).windows).toEqual(viaFirst);
			expect(find(viaFirst, "user", "minute").limit).toBe(50);
			expect(find(viaFirst, "user", "hour").limit).toBe(400);
			expect(find(viaFirst, "user", "day").limit).toBe(300);
			expect((await own(MILO_KEY)).concurrency.userLimit).toBe(2);
			expect((await own(second)).concurrency.userLimit).toBe(2);

			// The second key's 80 per minute does not hold: the user's window is 50.
			const tooBig = await chat(second, 60);
			expect(tooBig.status).toBe(400);
			const err = ((await tooBig.json()) as { error: { code: string; message: string } }).error;
			expect(err.code).toBe("tokens_exceed_limit");
			expect(err.message).toContain("user milo");
			const used = await spent(await chat(second, 10));
			expect(find(await agreed(MILO_KEY, "milo"), "user", "day")).toMatchObject({
				limit: 300,
				used,
			});

			const revoked = await send(gw, "/api/v1/admin/api-keys/rt-milo", {
				method: "DELETE",
				headers: ops,
			});
			expect(revoked.status).toBe(204);
			const after = await agreed(MILO_KEY, "milo");
			expect(find(after, "user", "day").limit).toBe(1_000_000);
			expect((await own(MILO_KEY)).concurrency.userLimit).toBeNull();
		});
	});
}
