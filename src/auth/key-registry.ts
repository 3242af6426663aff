import { randomBytes } from "node:crypto";
import { limitsOf, windowsFrom } from "../config/loader.ts";
import type { ApiKeyConfig, WindowLimitsValue } from "../config/schema.ts";
import type { Priority } from "../limits/queue.ts";
import type { SettingsStore } from "../settings.ts";
import { type KeyDirectory, type StaticKeys, sha256Hex } from "./authenticator.ts";

/** An API key as listed: everything but the key and its hash. */
export interface KeyInfo {
	readonly id: string;
	readonly user: string;
	readonly tenant: string | null;
	readonly roles: string[];
	readonly limits: WindowLimitsValue | null;
	readonly priority: Priority;
	readonly source: "config" | "runtime";
	readonly createdAt: string | null;
	readonly createdBy: string | null;
}

interface StoredKey {
	id: string;
	sha256: string;
	user: string;
	tenant: string | null;
	roles: string[];
	limits: WindowLimitsValue | null;
	priority?: Priority;
	createdAt: string;
	createdBy: string;
}

export interface IssueRequest {
	readonly id?: string | undefined;
	readonly user: string;
	readonly tenant?: string | undefined;
	readonly roles?: readonly string[] | undefined;
	readonly limits?: WindowLimitsValue | undefined;
	readonly priority?: Priority | undefined;
}

function parseStored(text: string): StoredKey | undefined {
	try {
		const v: unknown = JSON.parse(text);
		if (v === null || typeof v !== "object") return undefined;
		const r = v as Record<string, unknown>;
		if (typeof r.id !== "string" || typeof r.sha256 !== "string" || typeof r.user !== "string")
			return undefined;
		return {
			id: r.id,
			sha256: r.sha256,
			user: r.user,
			tenant: typeof r.tenant === "string" ? r.tenant : null,
			roles: Array.isArray(r.roles)
				? r.roles.filter((x): x is string => typeof x === "string")
				: [],
			limits:
				r.limits !== null && typeof r.limits === "object" ? (r.limits as WindowLimitsValue) : null,
			...(r.priority === "high" || r.priority === "normal" || r.priority === "low"
				? { priority: r.priority }
				: {}),
			createdAt: typeof r.createdAt === "string" ? r.createdAt : "",
			createdBy: typeof r.createdBy === "string" ? r.createdBy : "",
		};
	} catch {
		return undefined;
	}
}

function toConfig(k: StoredKey): ApiKeyConfig {
	const windows = k.limits === null ? [] : windowsFrom(k.limits, 1);
	return {
		id: k.id,
		sha256: k.sha256,
		user: k.user,
		tenant: k.tenant ?? undefined,
		roles: k.roles,
		limits: windows.length === 0 ? undefined : windows,
		concurrency: k.limits?.["max-concurrent-requests"],
		...(k.priority === undefined ? {} : { priority: k.priority }),
	};
}

function byUser(keys: readonly ApiKeyConfig[]): Map<string, ApiKeyConfig[]> {
	const out = new Map<string, ApiKeyConfig[]>();
	for (const k of keys) {
		const list = out.get(k.user);
		if (list === undefined) out.set(k.user, [k]);
		else list.push(k);
	}
	return out;
}

/**
 * API keys from the configuration file plus those issued through the admin
 * API. Issued keys live (as hashes) in the shared settings, so a key issued or
 * revoked on one replica is in force on every replica after the next poll.
 */
export class KeyRegistry implements KeyDirectory {
	private runtime = new Map<string, StoredKey>();
	private byHash = new Map<string, StoredKey>();
	/** Issued keys by user. */
	private runtimeByUser: ReadonlyMap<string, readonly ApiKeyConfig[]> = new Map();
	/** Configured keys by user. */
	private readonly configuredByUser: ReadonlyMap<string, readonly ApiKeyConfig[]>;
	private reloads = 0;

	constructor(
		private readonly fromConfig: StaticKeys,
		private readonly configured: readonly ApiKeyConfig[],
		private readonly settings: SettingsStore,
	) {
		this.configuredByUser = byUser(configured);
	}

	/** Moves with every reload: what was derived from the keys before may be stale. */
	get generation(): number {
		return this.reloads;
	}

	/** Reloads the issued keys from the shared settings. */
	async reload(): Promise<void> {
		const stored = await this.settings.load("api-keys");
		const runtime = new Map<string, StoredKey>();
		const byHash = new Map<string, StoredKey>();
		for (const text of stored.values()) {
			const k = parseStored(text);
			if (k === undefined) continue;
			runtime.set(k.id, k);
			byHash.set(k.sha256, k);
		}
		this.runtime = runtime;
		this.byHash = byHash;
		this.runtimeByUser = byUser([...runtime.values()].map(toConfig));
		this.reloads++;
	}

	/** Every key that spends `user`'s budget: configured and issued. */
	keysOf(user: string): readonly ApiKeyConfig[] {
		const configured = this.configuredByUser.get(user);
		const issued = this.runtimeByUser.get(user);
		if (configured === undefined) return issued ?? [];
		return issued === undefined ? configured : [...configured, ...issued];
	}

	byId(id: string): ApiKeyConfig | undefined {
		const k = this.runtime.get(id);
		return k === undefined ? this.fromConfig.byId(id) : toConfig(k);
	}

	bySha256(hex: string): ApiKeyConfig | undefined {
		const k = this.byHash.get(hex);
		return k === undefined ? this.fromConfig.bySha256(hex) : toConfig(k);
	}

	list(): KeyInfo[] {
		const fromConfig: KeyInfo[] = this.configured.map((k) => ({
			id: k.id,
			user: k.user,
			tenant: k.tenant ?? null,
			roles: [...k.roles],
			limits:
				k.limits === undefined && k.concurrency === undefined
					? null
					: {
							...limitsOf(k.limits ?? []),
							...(k.concurrency === undefined ? {} : { "max-concurrent-requests": k.concurrency }),
						},
			priority: k.priority ?? "normal",
			source: "config",
			createdAt: null,
			createdBy: null,
		}));
		const issued: KeyInfo[] = [...this.runtime.values()].map((k) => ({
			id: k.id,
			user: k.user,
			tenant: k.tenant,
			roles: k.roles,
			limits: k.limits,
			priority: k.priority ?? "normal",
			source: "runtime",
			createdAt: k.createdAt,
			createdBy: k.createdBy,
		}));
		return [...fromConfig, ...issued];
	}

	isConfigured(id: string): boolean {
		return this.fromConfig.byId(id) !== undefined;
	}

	/** Issues a key: the only time the key itself exists outside its holder. */
	async issue(req: IssueRequest, actor: string): Promise<{ key: string; info: KeyInfo }> {
		const id = req.id ?? `k${randomBytes(6).toString("hex")}`;
		const key = `trl_${id}_${randomBytes(24).toString("hex")}`;
		const stored: StoredKey = {
			id,
			sha256: sha256Hex(key),
			user: req.user,
			tenant: req.tenant ?? null,
			roles: [...(req.roles ?? [])],
			limits: req.limits ?? null,
			...(req.priority === undefined ? {} : { priority: req.priority }),
			createdAt: new Date().toISOString(),
			createdBy: actor,
		};
		await this.settings.put("api-keys", id, JSON.stringify(stored));
		await this.reload();
		const info = this.list().find((k) => k.id === id && k.source === "runtime");
		if (info === undefined) throw new Error("issued key not found after reload");
		return { key, info };
	}

	/** Revokes an issued key; false when there was none with that id. */
	async revoke(id: string): Promise<boolean> {
		const removed = await this.settings.remove("api-keys", id);
		await this.reload();
		return removed;
	}

	has(id: string): boolean {
		return this.runtime.has(id) || this.fromConfig.byId(id) !== undefined;
	}
}
