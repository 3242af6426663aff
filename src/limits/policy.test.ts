import { beforeEach, describe, expect, it } from "bun:test";
import { createHash } from "node:crypto";
import { StaticKeys } from "../auth/authenticator.ts";
import { KeyRegistry } from "../auth/key-registry.ts";
import { parseConfig } from "../config/loader.ts";
import type { GatewayConfig, ModelConfig, WindowLimit } from "../config/schema.ts";
import { MemorySettings } from "../settings.ts";
import { windowsFor } from "./limiter.ts";
import { Overrides } from "./overrides.ts";
import { combineKeyLimits, type KeyLimits, LimitPolicy } from "./policy.ts";

/**
 * The one rule for whose windows a request spends, on the real key registry and
 * overrides (memory settings): override, else the tightest of the user's keys,
 * else the model's; one answer per user whichever key a request came with.
 */

const hash = (key: string) => `sha256:${createHash("sha256").update(key).digest("hex")}`;

function yaml(minute = 100_000): string {
	return `auth:
  mode: api-key
  api-keys:
    - id: k-one
      hash: ${hash("key-one")}
      user: kim
      tenant: team-k
      limits:
        max-tokens-per-minute: 50
        max-tokens-per-hour: 400
        max-concurrent-requests: 4
    - id: k-two
      hash: ${hash("key-two")}
      user: kim
      tenant: team-k
      limits:
        max-tokens-per-minute: 80
        max-tokens-per-day: 300
        max-concurrent-requests: 2
    - id: split-a
      hash: ${hash("key-split-a")}
      user: sam
      tenant: team-a
    - id: split-b
      hash: ${hash("key-split-b")}
      user: sam
      tenant: team-b
    - id: plain
      hash: ${hash("key-plain")}
      user: pat
token:
  rate-limit:
    models:
      m:
        max-tokens-per-minute: ${minute}
        max-tokens-per-day: 1000000
        tenant:
          max-tokens-per-minute: 5000
vllm:
  services:
    m: http://127.0.0.1:1
`;
}

/** Windows as `[kind, limit]`, e.g. `["tokens:minute", 50]`, in the spender's order. */
const limits = (windows: readonly WindowLimit[] | undefined) =>
	(windows ?? []).map((w) => [
		`${w.perRequest === true ? "requests" : "tokens"}:${w.name}`,
		w.limitTokens,
	]);

let config: GatewayConfig;
let model: ModelConfig;
let settings: MemorySettings;
let keys: KeyRegistry;
let overrides: Overrides;
let policy: LimitPolicy;

function modelOf(c: GatewayConfig): ModelConfig {
	const m = c.models.get("m");
	if (m === undefined) throw new Error("no model m");
	return m;
}

beforeEach(async () => {
	config = parseConfig(yaml(), {}, "policy.test");
	model = modelOf(config);
	settings = new MemorySettings();
	keys = new KeyRegistry(new StaticKeys(config.auth.apiKeys), config.auth.apiKeys, settings);
	overrides = new Overrides(settings);
	await keys.reload();
	await overrides.reload();
	policy = new LimitPolicy(overrides, keys);
});

describe("the rule for one user", () => {
	it("takes the model's windows for a user without keys or overrides", () => {
		const s = policy.spenderFor(model, { user: "nobody", tenant: undefined });
		expect(limits(s.userWindows)).toEqual(limits(model.userWindows));
		expect(s.userConcurrency).toBeUndefined();
		expect(s.tenantWindows).toBeUndefined();
	});

	it("takes, per window, the tightest of the user's keys and keeps the model's others", () => {
		const s = policy.spenderFor(model, { user: "kim", tenant: "team-k" });
		expect(limits(s.userWindows)).toEqual([
			// The model's day window is replaced by k-two's 300; minute is min(50, 80); hour is k-one's.
			["tokens:minute", 50],
			["tokens:hour", 400],
			["tokens:day", 300],
		]);
		expect(s.userConcurrency).toBe(2);
		expect(limits(s.tenantWindows)).toEqual([["tokens:minute", 5000]]);
	});

	it("gives every request of the user the same windows, whichever key or token it came with", () => {
		const viaOne = policy.spenderFor(model, { user: "kim", tenant: "team-k" });
		const viaJwt = policy.spenderFor(model, { user: "kim", tenant: undefined });
		expect(viaJwt.userWindows).toEqual(viaOne.userWindows);
		expect(viaJwt.userConcurrency).toBe(viaOne.userConcurrency);
		// The tenant charged is the caller's own.
		expect(viaJwt.tenant).toBeUndefined();
	});

	it("answers the admin API, which knows only the user, as it answers the user's requests", () => {
		const request = policy.spenderFor(model, { user: "kim", tenant: "team-k" });
		const admin = policy.spenderForUser(model, "kim");
		expect(admin).toEqual(request);
		expect(windowsFor(model, admin)).toEqual(windowsFor(model, request));
	});

	it("names a tenant for the admin API only when the user's keys name exactly one", () => {
		expect(policy.spenderForUser(model, "kim").tenant).toBe("team-k");
		expect(policy.spenderForUser(model, "sam").tenant).toBeUndefined();
		expect(policy.spenderForUser(model, "pat").tenant).toBeUndefined();
	});

	it("puts a user override on top of the keys' limits, for the windows and slots it names", async () => {
		await overrides.set(
			"m",
			"user",
			"kim",
			{ "max-tokens-per-minute": 500, "max-concurrent-requests": 9 },
			"test",
		);
		const s = policy.spenderForUser(model, "kim");
		expect(limits(s.userWindows)).toEqual([
			["tokens:hour", 400],
			["tokens:day", 300],
			["tokens:minute", 500],
		]);
		expect(s.userConcurrency).toBe(9);
		expect(policy.effective(model, "user", "kim")).toEqual({
			windows: s.userWindows ?? [],
			concurrency: 9,
		});
		await overrides.remove("m", "user", "kim");
		expect(limits(policy.spenderForUser(model, "kim").userWindows)[0]).toEqual([
			"tokens:minute",
			50,
		]);
	});

	it("applies a tenant override to the tenant's windows and slots", async () => {
		await overrides.set(
			"m",
			"tenant",
			"team-k",
			{ "max-tokens-per-minute": 700, "max-concurrent-requests": 3 },
			"test",
		);
		const s = policy.spenderFor(model, { user: "kim", tenant: "team-k" });
		expect(limits(s.tenantWindows)).toEqual([["tokens:minute", 700]]);
		expect(s.tenantConcurrency).toBe(3);
		expect(policy.effective(model, "tenant", "team-k")).toEqual({
			windows: s.tenantWindows ?? [],
			concurrency: 3,
		});
	});
});

describe("keeping answers", () => {
	it("answers a repeated question with the same object", () => {
		const first = policy.spenderFor(model, { user: "kim", tenant: "team-k" });
		expect(policy.spenderFor(model, { user: "kim", tenant: "team-k" })).toBe(first);
		expect(policy.spenderForUser(model, "kim")).toBe(first);
	});

	it("sees a key issued or revoked at runtime at once", async () => {
		expect(limits(policy.spenderForUser(model, "pat").userWindows)).toEqual(
			limits(model.userWindows),
		);
		await keys.issue({ id: "pat-2", user: "pat", limits: { "max-tokens-per-minute": 20 } }, "test");
		expect(limits(policy.spenderForUser(model, "pat").userWindows)).toEqual([
			["tokens:day", 1_000_000],
			["tokens:minute", 20],
		]);
		await keys.revoke("pat-2");
		expect(limits(policy.spenderForUser(model, "pat").userWindows)).toEqual(
			limits(model.userWindows),
		);
	});

	it("sees a reload of the keys or the overrides made by another replica", async () => {
		// Another replica writes to the shared settings; this one reloads when its watcher polls.
		const other = new Overrides(settings);
		await other.set("m", "user", "kim", { "max-tokens-per-hour": 10 }, "elsewhere");
		expect(limits(policy.spenderForUser(model, "kim").userWindows)).toContainEqual([
			"tokens:hour",
			400,
		]);
		await overrides.reload();
		expect(limits(policy.spenderForUser(model, "kim").userWindows)).toContainEqual([
			"tokens:hour",
			10,
		]);
	});

	it("answers from a reloaded configuration's models", () => {
		const before = policy.spenderFor(model, { user: "pat", tenant: undefined });
		const reloaded = modelOf(parseConfig(yaml(70_000), {}, "policy.test"));
		const after = policy.spenderFor(reloaded, { user: "pat", tenant: undefined });
		expect(limits(before.userWindows)).toContainEqual(["tokens:minute", 100_000]);
		expect(limits(after.userWindows)).toContainEqual(["tokens:minute", 70_000]);
	});
});

describe("combineKeyLimits", () => {
	const w = (name: "minute" | "hour" | "day", limit: number, burst = limit): WindowLimit => ({
		name,
		windowUs: { minute: 60e6, hour: 3600e6, day: 86400e6 }[name],
		limitTokens: limit,
		burstTokens: burst,
	});
	const rpm = (limit: number): WindowLimit => ({ ...w("minute", limit), perRequest: true });
	const key = (
		limitsOf: WindowLimit[] | undefined,
		concurrency?: number,
		tenant?: string,
	): KeyLimits => ({ tenant, limits: limitsOf, concurrency });

	it("is nothing for no keys, or keys without limits", () => {
		expect(combineKeyLimits([])).toEqual({
			windows: undefined,
			concurrency: undefined,
			tenant: undefined,
		});
		expect(combineKeyLimits([key(undefined), key(undefined)]).windows).toBeUndefined();
	});

	it("keeps token and request windows of the same length apart", () => {
		const c = combineKeyLimits([key([w("minute", 100)]), key([rpm(5)])]);
		expect(limits(c.windows)).toEqual([
			["tokens:minute", 100],
			["requests:minute", 5],
		]);
	});

	it("breaks a tie of limits by the smaller burst", () => {
		const c = combineKeyLimits([key([w("hour", 100, 150)]), key([w("hour", 100, 120)])]);
		expect(c.windows?.[0]?.burstTokens).toBe(120);
	});

	it("gives the same answer whatever the order of the keys", () => {
		const all = [
			key([w("minute", 50), w("day", 900)], 4, "t"),
			key([w("minute", 80), w("hour", 400), rpm(9)], 2, "t"),
			key([w("day", 300), rpm(12)], undefined, "t"),
			key(undefined, 3),
		];
		const expected = combineKeyLimits(all);
		expect(limits(expected.windows)).toEqual([
			["tokens:minute", 50],
			["tokens:hour", 400],
			["tokens:day", 300],
			["requests:minute", 9],
		]);
		expect(expected.concurrency).toBe(2);
		expect(expected.tenant).toBe("t");
		const orders = [
			[3, 2, 1, 0],
			[1, 3, 0, 2],
			[2, 0, 3, 1],
		];
		for (const order of orders) {
			expect(combineKeyLimits(order.map((i) => all[i] as KeyLimits))).toEqual(expected);
		}
	});
});
