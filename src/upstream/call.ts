import type { Replica } from "./pool.ts";

/**
 * One request to a vLLM replica: counts it in flight, aborts it when the total
 * timeout passes or the client goes away, and lets go of all of that once.
 * (A plain timer cleared on release, not AbortSignal.timeout, so that finished
 * requests leave no pending timers behind.)
 */
export class UpstreamCall {
	private readonly controller = new AbortController();
	private readonly timer: ReturnType<typeof setTimeout>;
	private streamTimer: ReturnType<typeof setInterval> | undefined;
	private released = false;
	/** Which limit cut the call, if one did. */
	timeout: "total" | "first-byte" | "idle" | undefined;

	constructor(
		public replica: Replica,
		timeoutMs: number,
		private readonly clientSignal: AbortSignal,
	) {
		replica.inFlight++;
		replica.awaiting.add(this);
		this.timer = setTimeout(() => this.expire("total"), timeoutMs);
		// A client that left before the call was made: the call starts aborted.
		if (clientSignal.aborted) this.controller.abort();
		else clientSignal.addEventListener("abort", this.onClientAbort, { once: true });
	}

	get timedOut(): boolean {
		return this.timeout !== undefined;
	}

	private expire(kind: "total" | "first-byte" | "idle"): void {
		if (this.released || this.controller.signal.aborted) return;
		this.timeout = kind;
		this.controller.abort();
	}

	private firstEventAt: number | undefined;
	private lastEventAt = 0;

	/**
	 * Watches a stream: its first event must come within `firstByteMs` (prefill)
	 * and no gap between events may exceed `idleMs`. One coarse timer per stream;
	 * each event only stamps the time.
	 */
	watchStream(firstByteMs: number, idleMs: number): void {
		const started = performance.now();
		this.lastEventAt = started;
		const tickMs = Math.max(10, Math.min(1000, Math.floor(Math.min(firstByteMs, idleMs) / 4)));
		this.streamTimer = setInterval(() => {
			const now = performance.now();
			if (this.firstEventAt === undefined) {
				if (now - started >= firstByteMs) this.expire("first-byte");
			} else if (now - this.lastEventAt >= idleMs) {
				this.expire("idle");
			}
		}, tickMs);
		this.streamTimer.unref();
	}

	/** A stream chunk arrived. */
	touch(): void {
		const now = performance.now();
		this.firstEventAt ??= now;
		this.lastEventAt = now;
	}

	private readonly onClientAbort = () => this.controller.abort();

	/** Moves the call to another replica (a retry of a connection that never reached vLLM). */
	moveTo(replica: Replica): void {
		if (this.released) return;
		this.replica.inFlight--;
		this.replica.awaiting.delete(this);
		this.replica = replica;
		replica.inFlight++;
		replica.awaiting.add(this);
	}

	/** The replica answered (response headers came): a later /health failure does not cut it. */
	answered(): void {
		this.replica.awaiting.delete(this);
	}

	/** Cut because its replica, which never answered it, was taken out (failed /health). */
	unreachable = false;

	/** Cuts a call still waiting for its replica's first answer. */
	cutUnreachable(): void {
		if (this.released) return;
		this.unreachable = true;
		this.controller.abort();
	}

	get signal(): AbortSignal {
		return this.controller.signal;
	}

	get clientGone(): boolean {
		return this.clientSignal.aborted;
	}

	abort(): void {
		this.controller.abort();
	}

	/** Cut because the gateway is shutting down and its drain time is over. */
	drained = false;

	/** Cuts the call for the shutdown. */
	drain(): void {
		this.drained = true;
		this.controller.abort();
	}

	release(): void {
		if (this.released) return;
		this.released = true;
		this.replica.inFlight--;
		this.replica.awaiting.delete(this);
		clearTimeout(this.timer);
		if (this.streamTimer !== undefined) clearInterval(this.streamTimer);
		this.clientSignal.removeEventListener("abort", this.onClientAbort);
	}
}
