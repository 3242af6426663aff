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
import { incrementUs, reserve, statuses, toleranceUs } from "./gcra.ts";
import { type LuaScript, SCRIPTS } from "./scripts.ts";
import type {
	ClockUs,
	LimitStore,
	QueueReply,
	QueueTarget,
	ReserveRequest,
	ScopedWindow,
	SettleRequest,
	SharedQueue,
	StoreDecision,
	StoreSnapshot,
} from "./store.ts";

/** Raised for a Redis reply the scripts never produce; a store failure, not a decision. */
export class StoreProtocolError extends Error {
	override readonly name = "StoreProtocolError";
}

import { SlotMigratingError } from "./slot-migrating.ts";

export { SlotMigratingError };

/** The one thing the store needs from a connection: run a command routed by its first key. */
interface CommandRunner {
	send(firstKey: string, args: string[]): Promise<unknown>;
	ready(): boolean;
	close(): Promise<void>;
}

/** How long a call keeps retrying TRYAGAIN (a slot being migrated) before giving up. */
const DEFAULT_MIGRATION_RETRY_MS = 2000;
const RESERVATION_TTL_ARG = String(24 * 3600 * 1000);
/** At most this many calls go in one script call; a full batch is sent at once. */
const MAX_BATCH = 128;
/**
 * A replica that has not polled its model's shared queue for this long is gone:
 * its waiting entries are dropped. Replicas poll every 25 ms while they have
 * requests waiting.
 */
export const QUEUE_OWNER_TTL_MS = 1500;
/** How long a slot granted by the shared queue is held for its request to claim it. */
export const QUEUE_GRANT_GRACE_MS = 2000;
/** Where replicas announce themselves (its own slot; read only by the heartbeat). */
export const REPLICA_SET_KEY = "trl:replicas";
/** Written (and expiring) by the probe that decides whether Redis is back. */
const PROBE_KEY = "trl:probe";
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
 * How a list of windows is described to the batch script: grouped by owner
 * (hash), owners in first-seen order, each with its number of windows and its
 * longest window in ms, then per window its field, tolerance and what one
 * request adds to it if it counts requests. `order` gives the windows in that
 * grouped order. The limiter lists a spender's windows owner by owner and reuses
 * the list, so the order is usually the list's own and this is worked out once
 * per list; spenders with the same limits share one `signature`.
 */
interface WindowLayout {
	readonly owners: readonly string[];
	/** Indexes into the window list, grouped by owner. */
	readonly order: readonly number[];
	/** Whether `order` is the list's own order. */
	readonly inOrder: boolean;
	/** The owners' and windows' part of a shape, as sent. */
	readonly description: readonly string[];
	/** The same for every list whose description is the same. */
	readonly descriptionId: number;
}

const layouts = new WeakMap<readonly ScopedWindow[], WindowLayout>();
/** Descriptions seen, numbered, so that a batch tells shapes apart by a short key. */
const descriptions = new Map<string, number>();

function layoutOf(windows: readonly ScopedWindow[]): WindowLayout {
	const known = layouts.get(windows);
	if (known !== undefined) return known;
	const groups = new Map<string, number[]>();
	windows.forEach((w, i) => {
		const group = groups.get(w.key);
		if (group === undefined) groups.set(w.key, [i]);
		else group.push(i);
	});
	const order = [...groups.values()].flat();
	const description: string[] = [];
	for (const group of groups.values()) {
		const longest = Math.max(...group.map((i) => Math.ceil((windows[i]?.windowUs ?? 0) / 1000)));
		description.push(String(group.length), String(longest));
	}
	for (const at of order) {
		const w = windows[at];
		if (w === undefined) continue;
		description.push(
			w.field,
			String(toleranceUs(w)),
			w.perRequest === true ? String(incrementUs(1, w)) : "",
		);
	}
	const text = description.join(" ");
	let descriptionId = descriptions.get(text);
	if (descriptionId === undefined) {
		descriptionId = descriptions.size;
		descriptions.set(text, descriptionId);
	}
	const layout: WindowLayout = {
		owners: [...groups.keys()],
		order,
		inOrder: order.every((at, i) => at === i),
		description,
		descriptionId,
	};
	layouts.set(windows, layout);
	return layout;
}

/** Per window in list order, from values given in the layout's grouped order. */
function inListOrder(layout: WindowLayout, grouped: readonly number[]): number[] {
	if (layout.inOrder) return [...grouped];
	const out = new Array<number>(grouped.length);
	layout.order.forEach((at, g) => {
		out[at] = grouped[g] ?? 0;
	});
	return out;
}

/**
 * What `tokens` cost in each window, in µs, in the layout's grouped order and
 * comma-separated (0 for a window that counts requests: its cost is in the
 * shape), worked out exactly here (gcra.ts): the script only compares and adds.
 * At admission it is the reservation's record (after `h:`), which settle
 * subtracts from what the actual tokens cost.
 */
function costs(windows: readonly ScopedWindow[], layout: WindowLayout, tokens: number): string {
	let out = "";
	for (const at of layout.order) {
		const w = windows[at];
		if (w === undefined) continue;
		const us = w.perRequest === true ? "0" : String(incrementUs(tokens, w));
		out = out === "" ? us : `${out},${us}`;
	}
	return out;
}

/** The hash tag of a key (`{model}`), or the whole key when it has none. */
function hashTag(key: string): string {
	const open = key.indexOf("{");
	if (open < 0) return key;
	const close = key.indexOf("}", open + 1);
	return close > open + 1 ? key.slice(open + 1, close) : key;
}

function admitDecision(
	kind: number | undefined,
	blocking: number,
	retryAfterUs: number,
	windows: StoreDecision["windows"],
	extraSlots: boolean,
): StoreDecision {
	switch (kind) {
		case 0:
			return { kind: "admitted", windows };
		case 1:
			return { kind: "limited", retryAfterUs, blockingIndex: blocking - 1, windows };
		case 2:
			return { kind: "never", blockingIndex: blocking - 1, windows };
		case 3:
			return extraSlots
				? { kind: "busy", windows, slotIndex: blocking - 1 }
				: { kind: "busy", windows };
		default:
			throw new StoreProtocolError(`batch: unknown decision ${String(kind)}`);
	}
}

/** One call waiting in a batch: how to read its part of the reply, or how to fail it. */
interface BatchEntry {
	/** Reads this call's part of the reply from `at`; returns where the next part starts. */
	answer(reply: readonly number[], at: number, nowUs: number): number;
	fail(err: unknown): void;
}

/**
 * The calls of one turn for one hash slot: the batch script's keys and
 * arguments, built as they come, with each shape of request described once.
 */
class Batch {
	readonly entries: BatchEntry[] = [];
	readonly keys: string[] = [];
	readonly entryArgs: string[] = [];
	private readonly shapes = new Map<string, string>();
	private readonly shapeArgs: string[] = [];
	constructor(private readonly clock: string) {}

	/** The index of a shape in this call, described the first time it is used. */
	shape(
		layout: WindowLayout,
		windows: number,
		slotLimit: number,
		leaseMs: number,
		extraLimits: readonly number[],
		queued: boolean,
	): string {
		const q = queued ? "1" : "0";
		const signature =
			extraLimits.length === 0
				? `${layout.descriptionId} ${slotLimit} ${leaseMs} ${q}`
				: `${layout.descriptionId} ${slotLimit} ${leaseMs} ${q} ${extraLimits.join(" ")}`;
		const known = this.shapes.get(signature);
		if (known !== undefined) return known;
		const index = String(this.shapes.size + 1);
		this.shapes.set(signature, index);
		this.shapeArgs.push(
			String(layout.owners.length),
			String(windows),
			String(extraLimits.length),
			String(slotLimit),
			String(leaseMs),
			RESERVATION_TTL_ARG,
			q,
			...layout.description,
			...extraLimits.map(String),
		);
		return index;
	}

	args(): string[] {
		return [this.clock, String(this.shapes.size), ...this.shapeArgs, ...this.entryArgs];
	}
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
 * LimitStore on Redis or Redis Cluster. The reserves and settles of one event-loop
 * turn go as one EVALSHA of the batch script (per hash tag in a cluster), which
 * decides them in the order they came, each as if alone. All keys of a request
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
	/** Calls of this turn not yet sent, by hash tag ("" for all on a standalone Redis). */
	private readonly batches = new Map<string, Batch>();
	private flushScheduled = false;

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

	/**
	 * Queues a call into its model's batch, which goes to Redis at the end of
	 * this event-loop turn (a full one at once). On a standalone Redis every
	 * model shares one batch; in a cluster each model's keys live in one slot, so
	 * the batch is per hash tag. (Holding a batch back while the previous one is
	 * on its way was measured too: about a quarter fewer calls, no clear change in
	 * Redis or gateway CPU or in latency, so the simpler rule stays.)
	 */
	private enqueue(firstKey: string, build: (batch: Batch) => void): void {
		const group = this.kind === "redis" ? "" : hashTag(firstKey);
		let batch = this.batches.get(group);
		if (batch === undefined) {
			batch = new Batch(this.nowArg());
			this.batches.set(group, batch);
			if (!this.flushScheduled) {
				this.flushScheduled = true;
				setImmediate(this.flushAll);
			}
		}
		build(batch);
		if (batch.entries.length >= MAX_BATCH) {
			this.batches.delete(group);
			void this.flush(batch);
		}
	}

	private readonly flushAll = (): void => {
		this.flushScheduled = false;
		const batches = [...this.batches.values()];
		this.batches.clear();
		for (const batch of batches) void this.flush(batch);
	};

	/** Sends one batch; a failed call fails each of its requests, for the failure policy to answer. */
	private async flush(batch: Batch): Promise<void> {
		let reply: number[];
		try {
			reply = numbers(await this.run(SCRIPTS.batch, batch.keys, batch.args()), "batch");
		} catch (err) {
			for (const entry of batch.entries) entry.fail(err);
			return;
		}
		const nowUs = reply[0] ?? 0;
		let at = 1;
		for (const entry of batch.entries) {
			try {
				at = entry.answer(reply, at, nowUs);
			} catch (err) {
				entry.fail(err);
			}
		}
	}

	reserve(req: ReserveRequest): Promise<StoreDecision> {
		return new Promise<StoreDecision>((resolve, reject) => {
			const first = req.windows[0]?.key ?? req.reservationKey;
			this.enqueue(first, (batch) => {
				const windows = req.windows;
				const n = windows.length;
				const layout = layoutOf(windows);
				const slot = req.slot;
				const extras = req.extraSlots ?? [];
				batch.keys.push(
					...layout.owners,
					req.reservationKey,
					slot?.key ?? `${req.reservationKey}:noslot`,
					...extras.map((x) => x.key),
				);
				const queued = req.queueKey !== undefined;
				if (req.queueKey !== undefined) batch.keys.push(req.queueKey);
				const shape = batch.shape(
					layout,
					n,
					slot?.limit ?? 0,
					slot?.leaseMs ?? extras[0]?.leaseMs ?? 0,
					extras.map((x) => x.limit),
					queued,
				);
				batch.entryArgs.push(
					req.claim === true ? "c" : "a",
					shape,
					req.requestId,
					`h:${costs(windows, layout, req.costTokens)}`,
				);
				batch.entries.push({
					fail: reject,
					answer: (reply, at, nowUs) => {
						const end = at + 3 + n;
						if (reply.length < end) throw new StoreProtocolError("batch: reply too short");
						const kind = reply[at];
						const tats = inListOrder(layout, reply.slice(at + 3, end));
						// Each window's standing, from the TATs the script saw or wrote and its clock.
						const standing = statuses(tats, windows, nowUs);
						if (!layout.inOrder && (kind === 1 || kind === 2)) {
							// Which window blocks, counted in the list's order (the script counts in its own).
							const d = reserve(tats, windows, req.costTokens, nowUs);
							if (d.kind === "limited" || d.kind === "never") {
								resolve({ ...d, windows: standing });
								return end;
							}
						}
						const blocking = reply[at + 1] ?? 0;
						const retryAfterUs = reply[at + 2] ?? 0;
						resolve(admitDecision(kind, blocking, retryAfterUs, standing, extras.length > 0));
						return end;
					},
				});
			});
		});
	}

	settle(req: SettleRequest): Promise<boolean> {
		return new Promise<boolean>((resolve, reject) => {
			const first = req.windows[0]?.key ?? req.reservationKey;
			this.enqueue(first, (batch) => {
				const windows = req.windows;
				const layout = layoutOf(windows);
				const leases = [
					...(req.slotKey === undefined ? [] : [req.slotKey]),
					...(req.extraSlotKeys ?? []),
				];
				batch.keys.push(...layout.owners, req.reservationKey, ...leases);
				batch.entryArgs.push(
					"s",
					batch.shape(layout, windows.length, 0, 0, [], false),
					req.requestId,
					String(leases.length),
					costs(windows, layout, req.actualTokens),
				);
				batch.entries.push({
					fail: reject,
					answer: (reply, at) => {
						const settled = reply[at];
						if (settled !== 0 && settled !== 1) {
							throw new StoreProtocolError("batch: bad settle reply");
						}
						resolve(settled === 1);
						return at + 1;
					},
				});
			});
		});
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
		const layout = layoutOf(windows);
		const fields: string[] = [];
		for (const w of windows) fields.push(String(layout.owners.indexOf(w.key) + 1), w.field);
		const reply = numbers(
			await this.run(
				SCRIPTS.peek,
				[...layout.owners, slotKey],
				[this.nowArg(), String(layout.owners.length), String(windows.length), ...fields],
			),
			"peek",
		);
		const [nowUs = 0, slotsInUse = 0, ...tats] = reply;
		return { windows: statuses(tats, windows, nowUs), slotsInUse };
	}

	async resetWindows(windows: readonly ScopedWindow[]): Promise<void> {
		const byOwner = new Map<string, string[]>();
		for (const w of windows) {
			const fields = byOwner.get(w.key);
			if (fields === undefined) byOwner.set(w.key, [w.field]);
			else fields.push(w.field);
		}
		// An owner's windows are fields of one hash; its expiry field stays, so
		// the hash still expires no earlier than any window it holds.
		for (const [key, fields] of byOwner) await this.send(key, ["HDEL", key, ...fields]);
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

	readonly queue: SharedQueue = {
		join: (target, owner, entry) =>
			this.queueCall(
				target,
				owner,
				"join",
				entry.ownSlots.map((x) => x.key),
				[
					entry.id,
					String(entry.rank),
					entry.tenant,
					entry.user,
					String(entry.maxQueued),
					...entry.ownSlots.map((x) => String(x.limit)),
				],
			),
		poll: (target, owner) => this.queueCall(target, owner, "poll", [], []),
		leave: (target, owner, id, ownSlotKeys) =>
			this.queueCall(target, owner, "leave", ownSlotKeys, [id]),
		depth: async (key) => integer(await this.send(key, ["HLEN", key]), "hlen"),
	};

	private async queueCall(
		target: QueueTarget,
		owner: string,
		op: "join" | "poll" | "leave",
		keys: readonly string[],
		args: readonly string[],
	): Promise<QueueReply> {
		const reply = await this.run(
			SCRIPTS.queue,
			[target.queueKey, target.slotKey, ...keys],
			[
				this.nowArg(),
				op,
				owner,
				String(target.limit),
				String(target.agingMs),
				String(QUEUE_OWNER_TTL_MS),
				String(QUEUE_GRANT_GRACE_MS),
				String(target.maxWaitMs),
				...args,
			],
		);
		if (!Array.isArray(reply) || reply.length < 3) {
			throw new StoreProtocolError("queue: expected an array reply");
		}
		const [joined, waiting, mine, ...granted] = reply;
		return {
			joined: integer(joined, "queue") === 1,
			waiting: integer(waiting, "queue"),
			mine: integer(mine, "queue"),
			granted: granted.filter((g): g is string => typeof g === "string"),
		};
	}

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

	/**
	 * Whether Redis takes a write now. A full Redis under `noeviction` answers
	 * reads (and PING) but refuses writes: only a write tells it can serve.
	 */
	async writable(): Promise<boolean> {
		if (!this.runner.ready()) return false;
		try {
			await this.runner.send(PROBE_KEY, ["SET", PROBE_KEY, "1", "PX", "5000"]);
			return true;
		} catch {
			return false;
		}
	}

	async ping(): Promise<boolean> {
		if (!this.runner.ready()) return false;
		try {
			await this.run(SCRIPTS.peek, [REPLICA_SET_KEY], [this.nowArg(), "0", "0"]);
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
