import type { PipelineContext } from "./context.ts";
import { describe } from "./ending.ts";
import type { Flight, Outcome } from "./exchange.ts";

/**
 * Lands an admitted request: settles it once (a later call waits on the first
 * settlement) and has the runtime track it until it has finished.
 */
export function land(ctx: PipelineContext, flight: Flight, outcome: Outcome): Promise<void> {
	flight.landing ??= ctx.landing(flight, settle(ctx, flight, outcome));
	return flight.landing;
}

/**
 * Settle: the end of an admitted request, whatever happened: lets go of the
 * replica, finishes the ticket (the reservation settled to what was actually
 * used, the slots freed), records the metrics and writes the request's one log
 * line.
 */
async function settle(ctx: PipelineContext, flight: Flight, outcome: Outcome): Promise<void> {
	const { metrics, logger } = ctx;
	const { plan, call, exchange: x } = flight;
	const { model } = plan;
	x.clock?.begin("settle");
	call.release();
	const instruments = metrics.forModel(model.id);
	instruments.concurrent.dec();
	const durationS = (performance.now() - x.identifiedAt) / 1000;
	instruments.duration(outcome.status, plan.stream).observe(durationS);
	instruments.settled.inc(outcome.actualTokens);
	const { usage } = outcome;
	if (usage !== undefined) {
		instruments.prompt.inc(usage.promptTokens);
		instruments.completion.inc(usage.completionTokens);
		const perUser = metrics.userUsage;
		if (perUser !== undefined) {
			const user = plan.principal.user;
			perUser.labels(model.id, user, "prompt").inc(usage.promptTokens);
			perUser.labels(model.id, user, "completion").inc(usage.completionTokens);
		}
	}
	const finishing = flight.ticket.finish(outcome.actualTokens);
	x.clock?.end();
	try {
		await finishing;
	} catch (err) {
		logger.error("settle failed", { requestId: x.requestId, error: describe(err) });
	}
	x.clock?.begin("settle");
	const level = outcome.status >= 500 ? "warn" : "info";
	if (logger.enabled(level)) logger.log(level, "request", logFields(flight, outcome, durationS));
	x.clock?.flush(ctx.stageSink);
}

/** The fields of an admitted request's log line. */
function logFields(flight: Flight, outcome: Outcome, durationS: number): Record<string, unknown> {
	const { plan, exchange: x, call } = flight;
	const { principal, estimate: est, model } = plan;
	const { usage } = outcome;
	const fields: Record<string, unknown> = {
		requestId: x.requestId,
		model: model.id,
		user: principal.user,
	};
	if (principal.keyId !== undefined) fields.keyId = principal.keyId;
	if (principal.tenant !== undefined) fields.tenant = principal.tenant;
	fields.status = outcome.status;
	if (outcome.code !== undefined) fields.code = outcome.code;
	fields.stream = plan.stream;
	fields.tokensEstimated = est.totalTokens;
	fields.tokensActual = outcome.actualTokens;
	fields.promptTokensEstimated = est.promptTokens;
	if (plan.exactCount) fields.promptCountedBy = "model-server";
	if (outcome.countedBy === "gateway") {
		fields.usageCountedBy = "gateway";
		fields.usageFallback = outcome.fallback;
	}
	if (est.ratio !== 1) fields.calibrationRatio = est.ratio;
	if (usage !== undefined) {
		fields.promptTokens = usage.promptTokens;
		fields.completionTokens = usage.completionTokens;
	}
	if (model.upstreamModel !== model.id) fields.upstreamModel = model.upstreamModel;
	fields.durationMs = Math.round(durationS * 1000);
	if (x.queuedMs !== undefined) fields.queueWaitMs = Math.round(x.queuedMs);
	fields.upstream = call.replica.url;
	return fields;
}
