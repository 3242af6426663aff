/**
 * Waiting for a concurrency slot, fairly. A request that finds every slot of
 * its model taken joins the model's queue; each time a slot may have freed, the
 * queue offers it to the next request in a fair order, which tries to be
 * admitted (slot and token windows, all or nothing, like every request).
 *
 * The order: the highest priority first (high, normal, low), a request rising
 * one class for every `agingMs` it has waited, so low never starves; within a
 * class, round-robin between tenants, then between users of the tenant (the one
 * served longest ago goes first), then first come first served within a user.
 * A user whose own concurrency limit is full is passed over until one of their
 * own requests ends; others go on.
 *
 * The queue is independent of the store: it retries admission, and the store
 * decides. Slots freed by this process wake it at once; with a shared store,
 * slots freed by other replicas are found by retrying every `pollMs` while
 * anyone waits.
 *
 * With a shared queue (Redis), the order is kept there, for every replica:
 * each round first asks it (`refresh`), and the waiters it granted a slot
 * (`granted`) go first; the others wait for their grant. While it cannot be
 * asked, this replica's own order applies.
 */

export type Priority = "high" | "normal" | "low";

export const PRIORITIES: readonly Priority[] = ["high", "normal", "low"];

export const PRIORITY_RANK: Record<Priority, number> = { high: 0, normal: 1, low: 2 };

/** How one wait ended, for metrics: the `outcome` label of the queue's histogram. */
export type WaitOutcome =
	| "admitted"
	| "refused"
	| "timeout"
	| "disconnected"
	| "shutdown"
	| "error";

/** One admission attempt, as the queue sees it. */
export type AttemptResult<A> =
	/** Admitted (or refused by a window): the wait is over with this answer. */
	| { readonly kind: "done"; readonly value: A; readonly admitted: boolean }
	/** Every model slot is taken: wait for the next one. */
	| { readonly kind: "full" }
	/** The caller's own (or tenant's own) concurrency is full: wait, letting others by. */
	| { readonly kind: "own-full" };

export type WaitResult<A> =
	| { readonly kind: "done"; readonly value: A; readonly waitedMs: number }
	| {
			/** `full`: max-queued-requests were already waiting (nothing waited). */
			readonly kind: "timeout" | "disconnected" | "shutdown" | "full";
			readonly waitedMs: number;
	  };

export interface QueueOptions {
	readonly maxWaitMs: number;
	readonly maxQueued: number;
	/** A waiting request rises one priority class per this many ms. */
	readonly agingMs: number;
	/** While anyone waits, how often admission is retried for slots freed elsewhere (0: never). */
	readonly pollMs: number;
	/** Called with the queue's depth whenever it changes. */
	readonly onDepth?: (depth: number) => void;
	/** Called when a wait ends, with how long it took. */
	readonly onWaited?: (outcome: WaitOutcome, waitedMs: number) => void;
	/** Milliseconds clock for aging (default performance.now). */
	readonly now?: () => number;
	/**
	 * With a shared queue: whether it granted the entry a slot (true), not yet
	 * (false: the waiter is passed over), or cannot tell (undefined: this
	 * replica's order applies).
	 */
	readonly granted?: (id: string) => boolean | undefined;
	/** Called at the start of each round, to learn the shared queue's grants. */
	readonly refresh?: () => Promise<void>;
}

interface Waiter<A> {
	readonly seq: number;
	/** The waiter's entry in the shared queue, if it joined one. */
	readonly id: string | undefined;
	readonly user: string;
	readonly tenant: string;
	readonly rank: number;
	readonly since: number;
	readonly attempt: () => Promise<AttemptResult<A>>;
	/** Set once the wait has ended (answered, timed out, left, shut down). */
	ended: boolean;
	attempting: boolean;
	/** An ending that arrived while an attempt was on its way. */
	pending: "timeout" | "disconnected" | "shutdown" | undefined;
	finish(result: WaitResult<A>, admitted?: boolean): void;
	fail(err: unknown): void;
	/** Gives back what an attempt got after the wait had ended (its slot, its reservation). */
	release: (value: A) => void;
	timer: ReturnType<typeof setTimeout> | undefined;
	unlisten: (() => void) | undefined;
}

/** One model's queue on this replica. */
export class SlotQueue<A> {
	/** Waiting requests per user (tenant and user), oldest first. */
	private readonly byUser = new Map<string, Waiter<A>[]>();
	/**
	 * When each waiting user and tenant was last served (a sequence number). One
	 * that joins anew counts as served now, so coming back does not put it ahead
	 * of those already waiting.
	 */
	private readonly servedAt = new Map<string, number>();
	/** Requests waiting per tenant, to forget a tenant's turn once none waits. */
	private readonly perTenant = new Map<string, number>();
	private served = 0;
	private seq = 0;
	private count = 0;
	private pumping = false;
	private again = false;
	private closed = false;
	private poller: ReturnType<typeof setInterval> | undefined;
	/** Milliseconds between slots freeing, smoothed: what Retry-After is made of. */
	private turnoverMs = 1000;
	private lastGrant = 0;

	private readonly now: () => number;

	constructor(private readonly options: QueueOptions) {
		this.now = options.now ?? (() => performance.now());
	}

	/** Whether the replica has shut the queue (it is shutting down). */
	get isClosed(): boolean {
		return this.closed;
	}

	/** Requests waiting now. */
	get depth(): number {
		return this.count;
	}

	get settings(): { maxWaitMs: number; maxQueued: number } {
		return { maxWaitMs: this.options.maxWaitMs, maxQueued: this.options.maxQueued };
	}

	/** Whether a new request can wait here at all (queueing on, not full, not shut). */
	get accepting(): boolean {
		return (
			!this.closed &&
			this.options.maxWaitMs > 0 &&
			this.options.maxQueued > 0 &&
			this.count < this.options.maxQueued
		);
	}

	/** Seconds a refused or timed-out request should wait before retrying, from the observed turnover. */
	retryAfterMs(): number {
		const ahead = this.count + 1;
		return Math.min(60_000, Math.max(1000, Math.ceil(this.turnoverMs * ahead)));
	}

	/**
	 * Waits for a turn: `attempt` is called each time this request is offered a
	 * slot; the wait ends with its answer, or on timeout, disconnect or shutdown.
	 * `release` gives back what an attempt won after the wait had already ended.
	 */
	wait(
		who: {
			readonly user: string;
			readonly tenant: string | undefined;
			readonly priority: Priority;
		},
		attempt: () => Promise<AttemptResult<A>>,
		release: (value: A) => void,
		signal: AbortSignal | undefined,
		id?: string,
	): Promise<WaitResult<A>> {
		return new Promise<WaitResult<A>>((resolve, reject) => {
			const since = this.now();
			const waiter: Waiter<A> = {
				seq: ++this.seq,
				id,
				user: who.user,
				tenant: who.tenant ?? "",
				rank: PRIORITY_RANK[who.priority],
				since,
				attempt,
				ended: false,
				attempting: false,
				pending: undefined,
				finish: (result, admitted) => {
					if (result.kind !== "full") {
						this.options.onWaited?.(
							result.kind === "done" ? (admitted === false ? "refused" : "admitted") : result.kind,
							result.waitedMs,
						);
					}
					resolve(result);
				},
				fail: reject,
				release,
				timer: undefined,
				unlisten: undefined,
			};
			if (signal?.aborted === true) {
				resolve({ kind: "disconnected", waitedMs: 0 });
				return;
			}
			// Decided here, in the same turn as joining: a queue shut or full meanwhile says so.
			if (this.closed) {
				resolve({ kind: "shutdown", waitedMs: 0 });
				return;
			}
			if (this.count >= this.options.maxQueued) {
				resolve({ kind: "full", waitedMs: 0 });
				return;
			}
			waiter.timer = setTimeout(() => this.end(waiter, "timeout"), this.options.maxWaitMs);
			if (signal !== undefined) {
				const onAbort = () => this.end(waiter, "disconnected");
				signal.addEventListener("abort", onAbort, { once: true });
				waiter.unlisten = () => signal.removeEventListener("abort", onAbort);
			}
			const key = userKey(waiter.tenant, waiter.user);
			const list = this.byUser.get(key);
			if (list === undefined) {
				this.byUser.set(key, [waiter]);
				this.servedAt.set(`u\u0000${key}`, this.served);
			} else list.push(waiter);
			const tenantWaiting = this.perTenant.get(waiter.tenant) ?? 0;
			if (tenantWaiting === 0) this.servedAt.set(`t\u0000${waiter.tenant}`, this.served);
			this.perTenant.set(waiter.tenant, tenantWaiting + 1);
			this.count++;
			this.options.onDepth?.(this.count);
			this.startPolling();
			this.pump();
		});
	}

	/** A slot may have freed: offer it to whoever is next. */
	pump(): void {
		if (this.pumping) {
			this.again = true;
			return;
		}
		if (this.count === 0) return;
		this.pumping = true;
		this.drain().finally(() => {
			this.pumping = false;
			// A slot freed while the last round was finishing.
			if (this.again && this.count > 0) this.pump();
		});
	}

	/** Ends every wait with `shutdown` (503 to the caller): nothing is held. */
	close(): void {
		this.closed = true;
		this.stopPolling();
		for (const list of [...this.byUser.values()]) {
			for (const w of [...list]) this.end(w, "shutdown");
		}
	}

	private async drain(): Promise<void> {
		do {
			this.again = false;
			if (this.options.refresh !== undefined) await this.options.refresh();
			// Users (and tenants) whose own concurrency is full, passed over this round.
			const passed = new Set<string>();
			while (this.count > 0) {
				const next = this.pick(passed);
				if (next === undefined) break;
				next.attempting = true;
				let result: AttemptResult<A>;
				try {
					result = await next.attempt();
				} catch (err) {
					next.attempting = false;
					if (!next.ended) {
						this.remove(next);
						this.options.onWaited?.("error", this.now() - next.since);
						next.fail(err);
					}
					continue;
				}
				next.attempting = false;
				if (result.kind === "full") {
					if (next.pending !== undefined) this.end(next, next.pending);
					break;
				}
				if (result.kind === "own-full") {
					if (next.pending !== undefined) this.end(next, next.pending);
					passed.add(userKey(next.tenant, next.user));
					continue;
				}
				if (next.ended) {
					// The wait ended while the attempt was on its way: give back what it won.
					if (result.admitted) next.release(result.value);
					continue;
				}
				if (result.admitted) this.granted(next);
				this.remove(next);
				next.finish(
					{ kind: "done", value: result.value, waitedMs: this.now() - next.since },
					result.admitted,
				);
			}
		} while (this.again && this.count > 0);
		if (this.count === 0) this.stopPolling();
	}

	/** The next request in the fair order, passing over `passed` users; undefined when none can go. */
	private pick(passed: ReadonlySet<string>): Waiter<A> | undefined {
		const granted = this.options.granted;
		if (granted !== undefined) {
			// Those the shared queue chose go first, whatever this replica's order.
			for (const [key, list] of this.byUser) {
				if (passed.has(key)) continue;
				for (const w of list) if (w.id !== undefined && granted(w.id) === true) return w;
			}
		}
		const now = this.now();
		let best: Waiter<A> | undefined;
		let bestRank = 0;
		let bestTenant = 0;
		let bestUser = 0;
		for (const [key, list] of this.byUser) {
			const head = list[0];
			if (head === undefined || passed.has(key)) continue;
			// Waiting for the shared queue's grant.
			if (granted !== undefined && head.id !== undefined && granted(head.id) === false) continue;
			const aged = Math.floor((now - head.since) / this.options.agingMs);
			const rank = Math.max(0, head.rank - aged);
			const tenantServed = this.servedAt.get(`t\u0000${head.tenant}`) ?? 0;
			const userServed = this.servedAt.get(`u\u0000${key}`) ?? 0;
			if (
				best === undefined ||
				rank < bestRank ||
				(rank === bestRank &&
					(tenantServed < bestTenant ||
						(tenantServed === bestTenant &&
							(userServed < bestUser || (userServed === bestUser && head.seq < best.seq)))))
			) {
				best = head;
				bestRank = rank;
				bestTenant = tenantServed;
				bestUser = userServed;
			}
		}
		return best;
	}

	/** A slot went to `w`: the turnover estimate, and `w`'s user and tenant served last. */
	private granted(w: Waiter<A>): void {
		const now = this.now();
		if (this.lastGrant > 0) {
			const gap = now - this.lastGrant;
			this.turnoverMs = this.turnoverMs * 0.8 + gap * 0.2;
		}
		this.lastGrant = now;
		this.served++;
		this.servedAt.set(`t\u0000${w.tenant}`, this.served);
		this.servedAt.set(`u\u0000${userKey(w.tenant, w.user)}`, this.served);
	}

	/** Ends a wait without an answer from the store. */
	private end(w: Waiter<A>, how: "timeout" | "disconnected" | "shutdown"): void {
		if (w.ended) return;
		if (w.attempting) {
			// Decided when the attempt returns: admitted in time wins, else this ending.
			w.pending ??= how;
			if (how !== "timeout") {
				this.remove(w);
				w.finish({ kind: how, waitedMs: this.now() - w.since });
			}
			return;
		}
		this.remove(w);
		w.finish({ kind: how, waitedMs: this.now() - w.since });
	}

	private remove(w: Waiter<A>): void {
		if (w.ended) return;
		w.ended = true;
		if (w.timer !== undefined) clearTimeout(w.timer);
		w.unlisten?.();
		const key = userKey(w.tenant, w.user);
		const list = this.byUser.get(key);
		if (list !== undefined) {
			const i = list.indexOf(w);
			if (i >= 0) list.splice(i, 1);
			if (list.length === 0) {
				this.byUser.delete(key);
				this.servedAt.delete(`u\u0000${key}`);
			}
		}
		const tenantWaiting = (this.perTenant.get(w.tenant) ?? 1) - 1;
		if (tenantWaiting <= 0) {
			this.perTenant.delete(w.tenant);
			this.servedAt.delete(`t\u0000${w.tenant}`);
		} else this.perTenant.set(w.tenant, tenantWaiting);
		this.count--;
		if (this.count === 0) this.stopPolling();
		this.options.onDepth?.(this.count);
	}

	private startPolling(): void {
		if (this.poller !== undefined || this.options.pollMs <= 0) return;
		this.poller = setInterval(() => this.pump(), this.options.pollMs);
		this.poller.unref?.();
	}

	private stopPolling(): void {
		if (this.poller === undefined) return;
		clearInterval(this.poller);
		this.poller = undefined;
	}
}

function userKey(tenant: string, user: string): string {
	return `${tenant}\u0000${user}`;
}
