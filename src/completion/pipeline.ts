import { GatewayError } from "../errors.ts";
import { requestIdOf } from "../request-id.ts";
import { admitRequest } from "./admit.ts";
import type { PipelineContext } from "./context.ts";
import { shuttingDown } from "./ending.ts";
import type { CompletionKind, Exchange, Flight } from "./exchange.ts";
import { forwardRequest } from "./forward.ts";
import { planRequest } from "./plan.ts";
import { readRequest } from "./read.ts";
import { respondFailure, respondJson, respondStream, respondUpstreamError } from "./respond.ts";
import { land } from "./settle.ts";

/** A new request's record, as the route hands it to the pipeline. */
export function newExchange(
	ctx: PipelineContext,
	kind: CompletionKind,
	request: Request,
	pathModel?: string,
): Exchange {
	const started = performance.now();
	return {
		kind,
		request,
		requestId: requestIdOf(request),
		pathModel,
		started,
		identifiedAt: started,
		clock: ctx.stages.next(),
		caller: undefined,
		modelName: pathModel,
	};
}

/**
 * One completion request, end to end:
 *   read     identify the caller, read and validate the body
 *   plan     model, pool, estimate, whose windows, the upstream body
 *   admit    shed check, replica, one all-or-nothing reservation
 *   forward  breaker, connect check, one retry on another replica
 *   respond  JSON or SSE relayed as it arrives → one outcome
 *   settle   the ticket finished, metrics, the log line (tracked by the runtime)
 * A request refused before admission is thrown as its OpenAI-shaped error
 * after its log line; an admitted one always gets an answer.
 */
export async function runCompletion(ctx: PipelineContext, x: Exchange): Promise<Response> {
	let flight: Flight;
	try {
		const read = await readRequest(
			x,
			(r) => ctx.authenticate(r),
			ctx.config.server,
			() => {
				if (ctx.draining) throw shuttingDown();
			},
		);
		const plan = await planRequest(ctx, x, read);
		flight = await admitRequest(ctx, x, plan);
	} catch (err) {
		refused(ctx, x, err);
		throw err;
	}
	try {
		return await deliver(ctx, flight);
	} catch (err) {
		// A failure of the gateway itself: the request is still settled, charging its prompt.
		await land(ctx, flight, {
			status: 500,
			actualTokens: flight.plan.estimate.promptTokens,
			usage: undefined,
			countedBy: "estimate",
			code: "internal_error",
		});
		throw err;
	}
}

/** Forward and respond for an admitted request; whatever happens, it is settled. */
async function deliver(ctx: PipelineContext, flight: Flight): Promise<Response> {
	let res: Response;
	try {
		res = await forwardRequest(flight, ctx.config.connectTimeoutMs);
	} catch (err) {
		// Nothing was generated: refund everything.
		return respondFailure(ctx, flight, "send", err, 0);
	}
	if (!res.ok) return respondUpstreamError(ctx, flight, res);
	if (flight.plan.stream && res.body !== null) return respondStream(ctx, flight, res.body);
	return respondJson(ctx, flight, res);
}

/** A request answered before anything was reserved: counted by code, and its log line. */
function refused(ctx: PipelineContext, x: Exchange, err: unknown): void {
	const status = err instanceof GatewayError ? err.status : 500;
	const code = err instanceof GatewayError && err.code !== null ? err.code : "internal_error";
	const named = x.modelName;
	const model = named !== undefined && ctx.config.models.has(named) ? named : "unknown";
	ctx.metrics.refused.labels(model, String(status), code).inc();
	const level = status >= 500 ? "warn" : "info";
	if (!ctx.logger.enabled(level)) return;
	const { caller } = x;
	ctx.logger.log(level, "request", {
		requestId: x.requestId,
		path: new URL(x.request.url).pathname,
		...(named === undefined ? {} : { model: named }),
		...(caller === undefined ? {} : { user: caller.user }),
		...(caller?.keyId === undefined ? {} : { keyId: caller.keyId }),
		...(caller?.tenant === undefined ? {} : { tenant: caller.tenant }),
		status,
		...(err instanceof GatewayError ? { code: err.code } : {}),
		durationMs: Math.round(performance.now() - x.started),
		...(x.queuedMs === undefined ? {} : { queueWaitMs: Math.round(x.queuedMs) }),
	});
}
