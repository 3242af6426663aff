import type { ModelConfig } from "../config/schema.ts";
import { modelNotFound } from "../errors.ts";
import type { CompletionBody } from "../openai.ts";
import {
	chatPromptParts,
	completionPromptParts,
	type Estimate,
	estimate,
	promptTexts,
} from "../tokens/estimate.ts";
import type { PipelineContext } from "./context.ts";
import type { Exchange, ParsedRequest, Plan } from "./exchange.ts";
import type { ReadResult } from "./read.ts";

/** A body longer than this may hold a prompt long enough to be counted a slice at a time. */
const PRIME_BODY_CHARS = 32_768;

/**
 * Plan: which model and replica pool serve the request, what it may cost (the
 * prompt estimate, calibrated, plus the completion allowance), whose budget it
 * spends, and the body vLLM gets. (A long prompt in exact mode is counted again
 * by the replica the admission picks.)
 */
export async function planRequest(
	ctx: PipelineContext,
	x: Exchange,
	read: ReadResult,
): Promise<Plan> {
	const { parsed, principal } = read;
	const { body } = parsed;
	x.modelName = body.model;
	const model = ctx.config.models.get(body.model);
	if (model === undefined) throw modelNotFound(body.model);
	const pool = ctx.pools.get(model.id);
	if (pool === undefined) throw modelNotFound(model.id);
	const { counter, framing } = ctx.counters.of(model.id);
	// A very long prompt is counted a slice at a time, other requests served in between.
	if (read.bodyChars > PRIME_BODY_CHARS) await counter.prime(promptTexts(body));
	x.clock?.begin("plan");
	const parts =
		parsed.kind === "chat"
			? chatPromptParts(counter, parsed.body, framing)
			: completionPromptParts(counter, parsed.body);
	const prompts = parsed.kind === "chat" ? 1 : promptCount(parsed.body);
	const est = estimate(
		parts,
		body,
		model.defaultMaxTokens,
		prompts,
		ctx.calibrator.apply(model.id, parts),
	);
	const stream = body.stream === true;
	const clientWantsUsage = body.stream_options?.include_usage === true;
	const plan: Plan = {
		parsed,
		principal,
		model,
		pool,
		counter,
		estimate: est,
		prompts,
		exactCount: false,
		spender: ctx.spenderFor(model, principal),
		stream,
		clientWantsUsage,
		upstreamBody: upstreamBody(parsed, model, est, stream, clientWantsUsage),
		upstreamPath: parsed.kind === "chat" ? "/v1/chat/completions" : "/v1/completions",
	};
	x.clock?.end();
	return plan;
}

/**
 * The body sent to vLLM, as a new object: the served model's name, the
 * defaulted allowance (so vLLM cannot exceed what was reserved), and for a
 * stream the usage event the settlement needs.
 */
function upstreamBody(
	parsed: ParsedRequest,
	model: ModelConfig,
	est: Estimate,
	stream: boolean,
	clientWantsUsage: boolean,
): Record<string, unknown> {
	const out: Record<string, unknown> = { ...parsed.body, model: model.upstreamModel };
	if (est.defaultedMaxTokens) out.max_tokens = model.defaultMaxTokens;
	if (stream) {
		out.stream_options = {
			...(parsed.body.stream_options ?? {}),
			include_usage: true,
			// vLLM adds usage to every event only with include_usage; the client did not ask for it.
			...(clientWantsUsage ? {} : { continuous_usage_stats: false }),
		};
	}
	return out;
}

/** How many prompts a text completion carries: vLLM completes each one. */
function promptCount(body: CompletionBody): number {
	const p = body.prompt;
	if (typeof p === "string" || p.length === 0) return 1;
	return typeof p[0] === "number" ? 1 : p.length;
}
