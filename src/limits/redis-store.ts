import { createClient, createCluster } from "redis";
import type { RedisConfig } from "../config/schema.ts";
import type { SettingsMap, SettingsStore } from "../settings.ts";
import {
	ALPHA,
	type CalibrationStore,
	calibrationFromReply,
	calibrationKey,
	calibrationSenderKey,
	MAX_ABS_LOG_RATIO,
	SENDER_TTL_MS,
	WARMUP_SAMPLES,
} from "./calibration.ts";
import { Deadlines } from "./deadlines.ts";
import { incrementUs, statuses, toleranceUs } from "./gcra.ts";
import { type LuaScript, SCRIPTS } from "./scripts.ts";
import type {
	ClockUs,
	LimitStore,
	ReserveRequest,
	ScopedWindow,
	SettleRequest,
	StoreDecision,
	StoreSnapshot,
} from "./store.ts";

/** Raised for a Redis reply the scripts never produce; a store failure, not a decision. */
export class StoreProtocolError extends Error {
	override readonly name = "StoreProtocolError";
}

/**
 * The model's slot was being moved between cluster nodes for longer than the
 * retry budget. Transient and local to one slot: it says nothing about Redis
 * being down.
 */
export class SlotMigratingError extends Error {
	override readonly name = "SlotMigratingError";
}

/** The one thing the store needs from a connection: run a command routed by its first key. */
interface CommandRunner {
	send(firstKey: string, args: string[]): Promise<unknown>;
	ready(): boolean;
	close(): Promise<void>;
}

/** How long a call keeps retrying TRYAGAIN (a slot being migrated) before giving up. */
const DEFAULT_MIGRATION_RETRY_MS = 2000;
const RESERVATION_TTL_MS = 24 * 3600 * 1000;
/** Where replicas announce themselves (its own slot; read only by the heartbeat). */
export const REPLICA_SET_KEY = "trl:replicas";
/** Shared settings live under one hash tag, so a cluster keeps them on one node. */
const SETTINGS_VERSION_KEY = "trl:{settings}:version";
const settingsKey = (map: SettingsMap) => `trl:{settings}:${map}`;

/** HGETALL's reply (RESP2 flat list or RESP3 map) as a Map of strings. */
function stringMap(reply: unknown): Map<string, string> {
	const out = new Map<string, string>();
	if (Array.isArray(reply)) {
		for (let i = 0; i + 1 < reply.length; i += 2) {
			const k = reply[i];
			const v = reply[i + 1];
			if (typeof k === "string" && typeof v === "string") out.set(k, v);
		}
	} else if (reply instanceof Map) {
		for (const [k, v] of reply) if (typeof k === "string" && typeof v === "string") out.set(k, v);
	} else if (reply !== null && typeof reply === "object") {
		for (const [k, v] of Object.entries(reply)) if (typeof v === "string") out.set(k, v);
	}
	return out;
}

function errorMessage(err: unknown): string {
	return err instanceof Error ? err.message : String(err);
}

function numbers(reply: unknown, what: string): number[] {
	if (!Array.isArray(reply)) throw new StoreProtocolError(`${what}: expected an array reply`);
	return reply.map((v) => {
		const n = typeof v === "number" ? v : typeof v === "string" ? Number(v) : Number.NaN;
		if (!Number.isFinite(n)) throw new StoreProtocolError(`${what}: expected numbers in the reply`);
		return n;
	});
}

function integer(reply: unknown, what: string): number {
	if (typeof reply === "number" && Number.isFinite(reply)) return reply;
	throw new StoreProtocolError(`${what}: expected an integer reply`);
}

/**
 * Each window's TAT increment for `costTokens` (1 for a window that counts
 * requests) and its tolerance, worked out exactly here (gcra.ts): the admit
 * script only compares and adds.
 */
function admitArgs(windows: readonly ScopedWindow[], costTokens: number): string[] {
	const out: string[] = [];
	for (const w of windows) {
		out.push(
			String(incrementUs(w.perRequest === true ? 1 : costTokens, w)),
			String(toleranceUs(w)),
		);
	}
	return out;
}

/**
 * What `tokens` cost in each window, in µs (0 for a window that counts
 * requests: settling leaves it as it is). At admission, as the reservation's
 * record (`i:` and comma-separated), the settle script subtracts it from what
 * the actual tokens cost.
 */
function tokenIncrements(windows: readonly ScopedWindow[], tokens: number): string[] {
	return windows.map((w) => (w.perRequest === true ? "0" : String(incrementUs(tokens, w))));
}

export interface RedisStoreOptions {
	/** Per-call time limit; the caller's failure policy decides what a timeout means. */
	readonly timeoutMs: number;
	/**
	 * Test harnesses only: a frozen clock sent to the scripts instead of Redis TIME,
	 * so the same conformance tables run on every store.
	 */
	readonly clock?: ClockUs;
	readonly onConnectionError?: (err: unknown) => void;
	/** How long to keep retrying while a slot migrates (TRYAGAIN); default 2 s. */
	readonly migrationRetryMs?: number;
}

/**
 * LimitStore on Redis or Redis Cluster: each reserve and each settle is one
 * EVALSHA of one script over every key of the request. All keys of a request
 * carry the model's hash tag, so in a cluster they share a slot. A NOSCRIPT
 * reply (restart, failover, a new node) is answered by sending that same command
 * again as EVAL, which also caches the script on that node; other commands in
 * the same pipeline are unaffected.
 */
export class RedisLimitStore implements LimitStore {
	readonly kind: string;

	/**
	 * Each call is bounded by `timeoutMs` from the caller's side: a reply that
	 * comes later is ignored and the failure policy answers (node-redis's own
	 * timeout does not bound a command once it is written).
	 */
	private readonly deadlines: Deadlines;

	private constructor(
		private readonly runner: CommandRunner,
		kind: "redis" | "redis-cluster",
		private readonly options: RedisStoreOptions,
	) {
		this.kind = kind;
		this.deadlines = new Deadlines(options.timeoutMs);
	}

	private send(firstKey: string, args: string[]): Promise<unknown> {
		return this.deadlines.run(this.runner.send(firstKey, args), "Redis");
	}

	/** Connects to a standalone Redis (resolves once connected or after `connectWaitMs`). */
	static async standalone(
		config: RedisConfig,
		options: RedisStoreOptions,
		connectWaitMs = 2000,
	): Promise<RedisLimitStore> {
		const reconnectStrategy = (retries: number) => Math.min(50 * 2 ** retries, 1000);
		const socket =
			config.url !== undefined
				? { connectTimeout: 2000, reconnectStrategy }
				: config.tls
					? {
							host: config.host,
							port: config.port,
							tls: true as const,
							connectTimeout: 2000,
							reconnectStrategy,
						}
					: { host: config.host, port: config.port, connectTimeout: 2000, reconnectStrategy };
		const client = createClient({
			...(config.url === undefined ? {} : { url: config.url }),
			socket,
			...(config.username === undefined ? {} : { username: config.username }),
			...(config.password === undefined ? {} : { password: config.password }),
			database: config.database,
			// Fail at once while disconnected, so the failure policy answers instead of a queue.
			disableOfflineQueue: true,
		});
		client.on("error", (err: unknown) => options.onConnectionError?.(err));
		const connecting = client.connect().catch((err: unknown) => options.onConnectionError?.(err));
		await Promise.race([connecting, Bun.sleep(connectWaitMs)]);
		const runner: CommandRunner = {
			send: (_firstKey, args) => client.sendCommand(args),
			ready: () => client.isReady,
			close: async () => {
				if (client.isOpen) client.destroy();
			},
		};
		return new RedisLimitStore(runner, "redis", options);
	}

	/** Connects to a Redis Cluster through its seed nodes. */
	static async cluster(
		config: RedisConfig,
		options: RedisStoreOptions,
		connectWaitMs = 3000,
	): Promise<RedisLimitStore> {
		const scheme = config.tls ? "rediss" : "redis";
		const rootNodes =
			config.clusterNodes.length > 0
				? config.clusterNodes.map((node) => ({ url: `${scheme}://${node}` }))
				: [{ url: config.url ?? `${scheme}://${config.host}:${config.port}` }];
		const cluster = createCluster({
			rootNodes,
			defaults: {
				...(config.username === undefined ? {} : { username: config.username }),
				...(config.password === undefined ? {} : { password: config.password }),
				socket: config.tls
					? {
							tls: true as const,
							connectTimeout: 2000,
							reconnectStrategy: (retries: number) => Math.min(50 * 2 ** retries, 1000),
						}
					: {
							connectTimeout: 2000,
							reconnectStrategy: (retries: number) => Math.min(50 * 2 ** retries, 1000),
						},
				disableOfflineQueue: true,
			},
		});
		cluster.on("error", (err: unknown) => options.onConnectionError?.(err));
		let connected = false;
		const connect = async (): Promise<void> => {
			try {
				await cluster.connect();
				connected = true;
			} catch (err) {
				options.onConnectionError?.(err);
				// Keep trying in the background: the gateway serves under its failure policy meanwhile.
				setTimeout(() => void connect(), 1000).unref();
			}
		};
		await Promise.race([connect(), Bun.sleep(connectWaitMs)]);
		const runner: CommandRunner = {
			send: (firstKey, args) => cluster.sendCommand(firstKey, false, args),
			ready: () => connected && cluster.isOpen,
			close: async () => {
				if (cluster.isOpen) cluster.destroy();
			},
		};
		return new RedisLimitStore(runner, "redis-cluster", options);
	}

	private nowArg(): string {
		return this.options.clock === undefined ? "" : String(this.options.clock());
	}

	/**
	 * EVALSHA, answered on NOSCRIPT by EVAL of the same command. TRYAGAIN (keys of
	 * the slot split between two nodes during a migration: the script did not run)
	 * is retried with backoff until the migration budget runs out; MOVED and ASK
	 * are followed by node-redis.
	 */
	private async run(script: LuaScript, keys: string[], args: string[]): Promise<unknown> {
		const firstKey = keys[0] ?? REPLICA_SET_KEY;
		const tail = [String(keys.length), ...keys, ...args];
		let migrationDeadline = 0;
		for (let attempt = 0; ; attempt++) {
			try {
				try {
					return await this.send(firstKey, ["EVALSHA", script.sha1, ...tail]);
				} catch (err) {
					if (!errorMessage(err).startsWith("NOSCRIPT")) throw err;
					return await this.send(firstKey, ["EVAL", script.source, ...tail]);
				}
			} catch (err) {
				if (!errorMessage(err).startsWith("TRYAGAIN")) throw err;
				const now = performance.now();
				if (attempt === 0)
					migrationDeadline = now + (this.options.migrationRetryMs ?? DEFAULT_MIGRATION_RETRY_MS);
				if (now >= migrationDeadline) {
					throw new SlotMigratingError(`slot of ${firstKey} still migrating: ${errorMessage(err)}`);
				}
				await Bun.sleep(Math.min(50, 5 * 2 ** attempt));
			}
		}
	}

	async reserve(req: ReserveRequest): Promise<StoreDecision> {
		const n = req.windows.length;
		const slot = req.slot;
		const extras = req.extraSlots ?? [];
		const reply = numbers(
			await this.run(
				SCRIPTS.admit,
				[
					...req.windows.map((w) => w.key),
					req.reservationKey,
					slot?.key ?? `${req.reservationKey}:noslot`,
					...extras.map((x) => x.key),
				],
				[
					this.nowArg(),
					`i:${tokenIncrements(req.windows, req.costTokens).join(",")}`,
					String(n),
					String(slot?.limit ?? 0),
					req.requestId,
					String(slot?.leaseMs ?? extras[0]?.leaseMs ?? 0),
					String(RESERVATION_TTL_MS),
					...admitArgs(req.windows, req.costTokens),
					...extras.map((x) => String(x.limit)),
				],
			),
			"admit",
		);
		if (reply.length !== 4 + n) throw new StoreProtocolError("admit: unexpected reply length");
		const [kind = -1, blocking = 0, retryAfterUs = 0, nowUs = 0, ...tats] = reply;
		// Each window's standing, from the TATs the script saw or wrote and its clock.
		const windows = statuses(tats, req.windows, nowUs);
		switch (kind) {
			case 0:
				return { kind: "admitted", windows };
			case 1:
				return { kind: "limited", retryAfterUs, blockingIndex: blocking - 1, windows };
			case 2:
				return { kind: "never", blockingIndex: blocking - 1, windows };
			case 3:
				return extras.length === 0
					? { kind: "busy", windows }
					: { kind: "busy", windows, slotIndex: blocking - 1 };
			default:
				throw new StoreProtocolError(`admit: unknown decision ${kind}`);
		}
	}

	async settle(req: SettleRequest): Promise<boolean> {
		const reply = await this.run(
			SCRIPTS.settle,
			[
				...req.windows.map((w) => w.key),
				req.reservationKey,
				req.slotKey ?? `${req.reservationKey}:noslot`,
				...(req.extraSlotKeys ?? []),
			],
			[
				this.nowArg(),
				String(req.windows.length),
				req.requestId,
				...tokenIncrements(req.windows, req.actualTokens),
			],
		);
		return integer(reply, "settle") === 1;
	}

	async renewSlot(slotKey: string, requestId: string, leaseMs: number): Promise<boolean> {
		const reply = await this.run(
			SCRIPTS.renew,
			[slotKey],
			[this.nowArg(), requestId, String(leaseMs)],
		);
		return integer(reply, "renew") === 1;
	}

	async peek(windows: readonly ScopedWindow[], slotKey: string): Promise<StoreSnapshot> {
		const reply = numbers(
			await this.run(
				SCRIPTS.peek,
				[...windows.map((w) => w.key), slotKey],
				[this.nowArg(), String(windows.length)],
			),
			"peek",
		);
		const [nowUs = 0, slotsInUse = 0, ...tats] = reply;
		return { windows: statuses(tats, windows, nowUs), slotsInUse };
	}

	async resetWindows(windows: readonly ScopedWindow[]): Promise<void> {
		const first = windows[0];
		if (first === undefined) return;
		// All keys share the model's hash tag: one DEL in one slot.
		await this.send(first.key, ["DEL", ...windows.map((w) => w.key)]);
	}

	readonly settings: SettingsStore = {
		load: async (map) => {
			const reply = await this.send(settingsKey(map), ["HGETALL", settingsKey(map)]);
			return stringMap(reply);
		},
		put: async (map, field, value) => {
			await this.send(settingsKey(map), ["HSET", settingsKey(map), field, value]);
			await this.send(SETTINGS_VERSION_KEY, ["INCR", SETTINGS_VERSION_KEY]);
		},
		remove: async (map, field) => {
			const removed = integer(
				await this.send(settingsKey(map), ["HDEL", settingsKey(map), field]),
				"hdel",
			);
			if (removed > 0) await this.send(SETTINGS_VERSION_KEY, ["INCR", SETTINGS_VERSION_KEY]);
			return removed > 0;
		},
		version: async () => {
			const reply = await this.send(SETTINGS_VERSION_KEY, ["GET", SETTINGS_VERSION_KEY]);
			return reply === null ? 0 : Number(reply);
		},
	};

	readonly calibration: CalibrationStore = {
		fold: async (key, batch) =>
			calibrationFromReply(
				await this.run(
					SCRIPTS.calibrate,
					[calibrationKey(key), calibrationSenderKey(key, batch.sender)],
					[
						"fold",
						String(batch.epoch),
						String(batch.seq),
						String(batch.count),
						String(ALPHA),
						String(WARMUP_SAMPLES),
						String(MAX_ABS_LOG_RATIO),
						String(SENDER_TTL_MS),
						String(batch.meanSums.length),
						...batch.meanSums.map(String),
						...batch.residualSums.map(String),
					],
				),
			),
		read: async (key) =>
			calibrationFromReply(await this.run(SCRIPTS.calibrate, [calibrationKey(key)], ["read"])),
		pin: async (key, ratio) =>
			calibrationFromReply(
				await this.run(
					SCRIPTS.calibrate,
					[calibrationKey(key)],
					["pin", ratio === undefined ? "" : String(ratio)],
				),
			),
		reset: async (key) =>
			calibrationFromReply(await this.run(SCRIPTS.calibrate, [calibrationKey(key)], ["reset"])),
	};

	/** Announces this replica and returns how many are alive. */
	async heartbeat(instanceId: string, ttlMs: number): Promise<number> {
		const reply = await this.run(
			SCRIPTS.heartbeat,
			[REPLICA_SET_KEY],
			[this.nowArg(), instanceId, String(ttlMs)],
		);
		return integer(reply, "heartbeat");
	}

	/** Withdraws this replica from the live set (a clean shutdown). */
	async leave(instanceId: string): Promise<void> {
		await this.send(REPLICA_SET_KEY, ["ZREM", REPLICA_SET_KEY, instanceId]);
	}

	async ping(): Promise<boolean> {
		if (!this.runner.ready()) return false;
		try {
			await this.run(SCRIPTS.peek, [REPLICA_SET_KEY], [this.nowArg(), "0"]);
			return true;
		} catch {
			return false;
		}
	}

	get connected(): boolean {
		return this.runner.ready();
	}

	async close(): Promise<void> {
		await this.runner.close();
	}
}
