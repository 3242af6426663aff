import type { ModelConfig } from "../config/schema.ts";
import { GatewayError, upstreamUnavailable } from "../errors.ts";
import { UpstreamCall } from "../upstream/call.ts";
import type { ReplicaPool } from "../upstream/pool.ts";
import type { PipelineContext } from "./context.ts";
import type { Exchange, Flight, Plan } from "./exchange.ts";
import { refusalError } from "./refusal.ts";

/**
 * Admit: refuses before anything is reserved when no replica can take the
 * request or every replica's queue is too long; then one all-or-nothing
 * reservation over every window of every scope (and the concurrency slots).
 * An admitted request takes off: it is in flight until it is settled.
 */
export async function admitRequest(ctx: PipelineContext, x: Exchange, plan: Plan): Promise<Flight> {
	const { model, pool, estimate } = plan;
	x.clock?.begin("admit");
	// Every replica's breaker open: refuse before anything is reserved.
	const replica = pool.pick();
	if (replica === undefined) throw allReplicasDown(model, pool);
	// Shed before vLLM's queue explodes: even the least loaded replica is backed up.
	const shedAbove = ctx.config.shedWaitingAbove;
	if (shedAbove !== undefined) {
		const waiting = pool.waiting(replica);
		if (waiting !== undefined && waiting >= shedAbove) {
			ctx.metrics.upstreamShed.labels(model.id).inc();
			throw upstreamOverloaded(model, waiting);
		}
	}
	const deciding = ctx.limiter.admit(model, plan.spender, x.requestId, estimate.totalTokens);
	x.clock?.end();
	const decision = await deciding;
	x.clock?.begin("admit");
	if (!decision.admitted) throw refusalError(decision.refusal);
	const { ticket } = decision;
	const instruments = ctx.metrics.forModel(model.id);
	instruments.concurrent.inc();
	instruments.reserved.inc(estimate.totalTokens);
	const headers = ticket.headers;
	headers["x-request-id"] = x.requestId;
	const flight: Flight = {
		exchange: x,
		plan,
		ticket,
		call: new UpstreamCall(replica, model.timeoutMs, x.request.signal),
		headers,
		settled: false,
	};
	ctx.takeOff(flight);
	x.clock?.end();
	return flight;
}

function upstreamOverloaded(model: ModelConfig, waiting: number): GatewayError {
	return new GatewayError(
		503,
		"server_error",
		"upstream_overloaded",
		`Every model server for ${model.id} has a long queue (${waiting} requests waiting); please retry shortly.`,
		null,
		{ "retry-after": "1" },
	);
}

function allReplicasDown(model: ModelConfig, pool: ReplicaPool): GatewayError {
	return upstreamUnavailable(
		`Every model server for ${model.id} is failing (circuit open); the gateway will try again shortly.`,
		{ "retry-after": String(Math.ceil(pool.breakerOptions.halfOpenAfterMs / 1000)) },
	);
}
