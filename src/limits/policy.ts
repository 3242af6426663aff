import { GenerationalCache } from "../cache.ts";
import { mergeWindows } from "../config/loader.ts";
import type { ModelConfig, WindowLimit } from "../config/schema.ts";
import type { Spender } from "./limiter.ts";

/**
 * Whose windows a request spends: the one place for it. The pipeline, the
 * admin API and `/v1/rate-limits` all ask this module, so what they show is
 * what is enforced.
 *
 * The rule, per window kind (tokens per minute, hour, day; requests per minute):
 *
 * 1. a runtime override of the user (admin API) wins;
 * 2. else the user's API keys' own `limits:` — windows and slots are keyed by
 *    user, so a user has one limit per window: with several keys that set the
 *    same window, the tightest (smallest limit) holds, and it holds for every
 *    request charged to that user, whichever key (or JWT) it came with;
 * 3. else the model's configured per-user window.
 *
 * The user's concurrency limit follows the same order (override, else the
 * smallest any of the user's keys sets). The tenant a request is charged to is
 * the caller's (its key's or its token's); its windows are the model's tenant
 * windows with a tenant override on top.
 */

/** What the policy needs of one API key. */
export interface KeyLimits {
	readonly tenant: string | undefined;
	/** The key's own per-user windows. */
	readonly limits: readonly WindowLimit[] | undefined;
	/** The key's own per-user concurrency limit. */
	readonly concurrency: number | undefined;
}

/** Where a user's API keys are found: the configured ones and those issued at runtime. */
export interface KeysByUser {
	/** Changes whenever the keys may have changed (every reload). */
	readonly generation: number;
	keysOf(user: string): readonly KeyLimits[];
}

/** The runtime overrides, as the policy reads them. */
export interface OverrideLimits {
	/** Changes whenever the overrides may have changed (every reload). */
	readonly generation: number;
	windows(
		model: string,
		scope: "user" | "tenant",
		name: string,
	): readonly WindowLimit[] | undefined;
	concurrency(model: string, scope: "user" | "tenant", name: string): number | undefined;
}

/** Who a request is charged to (a Principal is one). */
export interface Caller {
	readonly user: string;
	readonly tenant: string | undefined;
}

/** One user's limits from all of their API keys together. */
export interface UserKeyLimits {
	/** Per window kind, the tightest any of the user's keys sets; undefined when none sets one. */
	readonly windows: readonly WindowLimit[] | undefined;
	/** The smallest concurrency limit any of the user's keys sets. */
	readonly concurrency: number | undefined;
	/** The tenant the user's keys name, when they name exactly one. */
	readonly tenant: string | undefined;
}

/** The windows and concurrency limit in force for one user or tenant of a model. */
export interface Effective {
	readonly windows: readonly WindowLimit[];
	readonly concurrency: number | undefined;
}

/** Window kinds in the file's order: tokens per minute, hour, day, then requests per minute. */
const KINDS = ["tokens:minute", "tokens:hour", "tokens:day", "requests:minute"] as const;

const kindOf = (w: WindowLimit) => `${w.perRequest === true ? "requests" : "tokens"}:${w.name}`;

/** Whether `a` admits less than `b` (smaller limit; at an equal limit, smaller burst). */
const tighter = (a: WindowLimit, b: WindowLimit) =>
	a.limitTokens < b.limitTokens ||
	(a.limitTokens === b.limitTokens && a.burstTokens < b.burstTokens);

/** The limits of all of one user's keys, as one: the tightest per window kind. */
export function combineKeyLimits(keys: readonly KeyLimits[]): UserKeyLimits {
	const tightest = new Map<string, WindowLimit>();
	const tenants = new Set<string>();
	let concurrency: number | undefined;
	for (const key of keys) {
		if (key.tenant !== undefined) tenants.add(key.tenant);
		if (key.concurrency !== undefined) {
			concurrency =
				concurrency === undefined ? key.concurrency : Math.min(concurrency, key.concurrency);
		}
		for (const w of key.limits ?? []) {
			const held = tightest.get(kindOf(w));
			if (held === undefined || tighter(w, held)) tightest.set(kindOf(w), w);
		}
	}
	const windows = KINDS.flatMap((kind) => {
		const w = tightest.get(kind);
		return w === undefined ? [] : [w];
	});
	const [tenant] = tenants;
	return {
		windows: windows.length === 0 ? undefined : windows,
		concurrency,
		tenant: tenants.size === 1 ? tenant : undefined,
	};
}

/** Users (per model) whose answers are kept; past this the least recently used are forgotten. */
const MAX_CACHED = 10_000;

/**
 * Answers whose windows and concurrency limits a request spends (see the rule
 * above). Answers are kept per model and user until the keys or the overrides
 * reload (their generation moves) or the model's configuration is replaced (a
 * reload makes new ModelConfig objects), so a request costs two comparisons
 * and two map lookups.
 */
export class LimitPolicy {
	private keysSeen = Number.NaN;
	private overridesSeen = Number.NaN;
	private byUser = new GenerationalCache<string, UserKeyLimits>(MAX_CACHED);
	private spenders = new WeakMap<ModelConfig, GenerationalCache<string, Spender>>();

	constructor(
		private readonly overrides: OverrideLimits,
		private readonly keys: KeysByUser,
	) {}

	/** Whose windows a request of `caller` to `model` spends. */
	spenderFor(model: ModelConfig, caller: Caller): Spender {
		this.fresh();
		let perModel = this.spenders.get(model);
		if (perModel === undefined) {
			perModel = new GenerationalCache(MAX_CACHED);
			this.spenders.set(model, perModel);
		}
		const cached = perModel.get(caller.user);
		if (cached !== undefined && cached.tenant === caller.tenant) return cached;
		const spender = this.build(model, caller);
		perModel.set(caller.user, spender);
		return spender;
	}

	/**
	 * Whose windows `user`'s requests to `model` spend, known only by the user (the
	 * admin API): the same as for their requests, with the tenant their keys name.
	 */
	spenderForUser(model: ModelConfig, user: string): Spender {
		return this.spenderFor(model, { user, tenant: this.keyLimitsOf(user).tenant });
	}

	/** The limits of all of `user`'s API keys together. */
	keyLimitsOf(user: string): UserKeyLimits {
		this.fresh();
		const cached = this.byUser.get(user);
		if (cached !== undefined) return cached;
		const combined = combineKeyLimits(this.keys.keysOf(user));
		this.byUser.set(user, combined);
		return combined;
	}

	/** The windows and concurrency limit in force for one user or one tenant of `model`. */
	effective(model: ModelConfig, scope: "user" | "tenant", name: string): Effective {
		if (scope === "tenant") return this.tenantPart(model, name);
		const spender = this.spenderForUser(model, name);
		return {
			windows: spender.userWindows ?? model.userWindows,
			concurrency: spender.userConcurrency,
		};
	}

	/** Forgets every answer when the keys or the overrides have reloaded since. */
	private fresh(): void {
		const keys = this.keys.generation;
		const overrides = this.overrides.generation;
		if (keys === this.keysSeen && overrides === this.overridesSeen) return;
		this.keysSeen = keys;
		this.overridesSeen = overrides;
		this.byUser = new GenerationalCache(MAX_CACHED);
		this.spenders = new WeakMap();
	}

	private tenantPart(model: ModelConfig, tenant: string): Effective {
		return {
			windows: mergeWindows(
				model.tenantWindows,
				this.overrides.windows(model.id, "tenant", tenant),
			),
			concurrency: this.overrides.concurrency(model.id, "tenant", tenant),
		};
	}

	private build(model: ModelConfig, caller: Caller): Spender {
		const { user, tenant } = caller;
		const own = this.keyLimitsOf(user);
		const tenantPart = tenant === undefined ? undefined : this.tenantPart(model, tenant);
		return {
			user,
			tenant,
			// Each window a key or an override names replaces the model's of that kind; the others stay.
			userWindows: mergeWindows(
				mergeWindows(model.userWindows, own.windows),
				this.overrides.windows(model.id, "user", user),
			),
			tenantWindows: tenantPart?.windows,
			userConcurrency: this.overrides.concurrency(model.id, "user", user) ?? own.concurrency,
			tenantConcurrency: tenantPart?.concurrency,
		};
	}
}
