import {
	type ModelConfig,
	type WindowLimit,
	type WindowName,
	windowLabel,
} from "../config/schema.ts";
import type { WindowStatus } from "./gcra.ts";
import {
	type AttemptResult,
	PRIORITY_RANK,
	type Priority,
	SlotQueue,
	type WaitOutcome,
} from "./queue.ts";
import type {
	LimitStore,
	QueueEntry,
	QueueReply,
	QueueTarget,
	ReserveRequest,
	ScopedWindow,
	SharedQueue,
	WindowKey,
} from "./store.ts";

export type Scope = "user" | "tenant" | "model";

/** Whose budgets a request spends: the user's, the tenant's (if any), and the model's. */
export interface Spender {
	readonly user: string;
	readonly tenant?: string | undefined;
	/** The user's own windows (an API key's limits, an override) instead of the model's. */
	readonly userWindows?: readonly WindowLimit[] | undefined;
	/** The tenant's own windows (an override) instead of the model's. */
	readonly tenantWindows?: readonly WindowLimit[] | undefined;
	/** The user's own concurrency limit (an override or an API key's), across replicas. */
	readonly userConcurrency?: number | undefined;
	/** The tenant's own concurrency limit (an override), across replicas. */
	readonly tenantConcurrency?: number | undefined;
}

/** The lease sets a request of `spender` takes a slot in besides the model's, with who they belong to. */
function scopedSlots(model: string, spender: Spender, leaseMs: number) {
	const out: { key: string; limit: number; leaseMs: number; who: string }[] = [];
	if (spender.userConcurrency !== undefined) {
		out.push({
			key: `trl:{${model}}:slots:u:${spender.user}`,
			limit: spender.userConcurrency,
			leaseMs,
			who: `user ${spender.user}`,
		});
	}
	if (spender.tenant !== undefined && spender.tenantConcurrency !== undefined) {
		out.push({
			key: `trl:{${model}}:slots:t:${spender.tenant}`,
			limit: spender.tenantConcurrency,
			leaseMs,
			who: `tenant ${spender.tenant}`,
		});
	}
	return out;
}

/** A window of one scope of one model, with what headers and errors need to name it. */
export interface LabeledWindow extends ScopedWindow {
	readonly scope: Scope;
	readonly name: WindowName;
	/** IETF RateLimit policy name, e.g. `tpm` or `model-tpm`. */
	readonly policy: string;
}

const SHORT: Record<WindowName, string> = { minute: "tpm", hour: "tph", day: "tpd" };
const WINDOW_WORDS: Record<WindowName, string> = {
	minute: "tokens per minute",
	hour: "tokens per hour",
	day: "tokens per day",
};

/**
 * Where one window lives: its owner's key (one per user, tenant or model, all
 * of its windows together) and the window's name there. All keys of a model
 * share the `{model}` hash tag so a Redis Cluster keeps them in one slot.
 */
export function windowKey(
	model: string,
	scope: Scope,
	name: WindowName | "rpm",
	owner = "",
): WindowKey {
	if (scope === "user") return { key: `trl:{${model}}:u:${owner}`, field: name };
	if (scope === "tenant") return { key: `trl:{${model}}:t:${owner}`, field: name };
	return { key: `trl:{${model}}:m`, field: name };
}

/** Key of a model's concurrency lease set. */
export function slotKey(model: string): string {
	return `trl:{${model}}:slots`;
}

/** Key of a model's shared queue (the hash of its waiting requests; queue.lua keeps the rest beside it). */
export function queueKey(model: string): string {
	return `trl:{${model}}:q:m`;
}

/**
 * This replica's side of one model's shared queue: the entries of its waiting
 * requests, and the grants the queue has made them and they have not claimed.
 */
/**
 * A request waiting here, and where it stands: joining (its join on its way),
 * waiting (in Redis), granted (a slot, not claimed yet) or claiming.
 */
interface GateEntry {
	readonly entry: QueueEntry;
	state: "joining" | "waiting" | "granted" | "claiming";
}

class SharedGate {
	private readonly entries = new Map<string, GateEntry>();
	/** The last call failed: this replica's own order applies until one succeeds. */
	private down = false;
	private rejoining = false;
	/** Requests waiting across every replica, as of the last reply. */
	waiting = 0;

	constructor(
		private readonly queue: SharedQueue,
		private readonly owner: string,
		public model: ModelConfig,
		private readonly agingMs: number,
	) {}

	get target(): QueueTarget {
		return {
			queueKey: queueKey(this.model.id),
			slotKey: slotKey(this.model.id),
			limit: this.model.maxConcurrentRequests ?? 0,
			agingMs: this.agingMs,
			maxWaitMs: this.model.queue.maxWaitMs,
		};
	}

	/** Whether the queue granted entry `id` a slot; undefined while the queue cannot be asked. */
	granted(id: string): boolean | undefined {
		return this.down ? undefined : this.entries.get(id)?.state === "granted";
	}

	/** Takes the grant of `id`, to claim it; false when it had none. */
	take(id: string): boolean {
		const e = this.entries.get(id);
		if (e?.state !== "granted") return false;
		e.state = "claiming";
		return true;
	}

	/** The claim of `id` is over: admitted, or refused (the slot went back). */
	claimed(id: string): void {
		const e = this.entries.get(id);
		if (e?.state === "claiming") e.state = "waiting";
	}

	/** Joins (or joins again, with its place lost) the queue; false when the queue is full. */
	async join(entry: QueueEntry): Promise<boolean> {
		const e: GateEntry = { entry, state: "joining" };
		this.entries.set(entry.id, e);
		try {
			const reply = await this.queue.join(this.target, this.owner, entry);
			if (e.state === "joining") e.state = "waiting";
			if (!reply.joined) this.entries.delete(entry.id);
			this.absorb(reply);
			return reply.joined;
		} catch (err) {
			// Kept: it joins on the first call that succeeds (the reply shows it missing).
			if (e.state === "joining") e.state = "waiting";
			this.down = true;
			throw err;
		}
	}

	async refresh(): Promise<void> {
		try {
			this.absorb(await this.queue.poll(this.target, this.owner));
		} catch {
			this.down = true;
		}
	}

	/** The request of `id` was admitted through its grant: nothing is left to do. */
	forget(id: string): void {
		this.entries.delete(id);
	}

	/** The request of `id` stopped waiting without claiming a grant: its entry (or slot) goes back. */
	leave(id: string, ownSlotKeys: readonly string[]): void {
		this.entries.delete(id);
		this.queue
			.leave(this.target, this.owner, id, ownSlotKeys)
			.then((reply) => this.absorb(reply))
			.catch(() => {
				// Redis away: the entry lapses with this replica's polls, a granted slot with its grace.
			});
	}

	private absorb(reply: QueueReply): void {
		this.down = false;
		this.waiting = reply.waiting;
		for (const id of reply.granted) {
			const e = this.entries.get(id);
			if (e !== undefined) e.state = "granted";
			// Its request stopped waiting meanwhile: the slot goes back.
			else this.leave(id, []);
		}
		// Fewer of this replica's entries wait in Redis than wait here (Redis lost
		// them: a restart, a failover): they join again.
		if (!this.rejoining && reply.mine < this.waitingHere().length) {
			this.rejoining = true;
			void this.rejoin().finally(() => {
				this.rejoining = false;
			});
		}
	}

	/** Entries that should be waiting in Redis. */
	private waitingHere(): QueueEntry[] {
		const out: QueueEntry[] = [];
		for (const e of this.entries.values()) if (e.state === "waiting") out.push(e.entry);
		return out;
	}

	private async rejoin(): Promise<void> {
		for (const entry of this.waitingHere()) {
			if (this.entries.get(entry.id)?.state !== "waiting") continue;
			try {
				await this.join({ ...entry, maxQueued: Number.MAX_SAFE_INTEGER });
			} catch {
				return;
			}
		}
	}
}

/**
 * This process's prefix for admission ids: random, so that replicas never
 * share one.
 */
const ADMISSION_PREFIX = `${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}-`;
let admissions = 0;

/**
 * A new id for one admission, unique across replicas: the key of its
 * reservation and its member in lease sets. Not the caller's `x-request-id`:
 * two requests sent with the same id must never share a reservation or a slot.
 */
export function admissionId(): string {
	admissions++;
	return `${ADMISSION_PREFIX}${admissions.toString(36)}`;
}

/** Key marking one open reservation until it is settled. */
export function reservationKey(model: string, requestId: string): string {
	return `trl:{${model}}:r:${requestId}`;
}

/** Every window a request of `spender` to `model` is charged to, all in one reservation. */
export function windowsFor(model: ModelConfig, spender: Spender): LabeledWindow[] {
	const label = (scope: Scope, w: WindowLimit, owner?: string): LabeledWindow => {
		const short = w.perRequest === true ? "rpm" : SHORT[w.name];
		return {
			...windowKey(model.id, scope, w.perRequest === true ? "rpm" : w.name, owner),
			scope,
			name: w.name,
			policy: scope === "user" ? short : `${scope}-${short}`,
			windowUs: w.windowUs,
			limitTokens: w.limitTokens,
			burstTokens: w.burstTokens,
			...(w.perRequest === true ? { perRequest: true } : {}),
		};
	};
	const tenant = spender.tenant;
	return [
		...(spender.userWindows ?? model.userWindows).map((w) => label("user", w, spender.user)),
		...(tenant === undefined
			? []
			: (spender.tenantWindows ?? model.tenantWindows).map((w) => label("tenant", w, tenant))),
		...model.modelWindows.map((w) => label("model", w)),
	];
}

const seconds = (us: number) => Math.ceil(us / 1_000_000);

/**
 * The refusal by window `w` (standing `st`): rate_limit_exceeded with when a
 * retry may pass, or tokens_exceed_limit when it never can (`retryAfterUs`
 * undefined).
 */
function windowRefusal(
	model: ModelConfig,
	spender: Spender,
	w: LabeledWindow,
	st: WindowStatus,
	costTokens: number,
	retryAfterUs: number | undefined,
	headers: Record<string, string>,
): Refusal {
	const never = retryAfterUs === undefined;
	return {
		reason: never ? "tokens_exceed_limit" : "rate_limit_exceeded",
		model: model.id,
		scope: w.scope,
		window: windowLabel(w),
		who: whoOf(w.scope, spender),
		what: w.perRequest === true && !never ? "requests per minute" : WINDOW_WORDS[w.name],
		unit: w.perRequest === true ? "requests" : "tokens",
		limit: w.limitTokens,
		capacity: st.burstTokens,
		remaining: st.remainingTokens,
		requested: w.perRequest === true && !never ? 1 : costTokens,
		retryAfterUs,
		headers,
	};
}

/** Whose budget a window of `scope` is, in words. */
function whoOf(scope: Scope, spender: Spender): string {
	return scope === "user"
		? `user ${spender.user}`
		: scope === "tenant"
			? `tenant ${spender.tenant ?? ""}`
			: "all users of the model";
}

/** Reports the tightest remaining fraction per scope of one decision. */
function reportPressure(
	model: string,
	windows: readonly LabeledWindow[],
	statuses: readonly WindowStatus[],
	report: (model: string, scope: Scope, remaining: number) => void,
): void {
	let user = 2;
	let tenant = 2;
	let whole = 2;
	for (let i = 0; i < windows.length; i++) {
		const w = windows[i];
		const st = statuses[i];
		if (w === undefined || st === undefined || w.limitTokens <= 0) continue;
		const left = Math.max(0, Math.min(1, st.remainingTokens / w.limitTokens));
		if (w.scope === "user") user = Math.min(user, left);
		else if (w.scope === "tenant") tenant = Math.min(tenant, left);
		else whole = Math.min(whole, left);
	}
	if (user <= 1) report(model, "user", user);
	if (tenant <= 1) report(model, "tenant", tenant);
	if (whole <= 1) report(model, "model", whole);
}

/** OpenAI's duration style for x-ratelimit-reset-*: `20ms`, `6s`, `6m0s`, `1h2m3s`. */
export function openaiDuration(us: number): string {
	if (us <= 0) return "0s";
	if (us < 1_000_000) return `${Math.ceil(us / 1000)}ms`;
	let s = seconds(us);
	const h = Math.floor(s / 3600);
	s -= h * 3600;
	const m = Math.floor(s / 60);
	s -= m * 60;
	if (h > 0) return `${h}h${m}m${s}s`;
	if (m > 0) return `${m}m${s}s`;
	return `${s}s`;
}

/** The IETF `RateLimit-Policy` header of a set of windows: their quotas (the same for every request). */
export function rateLimitPolicy(windows: readonly LabeledWindow[]): string {
	return windows.map((w) => `"${w.policy}";q=${w.limitTokens};w=${seconds(w.windowUs)}`).join(", ");
}

/**
 * Rate-limit headers for a set of window statuses: OpenAI's `x-ratelimit-*-tokens`
 * for the tightest window, and the IETF `RateLimit-Policy` / `RateLimit` pair for
 * every window. `policy` is `rateLimitPolicy(windows)`, when the caller keeps it.
 */
export function rateLimitHeaders(
	windows: readonly LabeledWindow[],
	statuses: readonly WindowStatus[],
	policy: string = rateLimitPolicy(windows),
): Record<string, string> {
	if (windows.length === 0) return {};
	const headers: Record<string, string> = {};
	let current = "";
	let tokens: WindowStatus | undefined;
	let requests: WindowStatus | undefined;
	for (let i = 0; i < windows.length; i++) {
		const w = windows[i] as LabeledWindow;
		const st = statuses[i] as WindowStatus;
		current += `${i === 0 ? "" : ", "}"${w.policy}";r=${st.remainingTokens};t=${seconds(st.resetUs)}`;
		// OpenAI's headers name the tightest window of each kind.
		if (w.perRequest === true) {
			if (requests === undefined || st.remainingTokens < requests.remainingTokens) requests = st;
		} else if (tokens === undefined || st.remainingTokens < tokens.remainingTokens) {
			tokens = st;
		}
	}
	if (tokens !== undefined) {
		headers["x-ratelimit-limit-tokens"] = String(tokens.limitTokens);
		headers["x-ratelimit-remaining-tokens"] = String(tokens.remainingTokens);
		headers["x-ratelimit-reset-tokens"] = openaiDuration(tokens.resetUs);
	}
	if (requests !== undefined) {
		headers["x-ratelimit-limit-requests"] = String(requests.limitTokens);
		headers["x-ratelimit-remaining-requests"] = String(requests.remainingTokens);
		headers["x-ratelimit-reset-requests"] = openaiDuration(requests.resetUs);
	}
	headers["ratelimit-policy"] = policy;
	headers.ratelimit = current;
	return headers;
}

/** An admitted request: holds its reservation and slot until `finish`. */
export class Ticket {
	private finished = false;
	/** The lease sets this request holds a slot in; renewed by the limiter while it runs. */
	readonly leaseKeys: readonly string[];

	constructor(
		private readonly limiter: TokenLimiter,
		readonly requestId: string,
		readonly model: ModelConfig,
		readonly windows: readonly LabeledWindow[],
		readonly reservedTokens: number,
		readonly slotHeld: boolean,
		readonly headers: Record<string, string>,
		/** Further lease sets (a user's or tenant's own concurrency) the request holds a slot in. */
		readonly extraSlotKeys: readonly string[] = [],
	) {
		this.leaseKeys =
			extraSlotKeys.length === 0
				? slotHeld
					? [slotKey(model.id)]
					: []
				: [...(slotHeld ? [slotKey(model.id)] : []), ...extraSlotKeys];
		if (this.leaseKeys.length > 0) limiter.hold(this);
	}

	/**
	 * Settles actual usage (refund or extra charge) and releases the slot.
	 * Only the first call counts; later calls return false.
	 */
	async finish(actualTokens: number): Promise<boolean> {
		if (this.finished) return false;
		this.finished = true;
		if (this.leaseKeys.length > 0) this.limiter.letGo(this);
		const began = performance.now();
		try {
			await this.limiter.store.settle({
				requestId: this.requestId,
				windows: this.windows,
				reservationKey: reservationKey(this.model.id, this.requestId),
				reservedTokens: this.reservedTokens,
				actualTokens,
				...(this.slotHeld ? { slotKey: slotKey(this.model.id) } : {}),
				...(this.extraSlotKeys.length > 0 ? { extraSlotKeys: this.extraSlotKeys } : {}),
			});
		} finally {
			// A slot is free (or a user's own, or lapsing if the settlement failed): whoever waits is next.
			if (this.leaseKeys.length > 0) this.limiter.freed(this.model.id);
		}
		this.limiter.onStoreCall?.("settle", (performance.now() - began) / 1000);
		return true;
	}

	get isFinished(): boolean {
		return this.finished;
	}
}

export interface Rejection {
	readonly scope: Scope | "concurrency";
	/** minute | hour | day (tokens), rpm (requests per minute), concurrent. */
	readonly window: WindowName | "rpm" | "concurrent";
	readonly reason: "rate_limit_exceeded" | "tokens_exceed_limit" | "concurrency_limit_exceeded";
	/** Refused after waiting in the model's queue (`timeout`), or because the queue was full. */
	readonly queue?: "timeout" | "full";
}

/** A refused request, as data: what refused it and the figures a message names. */
export interface Refusal extends Rejection {
	readonly model: string;
	/** Whose budget refused it (`user u1`, `tenant t`, `all users of the model`); a slot set's owner, if not the model's. */
	readonly who: string | undefined;
	/** The refusing window in words (`tokens per minute`), for windows. */
	readonly what?: string;
	readonly unit?: "tokens" | "requests";
	readonly limit: number;
	/** The window's whole capacity (burst), for windows. */
	readonly capacity?: number;
	readonly remaining: number;
	/** What the request asked of that window: its tokens, or 1 request. */
	readonly requested: number;
	/** When retrying may pass; undefined when it never can. */
	readonly retryAfterUs: number | undefined;
	/** The rate-limit headers of the decision. */
	readonly headers: Record<string, string>;
}

/** The limiter's decision on one request; `queuedMs` is how long it waited for a slot, if it did. */
export type Decision =
	| { readonly admitted: true; readonly ticket: Ticket; readonly queuedMs?: number }
	| { readonly admitted: false; readonly refusal: Refusal; readonly queuedMs?: number };

/** A decision, or a wait for a slot that ended without one: the client left, or the replica is shutting down. */
export type Admission =
	| Decision
	| {
			readonly admitted: false;
			readonly refusal?: undefined;
			readonly cancelled: "disconnected" | "shutdown";
			readonly queuedMs: number;
	  };

/** How a request may wait for a slot. */
export interface WaitOptions {
	/** Aborts the wait (the client went away). */
	readonly signal?: AbortSignal;
	readonly priority?: Priority;
}

/** The largest cost sent to a store: far above any window's capacity, and exact in Lua. */
const MAX_COST_TOKENS = 2 ** 50;

export interface LimiterOptions {
	/** Concurrency leases lapse this long after the last renewal (a dead replica's slots return). */
	readonly leaseMs?: number;
	readonly onReject?: (model: string, r: Rejection, user: string) => void;
	/**
	 * After each admission decision: the remaining fraction (0-1) of the tightest
	 * window of each scope the request was charged to.
	 */
	readonly onPressure?: (model: string, scope: Scope, remaining: number) => void;
	/** How long each store call took (reserve, settle), in seconds. */
	readonly onStoreCall?: (operation: "reserve" | "settle", seconds: number) => void;
	/** A model's queue depth changed. */
	readonly onQueueDepth?: (model: string, depth: number) => void;
	/** A wait for a slot ended. */
	readonly onQueueWait?: (model: string, outcome: WaitOutcome, seconds: number) => void;
	/** A waiting request rises one priority class per this many ms (default 10 s). */
	readonly queueAgingMs?: number;
	/**
	 * While requests wait, how often admission is retried for slots freed by
	 * other replicas (default 25 ms with a shared store, never with the memory store).
	 */
	readonly queuePollMs?: number;
}

/** Admission control: one atomic store call takes a concurrency slot and reserves every window. */
export class TokenLimiter {
	readonly leaseMs: number;
	private readonly onReject: (model: string, r: Rejection, user: string) => void;
	private readonly onPressure: LimiterOptions["onPressure"];
	readonly onStoreCall: LimiterOptions["onStoreCall"];
	private readonly options: LimiterOptions;
	/** Each model's queue of requests waiting for a slot. */
	private readonly queues = new Map<string, SlotQueue<Decision>>();
	/** With a shared store: each model's side of its shared queue, by model. */
	private readonly gates = new Map<string, SharedGate>();
	/** This replica in the shared queues (a limiter's own: tests run several in one process). */
	private readonly owner = crypto.randomUUID();

	/** Requests holding concurrency leases, renewed together by one timer. */
	private readonly held = new Set<Ticket>();
	private renewer: ReturnType<typeof setInterval> | undefined;

	constructor(
		readonly store: LimitStore,
		options: LimiterOptions = {},
	) {
		this.leaseMs = options.leaseMs ?? 30_000;
		this.onReject = options.onReject ?? (() => {});
		this.onPressure = options.onPressure;
		this.onStoreCall = options.onStoreCall;
		this.options = options;
	}

	/** The model's queue, made on first use and kept in step with its settings; undefined when it has none. */
	queueOf(model: ModelConfig): SlotQueue<Decision> | undefined {
		const { maxWaitMs, maxQueued } = model.queue;
		const id = model.id;
		const current = this.queues.get(id);
		if (
			current !== undefined &&
			current.settings.maxWaitMs === maxWaitMs &&
			current.settings.maxQueued === maxQueued
		) {
			const gate = this.gates.get(id);
			if (gate !== undefined) gate.model = model;
			return current;
		}
		// Settings changed by a reload: requests already waiting keep waiting where they are.
		if (current !== undefined) {
			this.queues.delete(id);
			this.retired.set(current, id);
		}
		if (maxWaitMs <= 0 || maxQueued <= 0) return undefined;
		const gate = this.gateOf(model);
		const queue = new SlotQueue<Decision>({
			maxWaitMs,
			maxQueued,
			agingMs: this.options.queueAgingMs ?? 10_000,
			pollMs: this.options.queuePollMs ?? (this.store.kind === "memory" ? 0 : 25),
			onDepth: () => this.options.onQueueDepth?.(id, this.queueDepth(id)),
			onWaited: (outcome, ms) => this.options.onQueueWait?.(id, outcome, ms / 1000),
			...(gate === undefined
				? {}
				: {
						granted: (entry: string) => gate.granted(entry),
						refresh: () => gate.refresh(),
					}),
		});
		this.queues.set(id, queue);
		return queue;
	}

	/**
	 * The model's side of its shared queue: with a shared store, for a model
	 * with a concurrency limit and queueing on; undefined otherwise.
	 */
	private gateOf(model: ModelConfig): SharedGate | undefined {
		const shared = this.store.queue;
		if (shared === undefined || !this.sharesQueue(model)) return undefined;
		let gate = this.gates.get(model.id);
		if (gate === undefined) {
			gate = new SharedGate(shared, this.owner, model, this.options.queueAgingMs ?? 10_000);
			this.gates.set(model.id, gate);
		} else gate.model = model;
		return gate;
	}

	/**
	 * Requests waiting for a slot of `model`: across every replica when the
	 * queue is shared (read from the store; this replica's count while it cannot
	 * be read), else on this replica.
	 */
	async waitingEverywhere(model: ModelConfig): Promise<number> {
		const here = this.queueDepth(model.id);
		const shared = this.store.queue;
		if (shared === undefined || this.gateOf(model) === undefined) return here;
		try {
			return Math.max(here, await shared.depth(queueKey(model.id)));
		} catch {
			return here;
		}
	}

	/** Queues replaced by a reload, by model, until their last request has stopped waiting. */
	private readonly retired = new Map<SlotQueue<Decision>, string>();

	/** A slot of `model` (or a caller's own) was released here: offer it to whoever waits. */
	freed(model: string): void {
		for (const [q, id] of this.retired) {
			if (q.depth === 0) this.retired.delete(q);
			else if (id === model) q.pump();
		}
		this.queues.get(model)?.pump();
	}

	/** Requests waiting for a slot of `model` on this replica. */
	queueDepth(model: string): number {
		let depth = this.queues.get(model)?.depth ?? 0;
		for (const [q, id] of this.retired) if (id === model) depth += q.depth;
		return depth;
	}

	/** Ends every wait with `shutdown`: the replica is stopping. */
	closeQueues(): void {
		for (const q of this.queues.values()) q.close();
		for (const q of this.retired.keys()) q.close();
		this.retired.clear();
	}

	/**
	 * Keeps a running request's leases alive: every lease is renewed at least
	 * every third of its TTL, so it lapses only when this process stops.
	 */
	hold(ticket: Ticket): void {
		this.held.add(ticket);
		if (this.renewer !== undefined) return;
		this.renewer = setInterval(
			() => {
				for (const t of this.held) {
					for (const key of t.leaseKeys) {
						this.store.renewSlot(key, t.requestId, this.leaseMs).catch(() => {});
					}
				}
			},
			Math.max(100, Math.floor(this.leaseMs / 3)),
		);
		this.renewer.unref();
	}

	/** The request ended: its leases are released by the settlement. */
	letGo(ticket: Ticket): void {
		this.held.delete(ticket);
	}

	/**
	 * Decides one request: admitted (holding its reservation and slots until the
	 * ticket is finished) or refused, as data; the HTTP side words the refusal.
	 * A request that finds every slot taken waits for one in the model's queue
	 * (when it has one), unless its windows would refuse it anyway; while others
	 * wait, a new request joins them rather than taking a slot ahead of them.
	 */
	async admit(
		model: ModelConfig,
		spender: Spender,
		costTokens: number,
		wait: WaitOptions = {},
	): Promise<Admission> {
		const queue = this.queueOf(model);
		if (queue === undefined || queue.depth === 0) {
			const first = await this.decide(model, spender, costTokens);
			if (first.admitted || first.refusal.reason !== "concurrency_limit_exceeded") {
				if (!first.admitted) this.onReject(model.id, first.refusal, spender.user);
				return first;
			}
			if (queue === undefined) {
				this.onReject(model.id, first.refusal, spender.user);
				return first;
			}
		}
		return this.queued(model, spender, costTokens, queue, wait);
	}

	private async queued(
		model: ModelConfig,
		spender: Spender,
		costTokens: number,
		queue: SlotQueue<Decision>,
		wait: WaitOptions,
	): Promise<Admission> {
		const refuse = (refusal: Refusal, queuedMs?: number): Admission => {
			this.onReject(model.id, refusal, spender.user);
			return queuedMs === undefined
				? { admitted: false, refusal }
				: { admitted: false, refusal, queuedMs };
		};
		const limit = model.maxConcurrentRequests ?? 0;
		const busy = (queueState: "timeout" | "full", waited?: number): Refusal => {
			const retryMs = queue.retryAfterMs();
			return {
				reason: "concurrency_limit_exceeded",
				model: model.id,
				scope: "concurrency",
				window: "concurrent",
				who: undefined,
				limit,
				remaining: 0,
				requested: 1,
				retryAfterUs: retryMs * 1000,
				headers: {
					...(waited === undefined ? {} : { "x-queue-wait-ms": String(Math.round(waited)) }),
				},
				queue: queueState,
			};
		};
		if (!queue.accepting) {
			if (queue.isClosed) return { admitted: false, cancelled: "shutdown", queuedMs: 0 };
			// Full: those waiting may be held by their own limits while a model slot is free.
			const direct = await this.decide(model, spender, costTokens);
			if (direct.admitted) return direct;
			if (direct.refusal.reason !== "concurrency_limit_exceeded") return refuse(direct.refusal);
			return refuse(busy("full"));
		}
		// A request its windows would refuse anyway is refused now, not after waiting.
		const windowsSay = await this.windowsRefusal(model, spender, costTokens);
		if (windowsSay !== undefined) return refuse(windowsSay);
		// A reload may have replaced (or removed) the model's queue meanwhile.
		const joining = this.queueOf(model);
		if (joining === undefined) {
			const direct = await this.decide(model, spender, costTokens);
			return direct.admitted ? direct : refuse(direct.refusal);
		}
		const priority = wait.priority ?? "normal";
		// With a shared store the request waits in the model's one queue across replicas.
		const gate = this.gates.get(model.id);
		const { extras, extraKeys } = this.layout(model, spender);
		const entry: QueueEntry | undefined =
			gate === undefined
				? undefined
				: {
						id: admissionId(),
						user: spender.user,
						tenant: spender.tenant ?? "",
						rank: PRIORITY_RANK[priority],
						ownSlots: extras.map((x) => ({ key: x.key, limit: x.limit })),
						maxQueued: model.queue.maxQueued,
					};
		if (gate !== undefined && entry !== undefined) {
			try {
				if (!(await gate.join(entry))) return refuse(busy("full"));
			} catch {
				// Redis away: the request waits here, and the failure policy decides its attempts;
				// it joins the shared queue once Redis answers again.
			}
		}
		let claimed = false;
		const result = await joining.wait(
			{ user: spender.user, tenant: spender.tenant, priority },
			async (): Promise<AttemptResult<Decision>> => {
				if (gate !== undefined && entry !== undefined && gate.take(entry.id)) {
					const c = await this.decide(model, spender, costTokens, entry.id).finally(() =>
						gate.claimed(entry.id),
					);
					if (c.admitted) {
						claimed = true;
						return { kind: "done", value: c, admitted: true };
					}
					if (c.refusal.reason !== "concurrency_limit_exceeded") {
						// Its windows refused it: the slot it was granted is free again.
						joining.pump();
						return { kind: "done", value: c, admitted: false };
					}
					// The grant lapsed before it was claimed and the slot went to another: wait again
					// (if Redis does not answer now, it joins once it does).
					await gate.join({ ...entry, maxQueued: Number.MAX_SAFE_INTEGER }).catch(() => false);
					return { kind: "own-full" };
				}
				const a = await this.decide(model, spender, costTokens);
				if (a.admitted) return { kind: "done", value: a, admitted: true };
				if (a.refusal.reason === "concurrency_limit_exceeded") {
					return a.refusal.who === undefined ? { kind: "full" } : { kind: "own-full" };
				}
				return { kind: "done", value: a, admitted: false };
			},
			(won) => {
				// The wait ended while this admission was on its way: nothing is kept.
				if (won.admitted) won.ticket.finish(0).catch(() => {});
			},
			wait.signal,
			entry?.id,
		);
		if (gate !== undefined && entry !== undefined) {
			// Not admitted through its grant: its entry, or a slot granted to it, goes back.
			if (claimed) gate.forget(entry.id);
			else gate.leave(entry.id, extraKeys);
		}
		const waited = result.waitedMs;
		if (result.kind === "done") {
			const a = result.value;
			if (a.admitted) return { admitted: true, ticket: a.ticket, queuedMs: waited };
			return refuse(a.refusal, waited);
		}
		if (result.kind === "timeout") return refuse(busy("timeout", waited), waited);
		if (result.kind === "full") return refuse(busy("full"));
		return { admitted: false, cancelled: result.kind, queuedMs: waited };
	}

	/**
	 * A refusal by the first window that cannot take `costTokens` now (looked
	 * at, nothing spent), or undefined when every window can.
	 */
	private async windowsRefusal(
		model: ModelConfig,
		spender: Spender,
		costTokens: number,
	): Promise<Refusal | undefined> {
		const { windows, policy } = this.layout(model, spender);
		if (windows.length === 0) return undefined;
		const { windows: statuses } = await this.store.peek(windows, slotKey(model.id));
		for (let i = 0; i < windows.length; i++) {
			const w = windows[i] as LabeledWindow;
			const st = statuses[i];
			if (st === undefined) continue;
			const cost = w.perRequest === true ? 1 : Math.min(costTokens, MAX_COST_TOKENS);
			if (cost <= st.remainingTokens) continue;
			const short = cost - st.remainingTokens;
			const retryAfterUs =
				cost > st.burstTokens
					? undefined
					: Math.max(1, Math.ceil((short * w.windowUs) / Math.max(1, w.limitTokens)));
			return windowRefusal(
				model,
				spender,
				w,
				st,
				costTokens,
				retryAfterUs,
				rateLimitHeaders(windows, statuses, policy),
			);
		}
		return undefined;
	}

	/** One decision by the store, as data (nothing reported). */
	private async decide(
		model: ModelConfig,
		spender: Spender,
		costTokens: number,
		claim?: string,
	): Promise<Decision> {
		const requestId = claim ?? admissionId();
		const layout = this.layout(model, spender);
		const { windows, extras } = layout;
		const limit = model.maxConcurrentRequests;
		const cost = Math.min(costTokens, MAX_COST_TOKENS);
		const began = performance.now();
		const decision = await this.store.reserve({
			requestId,
			windows,
			costTokens: cost,
			reservationKey: reservationKey(model.id, requestId),
			...layout.leases,
			...(claim === undefined ? {} : { claim: true }),
		});
		this.onStoreCall?.("reserve", (performance.now() - began) / 1000);
		if (this.onPressure !== undefined)
			reportPressure(model.id, windows, decision.windows, this.onPressure);
		const headers = rateLimitHeaders(windows, decision.windows, layout.policy);
		if (decision.kind === "admitted") {
			return {
				admitted: true,
				ticket: new Ticket(
					this,
					requestId,
					model,
					windows,
					cost,
					limit !== undefined,
					headers,
					layout.extraKeys,
				),
			};
		}
		let refusal: Refusal;
		if (decision.kind === "busy") {
			const extra = decision.slotIndex === undefined ? undefined : extras[decision.slotIndex - 1];
			refusal = {
				reason: "concurrency_limit_exceeded",
				model: model.id,
				scope: "concurrency",
				window: "concurrent",
				who: extra?.who,
				limit: extra?.limit ?? limit ?? 0,
				remaining: 0,
				requested: 1,
				retryAfterUs: 1_000_000,
				headers,
			};
		} else {
			refusal = windowRefusal(
				model,
				spender,
				windows[decision.blockingIndex] as LabeledWindow,
				decision.windows[decision.blockingIndex] as WindowStatus,
				costTokens,
				decision.kind === "never" ? undefined : decision.retryAfterUs,
				headers,
			);
		}
		return { admitted: false, refusal };
	}

	/** Each spender's windows and lease sets, built once (the policy keeps one spender per user). */
	private readonly layouts = new WeakMap<
		Spender,
		{
			model: ModelConfig;
			windows: LabeledWindow[];
			extras: ReturnType<typeof scopedSlots>;
			extraKeys: string[];
			policy: string;
			/** The reserve request's lease sets and the queue's gate, the same for every request. */
			leases: Pick<ReserveRequest, "slot" | "extraSlots" | "queueKey">;
		}
	>();

	private layout(model: ModelConfig, spender: Spender) {
		let layout = this.layouts.get(spender);
		if (layout === undefined || layout.model !== model) {
			const extras = scopedSlots(model.id, spender, this.leaseMs);
			const windows = windowsFor(model, spender);
			const limit = model.maxConcurrentRequests;
			layout = {
				model,
				windows,
				policy: rateLimitPolicy(windows),
				extras,
				extraKeys: extras.map((x) => x.key),
				leases: {
					...(limit === undefined
						? {}
						: { slot: { key: slotKey(model.id), limit, leaseMs: this.leaseMs } }),
					...(extras.length === 0 ? {} : { extraSlots: extras }),
					...(this.sharesQueue(model) ? { queueKey: queueKey(model.id) } : {}),
				},
			};
			this.layouts.set(spender, layout);
		}
		return layout;
	}

	/** Whether `model` waits in a queue shared through the store (a concurrency limit, queueing on). */
	private sharesQueue(model: ModelConfig): boolean {
		return (
			this.store.queue !== undefined &&
			model.maxConcurrentRequests !== undefined &&
			model.queue.maxWaitMs > 0 &&
			model.queue.maxQueued > 0
		);
	}

	/** Standing of a user's windows and the model's slots, without spending. */
	async usage(model: ModelConfig, spender: Spender) {
		const windows = windowsFor(model, spender);
		const snapshot = await this.store.peek(windows, slotKey(model.id));
		return {
			windows: windows.map((w, i) => ({ window: w, status: snapshot.windows[i] as WindowStatus })),
			slotsInUse: snapshot.slotsInUse,
		};
	}

	/** Concurrency slots of a model in use across every replica sharing the store. */
	async slotsInUse(model: ModelConfig): Promise<number> {
		return (await this.store.peek([], slotKey(model.id))).slotsInUse;
	}
}
