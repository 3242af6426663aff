import { BrokenCircuitError, IsolatedCircuitError } from "cockatiel";
import type { UpstreamCall } from "../upstream/call.ts";
import { ConnectTimeoutError, connects, type Replica, type ReplicaPool } from "../upstream/pool.ts";
import type { Flight } from "./exchange.ts";

/** A replica that answered (or accepted a connection) within this long is not checked first. */
const CONNECT_CHECK_AFTER_MS = 1000;

/** Bun's fetch has its own idle timeout (5 minutes); the gateway keeps its own limits instead. */
type UpstreamInit = RequestInit & { timeout: false };

/**
 * Forward: sends the planned body to the chosen replica through its breaker. A
 * connection that never reached vLLM is tried once more on another replica; a
 * request that may have started generating is never retried. A 5xx answer
 * counts against the replica's breaker and is returned all the same.
 */
export function forwardRequest(flight: Flight, connectTimeoutMs: number): Promise<Response> {
	const { plan, call, exchange } = flight;
	exchange.clock?.begin("forward");
	// A stream's first event must come within first-byte-timeout-ms of sending (vLLM's
	// prefill; the headers may wait for it too), and no gap may exceed idle-timeout-ms.
	if (plan.stream) call.watchStream(plan.model.firstByteTimeoutMs, plan.model.idleTimeoutMs);
	const init: UpstreamInit = {
		method: "POST",
		headers: { "content-type": "application/json", "x-request-id": exchange.requestId },
		body: JSON.stringify(plan.upstreamBody),
		signal: call.signal,
		timeout: false,
	};
	const sent = forward(call, plan.pool, plan.upstreamPath, init, connectTimeoutMs);
	exchange.clock?.end();
	return sent;
}

/** A 5xx answer: a failure for the replica's breaker, passed on to the caller all the same. */
class UpstreamStatusError extends Error {
	constructor(readonly response: Response) {
		super(`model server answered ${response.status}`);
	}
}

/** The caller disconnected while the request was on its way: carried out of the breaker untold. */
class ClientGone {
	constructor(readonly cause: unknown) {}
}

/** The request never reached vLLM: safe to try another replica. */
function neverSent(err: unknown): boolean {
	if (err instanceof BrokenCircuitError || err instanceof IsolatedCircuitError) return true;
	if (err instanceof ConnectTimeoutError) return true;
	const code = err !== null && typeof err === "object" && "code" in err ? String(err.code) : "";
	return code === "ConnectionRefused" || code === "ECONNREFUSED";
}

async function forward(
	call: UpstreamCall,
	pool: ReplicaPool,
	path: string,
	init: UpstreamInit,
	connectTimeoutMs: number,
): Promise<Response> {
	const send = async (replica: Replica): Promise<Response> => {
		const outcome = await replica.breaker.execute(async () => {
			try {
				// A replica that has never answered, or not lately, must first accept a
				// connection in time (0 is never: the clock starts with the process).
				if (
					connectTimeoutMs > 0 &&
					(replica.answeredAt === 0 ||
						performance.now() - replica.answeredAt > CONNECT_CHECK_AFTER_MS)
				) {
					const reached = await connects(replica.url, connectTimeoutMs, call.signal);
					if (call.signal.aborted)
						throw new DOMException("The operation was aborted.", "AbortError");
					if (!reached) throw new ConnectTimeoutError(replica.url, connectTimeoutMs);
					// It accepts connections: no need to ask again for a while.
					replica.answeredAt = performance.now();
				}
				const res = await fetch(`${replica.url}${path}`, init);
				replica.answeredAt = performance.now();
				call.answered();
				if (res.status >= 500) throw new UpstreamStatusError(res);
				return res;
			} catch (err) {
				// A client that went away says nothing about the replica: not a breaker failure.
				if (call.clientGone && !(err instanceof UpstreamStatusError)) return new ClientGone(err);
				throw err;
			}
		});
		if (outcome instanceof ClientGone) throw outcome.cause;
		return outcome;
	};
	try {
		return await send(call.replica);
	} catch (err) {
		if (err instanceof UpstreamStatusError) return err.response;
		if (call.clientGone || call.timedOut || call.drained || call.unreachable || !neverSent(err))
			throw err;
		const other = pool.pick(call.replica);
		if (other === undefined) throw err;
		call.moveTo(other);
		try {
			return await send(other);
		} catch (again) {
			if (again instanceof UpstreamStatusError) return again.response;
			throw again;
		}
	}
}
