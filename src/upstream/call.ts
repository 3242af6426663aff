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
	private released = false;
	timedOut = false;

	constructor(
		public replica: Replica,
		timeoutMs: number,
		private readonly clientSignal: AbortSignal,
	) {
		replica.inFlight++;
		this.timer = setTimeout(() => {
			this.timedOut = true;
			this.controller.abort();
		}, timeoutMs);
		clientSignal.addEventListener("abort", this.onClientAbort, { once: true });
	}

	private readonly onClientAbort = () => this.controller.abort();

	/** Moves the call to another replica (a retry of a connection that never reached vLLM). */
	moveTo(replica: Replica): void {
		if (this.released) return;
		this.replica.inFlight--;
		this.replica = replica;
		replica.inFlight++;
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

	release(): void {
		if (this.released) return;
		this.released = true;
		this.replica.inFlight--;
		clearTimeout(this.timer);
		this.clientSignal.removeEventListener("abort", this.onClientAbort);
	}
}
