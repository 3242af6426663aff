/**
 * Slot migration (TRYAGAIN / MOVED / ASK) under load: the cluster store retries, and what it
 * cannot bridge is a thrown store error for the failure policy, never a wrong decision and never
 * lost or split state.
 *
 * A real 3-master cluster; 8 loops of reserve+settle pairs on one model's hash tag `{migr}` (its
 * own users per loop, a model-wide window and a concurrency lease set), while the test moves
 * that slot by hand, the way `redis-cli --cluster reshard` does: IMPORTING on the destination,
 * MIGRATING on the source, batches of GETKEYSINSLOT + MIGRATE, each state held until the load
 * has met it (a call answered TRYAGAIN in it: slot open with all keys still on the source, keys
 * split between the nodes, all keys on the destination with the slot still open), then SETSLOT
 * NODE everywhere.
 *
 * The clock sent to the scripts is frozen (ahead of the wall clock, so PXAT expiries stay in the
 * future), which makes the final accounting exact: every admitted request must end up costing
 * exactly its actual tokens in every window, whichever node ran which half of it.
 */
import { afterAll, beforeAll, expect, it, setDefaultTimeout } from "bun:test";
import { RedisClient } from "bun";
import {
	RedisLimitStore,
	SlotMigratingError,
	StoreProtocolError,
} from "../src/limits/redis-store.ts";
import type { ScopedWindow, StoreDecision } from "../src/limits/store.ts";
import { type RedisClusterHandle, redisStoreConfig, startRedisCluster } from "./support/redis.ts";
import { until } from "./support/wait.ts";

// Starts real servers (mock vLLM, Redis, gateways): slower than bun's default 5 s per test.
setDefaultTimeout(30_000);

const TAG = "migr";
const PREFIX = `trl:{${TAG}}`;
const SLOT_SET = `${PREFIX}:slots`;
const LOOPS = 8;
/** Enough users that the slot holds several MIGRATE batches of keys. */
const USERS_PER_LOOP = 40;
const BATCH = 50;
const COST = 300;
const ACTUAL = 120;
const LEASE = { key: SLOT_SET, limit: 1_000_000, leaseMs: 30_000 } as const;

const MINUTE_US = 60_000_000;
const DAY_US = 86_400_000_000;
/** Whole microseconds per token in every window, so used tokens are exact. */
const USER_MINUTE = { windowUs: MINUTE_US, limitTokens: 60_000_000, burstTokens: 60_000_000 };
const USER_DAY = { windowUs: DAY_US, limitTokens: 86_400_000, burstTokens: 86_400_000 };
const MODEL_MINUTE = { windowUs: MINUTE_US, limitTokens: 60_000_000, burstTokens: 60_000_000 };

/** Frozen, 10 minutes ahead of the wall clock (window keys expire at their TAT in real time). */
const NOW_US = Math.ceil((Date.now() * 1000 + 10 * MINUTE_US) / 1_000_000) * 1_000_000;

/**
 * Open reservations per loop, each held 20-400 ms before its settle (like an upstream call), so
 * requests admitted before the slot opened are settled while it is open and while keys are split.
 */
const IN_FLIGHT = 24;
const HOLD_MIN_MS = 20;
const HOLD_SPREAD_MS = 380;

function windowsOf(user: string): ScopedWindow[] {
	return [
		{ key: `${PREFIX}:u:${user}`, field: "minute", ...USER_MINUTE },
		{ key: `${PREFIX}:u:${user}`, field: "day", ...USER_DAY },
		{ key: `${PREFIX}:m`, field: "minute", ...MODEL_MINUTE },
	];
}

function lines(text: string): string[] {
	return text === "" ? [] : text.split("\n").filter((l) => l !== "");
}

function errorMessage(err: unknown): string {
	return err instanceof Error ? err.message : String(err);
}

/** The first word of a Redis error reply (TRYAGAIN, ASK, MOVED, CROSSSLOT, ...), else the text. */
function errorClass(err: unknown): string {
	if (err instanceof StoreProtocolError) return `StoreProtocolError: ${err.message}`;
	if (err instanceof SlotMigratingError) return "SlotMigratingError";
	const message = errorMessage(err);
	const word = /^[A-Z]+\b/.exec(message)?.[0];
	return word ?? `${err instanceof Error ? err.name : typeof err}: ${message}`;
}

interface OpError {
	readonly op: "reserve" | "settle";
	readonly requestId: string;
	readonly cls: string;
	readonly message: string;
	readonly isError: boolean;
	readonly startedMs: number;
	readonly endedMs: number;
}

interface Held {
	readonly requestId: string;
	readonly user: string;
	readonly dueMs: number;
}

interface Unsettled {
	readonly requestId: string;
	readonly user: string;
}

/** `errorstat_<NAME>:count=N` from INFO errorstats, summed by name. */
function errorStats(info: string): Map<string, number> {
	const out = new Map<string, number>();
	for (const m of info.matchAll(/^errorstat_([A-Za-z]+):count=(\d+)/gm)) {
		const name = m[1] ?? "?";
		out.set(name, (out.get(name) ?? 0) + Number(m[2]));
	}
	return out;
}

/** Which master (by port) serves `slot`, according to CLUSTER NODES as seen from `fromPort`. */
async function ownerOf(
	cluster: RedisClusterHandle,
	fromPort: number,
	slot: number,
): Promise<number | undefined> {
	for (const line of lines(await cluster.cli(fromPort, "CLUSTER", "NODES"))) {
		const fields = line.split(" ");
		const port = Number(/:(\d+)@/.exec(fields[1] ?? "")?.[1]);
		for (const range of fields.slice(8)) {
			if (range.startsWith("[")) continue; // a migrating/importing marker, not ownership
			const [lo, hi] = range.split("-").map(Number);
			if (lo === undefined) continue;
			if (slot >= lo && slot <= (hi ?? lo)) return port;
		}
	}
	return undefined;
}

let cluster: RedisClusterHandle | undefined;
let store: RedisLimitStore | undefined;

beforeAll(async () => {
	cluster = await startRedisCluster({ masters: 3 });
	store = await RedisLimitStore.cluster(
		redisStoreConfig({ clusterNodes: cluster.nodeList.split(",") }),
		{
			timeoutMs: 2_000,
			clock: () => NOW_US,
		},
	);
	if (!store.connected) throw new Error(`could not connect to the cluster at ${cluster.nodeList}`);
});

afterAll(async () => {
	await store?.close();
	await cluster?.stop();
});

it("slot migration under load: TRYAGAIN/ASK/MOVED are retried or thrown as store errors, never a wrong decision, and no state is lost", async () => {
	if (cluster === undefined || store === undefined) throw new Error("the cluster did not start");
	const c = cluster;
	const s = store;
	const ports = c.nodes.map((n) => n.port);
	const first = ports[0];
	if (first === undefined) throw new Error("no cluster nodes");

	// --- where the tag lives, and where it goes -------------------------------------------------
	const slot = Number(await c.cli(first, "CLUSTER", "KEYSLOT", SLOT_SET));
	expect(Number(await c.cli(first, "CLUSTER", "KEYSLOT", `${PREFIX}:r:x`))).toBe(slot);
	const src = await ownerOf(c, first, slot);
	if (src === undefined) throw new Error(`no owner for slot ${slot}`);
	const dst = ports.find((p) => p !== src);
	const other = ports.find((p) => p !== src && p !== dst);
	if (dst === undefined || other === undefined) throw new Error("need 3 masters");
	const srcId = await c.cli(src, "CLUSTER", "MYID");
	const dstId = await c.cli(dst, "CLUSTER", "MYID");
	await Promise.all(ports.map((p) => c.cli(p, "CONFIG", "RESETSTAT")));

	// --- the load ---------------------------------------------------------------------------------
	const t0 = performance.now();
	const elapsed = (): number => performance.now() - t0;
	let stopping = false;
	const decisions = new Map<StoreDecision["kind"], number>();
	const admittedByUser = new Map<string, number>();
	const errors: OpError[] = [];
	const unsettled: Unsettled[] = [];
	const settleFalse: string[] = [];
	let settledCount = 0;
	let admittedTotal = 0;
	let okReservesAfterMigration = 0;
	/**
	 * Where the migration stands: open (every key still on the source), split (keys on both),
	 * drained (every key on the destination, slot still open), closing (SETSLOT NODE being sent).
	 */
	let phase: "before" | "open" | "split" | "drained" | "closing" | "after" = "before";
	/** "op@phase" -> [succeeded, threw], by the phase the call started in. */
	const outcomes = new Map<string, [number, number]>();
	const count = (op: OpError["op"], at: typeof phase, ok: boolean): void => {
		const key = `${op}@${at}`;
		const o = outcomes.get(key) ?? [0, 0];
		o[ok ? 0 : 1]++;
		outcomes.set(key, o);
	};
	const migration = { openedMs: Number.POSITIVE_INFINITY, closedMs: Number.POSITIVE_INFINITY };
	const failure = (
		op: OpError["op"],
		requestId: string,
		err: unknown,
		startedMs: number,
	): OpError => ({
		op,
		requestId,
		cls: errorClass(err),
		message: errorMessage(err),
		isError: err instanceof Error,
		startedMs,
		endedMs: elapsed(),
	});

	/** One loop: up to IN_FLIGHT open reservations, each settled when its (spread) hold is over. */
	const loop = async (i: number): Promise<void> => {
		let open: Held[] = [];
		const settle = async (r: Held): Promise<void> => {
			const startedMs = elapsed();
			const startedIn = phase;
			try {
				const settled = await s.settle({
					requestId: r.requestId,
					windows: windowsOf(r.user),
					reservationKey: `${PREFIX}:r:${r.requestId}`,
					reservedTokens: COST,
					actualTokens: ACTUAL,
					slotKey: SLOT_SET,
				});
				if (settled) settledCount++;
				else settleFalse.push(r.requestId);
				count("settle", startedIn, true);
			} catch (err) {
				errors.push(failure("settle", r.requestId, err, startedMs));
				count("settle", startedIn, false);
				unsettled.push({ requestId: r.requestId, user: r.user });
			}
		};
		for (let seq = 0; ; ) {
			const now = elapsed();
			const due = open.filter((r) => stopping || r.dueMs <= now);
			open = open.filter((r) => !due.includes(r));
			for (const r of due) await settle(r);
			if (stopping) {
				// Stopping may have been asked while the due ones settled: settle the rest too.
				for (const r of open) await settle(r);
				return;
			}
			if (open.length >= IN_FLIGHT) {
				await Bun.sleep(Math.max(1, Math.min(...open.map((r) => r.dueMs)) - elapsed()));
				continue;
			}
			const user = `l${i}u${seq % USERS_PER_LOOP}`;
			const requestId = `l${i}-${seq}`;
			const holdMs = HOLD_MIN_MS + ((seq * 7919 + i * 104_729) % HOLD_SPREAD_MS);
			seq++;
			const startedMs = elapsed();
			const startedIn = phase;
			let decision: StoreDecision;
			try {
				decision = await s.reserve({
					requestId,
					windows: windowsOf(user),
					costTokens: COST,
					reservationKey: `${PREFIX}:r:${requestId}`,
					slot: LEASE,
				});
			} catch (err) {
				errors.push(failure("reserve", requestId, err, startedMs));
				count("reserve", startedIn, false);
				continue;
			}
			count("reserve", startedIn, true);
			decisions.set(decision.kind, (decisions.get(decision.kind) ?? 0) + 1);
			if (decision.kind !== "admitted") continue;
			admittedTotal++;
			admittedByUser.set(user, (admittedByUser.get(user) ?? 0) + 1);
			if (startedMs > migration.closedMs) okReservesAfterMigration++;
			open.push({ requestId, user, dueMs: elapsed() + holdMs });
		}
	};
	const load = Promise.all(Array.from({ length: LOOPS }, (_, i) => loop(i)));

	// --- the migration, by hand -------------------------------------------------------------------
	// The nodes' TRYAGAIN counters, read over a connection of the test's own (a redis-cli per read
	// would stretch the migration past the store's retry budget).
	const counters = [src, dst].map((port) => new RedisClient(`redis://127.0.0.1:${port}`));
	const tryagains = async (): Promise<number> => {
		let n = 0;
		for (const client of counters) {
			n += errorStats(String(await client.send("INFO", ["errorstats"]))).get("TRYAGAIN") ?? 0;
		}
		return n;
	};
	/**
	 * Waits until the load has met the state the slot is in now: a call was answered TRYAGAIN
	 * after the state began. From the moment the slot opens every loop has a reserve retrying
	 * (its reservation key is new, so the slot's keys are never all in one place for it).
	 */
	const loadMeets = async (state: string): Promise<void> => {
		const since = await tryagains();
		await until(async () => (await tryagains()) > since, {
			what: `the load to meet the slot ${state}`,
			timeoutMs: 2_000,
			intervalMs: 2,
		});
	};
	let batches = 0;
	let movedKeys = 0;
	let keysBefore = 0;
	try {
		// Every user has keys in the slot, so it takes several MIGRATE batches to move.
		await until(() => admittedByUser.size === LOOPS * USERS_PER_LOOP, {
			what: "every user to be admitted once before the migration",
		});
		keysBefore = Number(await c.cli(src, "CLUSTER", "COUNTKEYSINSLOT", String(slot)));
		migration.openedMs = elapsed();
		expect(await c.cli(dst, "CLUSTER", "SETSLOT", String(slot), "IMPORTING", srcId)).toBe("OK");
		expect(await c.cli(src, "CLUSTER", "SETSLOT", String(slot), "MIGRATING", dstId)).toBe("OK");
		phase = "open";
		await loadMeets("open with every key still on the source");
		for (;;) {
			const keys = lines(await c.cli(src, "CLUSTER", "GETKEYSINSLOT", String(slot), String(BATCH)));
			if (keys.length === 0) break;
			phase = "split";
			const reply = await c.cli(
				src,
				"MIGRATE",
				"127.0.0.1",
				String(dst),
				"",
				"0",
				"5000",
				"KEYS",
				...keys,
			);
			// NOKEY: every key of the batch was deleted meanwhile (a settle). BUSYKEY would mean the
			// destination created a key of an open slot on its own: split state.
			if (reply !== "OK" && reply !== "NOKEY") throw new Error(`MIGRATE replied: ${reply}`);
			batches++;
			movedKeys += keys.length;
			await loadMeets("with its keys split between the nodes");
		}
		phase = "drained";
		await loadMeets("still open with every key on the destination");
		phase = "closing";
		for (const port of [dst, src, other]) {
			expect(await c.cli(port, "CLUSTER", "SETSLOT", String(slot), "NODE", dstId)).toBe("OK");
		}
		migration.closedMs = elapsed();
		phase = "after";
		await until(() => okReservesAfterMigration > LOOPS, {
			what: "the load to run on against the moved slot",
		});
	} finally {
		stopping = true;
		await load;
		for (const client of counters) client.close();
	}

	// --- what the servers saw ---------------------------------------------------------------------
	const serverErrors = new Map<string, number>();
	for (const port of ports) {
		for (const [name, n] of errorStats(await c.cli(port, "INFO", "errorstats"))) {
			serverErrors.set(name, (serverErrors.get(name) ?? 0) + n);
		}
	}
	const thrown = new Map<string, number>();
	for (const e of errors) {
		const key = `${e.op} ${e.cls}`;
		thrown.set(key, (thrown.get(key) ?? 0) + 1);
	}
	const report = {
		slot,
		src,
		dst,
		keysInSlotBefore: keysBefore,
		migrateBatches: batches,
		migratedKeys: movedKeys,
		migrationWindowMs: Math.round(migration.closedMs - migration.openedMs),
		runMs: Math.round(elapsed()),
		decisions: Object.fromEntries(decisions),
		settled: settledCount,
		thrown: Object.fromEntries(thrown),
		okAndThrownByPhase: Object.fromEntries(outcomes),
		tryagainReplies: serverErrors.get("TRYAGAIN") ?? 0,
		sampleMessages: [...new Set(errors.map((e) => `${e.op}: ${e.message}`))].slice(0, 6),
		serverErrorReplies: Object.fromEntries(serverErrors),
		unsettledAfterError: unsettled.length,
		okReservesAfterMigration,
	};
	console.log(`[cluster-migration] ${JSON.stringify(report)}`);

	// (1) The store retries TRYAGAIN for as long as the migration budget allows: nothing but a
	//     SlotMigratingError (the budget ran out) may come out, only from calls that overlapped the
	//     open slot, and the servers really did answer TRYAGAIN (the retries absorbed them).
	for (const e of errors) {
		expect(e.isError).toBe(true);
		expect(e.cls).toBe("SlotMigratingError");
		expect(e.endedMs).toBeGreaterThanOrEqual(migration.openedMs);
		expect(e.startedMs).toBeLessThanOrEqual(migration.closedMs);
	}
	expect(serverErrors.get("TRYAGAIN") ?? 0).toBeGreaterThan(0);
	// A migration of ~1.5 s fits the 2 s budget: every call got through.
	expect(errors).toEqual([]);

	// (2) Every decision the store did give was "admitted"; every first settle found its reservation.
	expect([...decisions.keys()]).toEqual(["admitted"]);
	expect(settleFalse).toEqual([]);
	expect(okReservesAfterMigration).toBeGreaterThan(LOOPS);

	// (3) The slot is the destination's, per every node; its keys live there and none on the source.
	for (const port of ports) expect(await ownerOf(c, port, slot)).toBe(dst);
	expect(Number(await c.cli(src, "CLUSTER", "COUNTKEYSINSLOT", String(slot)))).toBe(0);
	// One hash per user (its minute and day windows) and the model's.
	expect(
		Number(await c.cli(dst, "CLUSTER", "COUNTKEYSINSLOT", String(slot))),
	).toBeGreaterThanOrEqual(LOOPS * USERS_PER_LOOP + 1);

	// (4) + (5) No reservation and no lease is left over from a settled request. What is left is
	//     exactly the requests whose settle threw (the failure policy leaves those charged at their
	//     reservation; their lease lapses by its TTL) — nothing else, so nothing was half applied.
	const scanReservations = async (port: number): Promise<string[]> =>
		lines(await c.cli(port, "-c", "--scan", "--pattern", `${PREFIX}:r:*`)).sort();
	const leaseMembers = async (): Promise<string[]> =>
		lines(await c.cli(dst, "-c", "ZRANGE", SLOT_SET, "0", "-1")).sort();
	const leftIds = unsettled.map((u) => u.requestId);
	expect(await scanReservations(src)).toEqual([]);
	expect(await scanReservations(dst)).toEqual(leftIds.map((id) => `${PREFIX}:r:${id}`).sort());
	expect(await leaseMembers()).toEqual([...leftIds].sort());

	// Settling those now (as a caller that retries would) succeeds: they were never applied.
	for (const u of unsettled) {
		const settled = await s.settle({
			requestId: u.requestId,
			windows: windowsOf(u.user),
			reservationKey: `${PREFIX}:r:${u.requestId}`,
			reservedTokens: COST,
			actualTokens: ACTUAL,
			slotKey: SLOT_SET,
		});
		expect(settled).toBe(true);
	}
	expect(await scanReservations(dst)).toEqual([]);
	expect(await leaseMembers()).toEqual([]);

	// Exact accounting on the destination: every admitted request cost exactly ACTUAL tokens in
	// each of its windows, whichever node ran its reserve and its settle (no lost or doubled update).
	for (const [user, n] of admittedByUser) {
		const snap = await s.peek(windowsOf(user).slice(0, 2), SLOT_SET);
		expect(snap.windows.map((w) => w.usedTokens)).toEqual([n * ACTUAL, n * ACTUAL]);
		expect(snap.slotsInUse).toBe(0);
	}
	const model = await s.peek(windowsOf("nobody").slice(2), SLOT_SET);
	expect(model.windows.map((w) => w.usedTokens)).toEqual([admittedTotal * ACTUAL]);

	// (3, again) A new request on the moved slot works end to end.
	const fresh = windowsOf("fresh");
	const d = await s.reserve({
		requestId: "fresh",
		windows: fresh,
		costTokens: COST,
		reservationKey: `${PREFIX}:r:fresh`,
		slot: LEASE,
	});
	expect(d.kind).toBe("admitted");
	expect(d.windows.map((w) => w.usedTokens)).toEqual([COST, COST, admittedTotal * ACTUAL + COST]);
	expect(
		await s.settle({
			requestId: "fresh",
			windows: fresh,
			reservationKey: `${PREFIX}:r:fresh`,
			reservedTokens: COST,
			actualTokens: ACTUAL,
			slotKey: SLOT_SET,
		}),
	).toBe(true);
	expect(await scanReservations(dst)).toEqual([]);
	expect(await leaseMembers()).toEqual([]);
});
