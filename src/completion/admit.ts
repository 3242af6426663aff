import type { ModelConfig } from "../config/schema.ts";
import { GatewayError, invalidRequest, upstreamUnavailable } from "../errors.ts";
import { estimate as estimateOf } from "../tokens/estimate.ts";
import { UpstreamCall } from "../upstream/call.ts";
import type { Replica, ReplicaPool } from "../upstream/pool.ts";
import { countWithServer, type TokenizeRequest } from "../upstream/tokenize.ts";
import type { PipelineContext } from "./context.ts";
import { shuttingDown } from "./ending.ts";
import type { Exchange, Flight, Plan } from "./exchange.ts";
import { refusalError } from "./refusal.ts";

/**
 * Admit: refuses before anything is reserved when no replica can take the
 * request or every replica's queue is too long; in exact mode has that replica
 * count a long prompt; refuses a prompt over `server.max-prompt-tokens`; then
 * one all-or-nothing reservation over every window of every scope (and the
 * concurrency slots). An admitted request takes off: it is in flight until it
 * is settled.
 */
export async function admitRequest(
	ctx: PipelineContext,
	x: Exchange,
	planned: Plan,
): Promise<Flight> {
	const { model, pool } = planned;
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
	const exact = model.exactCount;
	let plan = planned;
	if (exact !== undefined && planned.estimate.promptTokens > exact.aboveTokens) {
		x.clock?.end();
		plan = await exactCount(ctx, x, planned, replica);
		x.clock?.begin("admit");
	}
	const { estimate } = plan;
	const maxPrompt = ctx.config.server.maxPromptTokens;
	if (maxPrompt !== undefined && estimate.promptTokens > maxPrompt) {
		throw invalidRequest(
			`The prompt is about ${estimate.promptTokens} tokens; this gateway accepts at most ${maxPrompt}.`,
			plan.parsed.kind === "chat" ? "messages" : "prompt",
			"prompt_too_large",
		);
	}
	// A request that finds every slot taken waits here for one, before anything is
	// sent to the client or to vLLM; it stops waiting if the client goes away.
	const deciding = ctx.limiter.admit(model, plan.spender, estimate.totalTokens, {
		signal: x.request.signal,
		...(plan.principal.priority === undefined ? {} : { priority: plan.principal.priority }),
	});
	x.clock?.end();
	const decision = await deciding;
	x.clock?.begin("admit");
	if (decision.queuedMs !== undefined) x.queuedMs = decision.queuedMs;
	if (!decision.admitted) {
		if (decision.refusal !== undefined) {
			throw refusalError(decision.refusal, {
				tokens: estimate.promptTokens,
				param: plan.parsed.kind === "chat" ? "messages" : "prompt",
			});
		}
		throw decision.cancelled === "shutdown" ? shuttingDown() : clientLeftWhileQueued(model);
	}
	const { ticket } = decision;
	const instruments = ctx.metrics.forModel(model.id);
	instruments.concurrent.inc();
	instruments.reserved.inc(estimate.totalTokens);
	const headers = ticket.headers;
	headers["x-request-id"] = x.requestId;
	if (decision.queuedMs !== undefined) {
		headers["x-queue-wait-ms"] = String(Math.round(decision.queuedMs));
	}
	const flight: Flight = {
		exchange: x,
		plan,
		ticket,
		call: new UpstreamCall(replica, model.timeoutMs, x.request.signal),
		headers,
		landing: undefined,
	};
	ctx.takeOff(flight);
	x.clock?.end();
	return flight;
}

/** The client went away while waiting for a slot: nothing was held, nobody hears this answer. */
function clientLeftWhileQueued(model: ModelConfig): GatewayError {
	return new GatewayError(
		499,
		"invalid_request_error",
		"client_cancelled",
		`The client closed the request while it waited for a slot of ${model.id}.`,
	);
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

/**
 * Exact mode: a prompt estimated above `exact-count.above-tokens` is counted by
 * the replica the request will go to (its /tokenize), so the pick that chose it
 * is the only one; the estimate stands when it cannot say in time, or the
 * prompt is a batch.
 */
async function exactCount(
	ctx: PipelineContext,
	x: Exchange,
	plan: Plan,
	replica: Replica,
): Promise<Plan> {
	const { model, parsed } = plan;
	if (model.exactCount === undefined) return plan;
	let request: TokenizeRequest["body"];
	if (parsed.kind === "chat") {
		const chat = parsed.body;
		request =
			chat.tools === undefined
				? { messages: chat.messages }
				: { messages: chat.messages, tools: chat.tools };
	} else {
		const prompt = parsed.body.prompt;
		if (typeof prompt !== "string") return plan;
		request = { prompt };
	}
	const started = performance.now();
	const count = await countWithServer({
		url: replica.url,
		model: model.upstreamModel,
		body: request,
		timeoutMs: model.exactCount.timeoutMs,
		requestId: x.requestId,
	});
	const { metrics } = ctx;
	metrics.exactCountDuration.labels(model.id).observe((performance.now() - started) / 1000);
	metrics.exactCounts.labels(model.id, count === undefined ? "failed" : "counted").inc();
	if (count === undefined) return plan;
	return {
		...plan,
		exactCount: true,
		estimate: estimateOf(
			{ content: 0, framings: [], configured: 0, exact: count },
			parsed.body,
			model.defaultMaxTokens,
			plan.prompts,
		),
	};
}
