import { windowsFrom } from "../config/loader.ts";
import type { WindowLimit, WindowLimitsValue } from "../config/schema.ts";
import type { SettingsStore } from "../settings.ts";

export type OverrideScope = "user" | "tenant";

/** One runtime limit override: a user's or a tenant's windows for one model. */
export interface Override {
	readonly model: string;
	readonly scope: OverrideScope;
	readonly name: string;
	readonly limits: WindowLimitsValue;
	readonly updatedAt: string;
	readonly updatedBy: string;
}

const field = (model: string, scope: OverrideScope, name: string) =>
	JSON.stringify([model, scope, name]);

function parse(text: string): Override | undefined {
	try {
		const v: unknown = JSON.parse(text);
		if (v === null || typeof v !== "object") return undefined;
		const o = v as Record<string, unknown>;
		if (
			typeof o.model !== "string" ||
			(o.scope !== "user" && o.scope !== "tenant") ||
			typeof o.name !== "string" ||
			o.limits === null ||
			typeof o.limits !== "object"
		) {
			return undefined;
		}
		return {
			model: o.model,
			scope: o.scope,
			name: o.name,
			limits: o.limits as WindowLimitsValue,
			updatedAt: typeof o.updatedAt === "string" ? o.updatedAt : "",
			updatedBy: typeof o.updatedBy === "string" ? o.updatedBy : "",
		};
	} catch {
		return undefined;
	}
}

/**
 * Per-user and per-tenant limits set at runtime through the admin API. They
 * live in the shared settings, so every replica applies a change after its next
 * poll, without a restart. Each window an override names replaces the
 * configured window of that kind for the model; the others stay.
 */
export class Overrides {
	private entries = new Map<string, { override: Override; windows: WindowLimit[] }>();
	private reloads = 0;

	constructor(private readonly settings: SettingsStore) {}

	/** Moves with every reload: what was derived from the overrides before may be stale. */
	get generation(): number {
		return this.reloads;
	}

	async reload(): Promise<void> {
		const stored = await this.settings.load("overrides");
		const entries = new Map<string, { override: Override; windows: WindowLimit[] }>();
		for (const [key, text] of stored) {
			const o = parse(text);
			if (o !== undefined) {
				const windows = windowsFrom(o.limits, 1);
				entries.set(key, { override: o, windows });
			}
		}
		this.entries = entries;
		this.reloads++;
	}

	/** The scope's own concurrency limit, if an override sets one. */
	concurrency(model: string, scope: OverrideScope, name: string): number | undefined {
		return this.entries.get(field(model, scope, name))?.override.limits["max-concurrent-requests"];
	}

	/** The windows an override sets (each replaces the configured window of its kind). */
	windows(model: string, scope: OverrideScope, name: string): WindowLimit[] | undefined {
		const windows = this.entries.get(field(model, scope, name))?.windows;
		return windows === undefined || windows.length === 0 ? undefined : windows;
	}

	get(model: string, scope: OverrideScope, name: string): Override | undefined {
		return this.entries.get(field(model, scope, name))?.override;
	}

	/** Sets an override; returns the one it replaced. */
	async set(
		model: string,
		scope: OverrideScope,
		name: string,
		limits: WindowLimitsValue,
		actor: string,
	): Promise<{ before: Override | undefined; after: Override }> {
		await this.reload();
		const before = this.get(model, scope, name);
		const after: Override = {
			model,
			scope,
			name,
			limits,
			updatedAt: new Date().toISOString(),
			updatedBy: actor,
		};
		await this.settings.put("overrides", field(model, scope, name), JSON.stringify(after));
		await this.reload();
		return { before, after };
	}

	/** Removes an override; returns it, or undefined when there was none. */
	async remove(model: string, scope: OverrideScope, name: string): Promise<Override | undefined> {
		await this.reload();
		const before = this.get(model, scope, name);
		await this.settings.remove("overrides", field(model, scope, name));
		await this.reload();
		return before;
	}
}
