import { GatewayError } from "../errors.ts";
import { scaled } from "../tokens/estimate.ts";
import { relaySse, type StreamEnd } from "../upstream/relay.ts";
import { SseUsageReader, textOfChunk, type Usage, usageFrom } from "../upstream/sse.ts";
import type { PipelineContext } from "./context.ts";
import { endingError, endingOf, type Phase, streamFailure, upstreamError } from "./ending.ts";
import type { Flight, Outcome } from "./exchange.ts";
import { land } from "./settle.ts";

/**
 * Respond: vLLM's JSON answer relayed as it came, its usage read for the
 * settlement; the settlement runs after the answer is on its way, tracked by
 * the runtime.
 */
export async function respondJson(
	ctx: PipelineContext,
	flight: Flight,
	res: Response,
): Promise<Response> {
	const { plan, exchange: x } = flight;
	let text: string;
	try {
		text = await res.text();
	} catch (err) {
		// The model server may have spent the prompt; charge it, nothing more is known.
		return respondFailure(ctx, flight, "body", err, plan.estimate.promptTokens);
	}
	x.clock?.begin("respond");
	const outcome = usageOutcome(ctx, flight, { status: 200 }, usageOfJson(text), "missing", () =>
		generatedTokens(flight, textOfChunk(parseOrUndefined(text))),
	);
	flight.headers["content-type"] = "application/json";
	const response = new Response(text, { status: 200, headers: flight.headers });
	x.clock?.end();
	void land(ctx, flight, outcome);
	return response;
}

/**
 * Respond, streamed: vLLM's events relayed as they arrive; the usage event the
 * gateway asked for is read (and stripped unless the client asked for it too).
 * When the stream ends, however it ends, its outcome is settled.
 */
export function respondStream(
	ctx: PipelineContext,
	flight: Flight,
	body: ReadableStream<Uint8Array>,
): Response {
	const { plan, call, exchange: x } = flight;
	x.clock?.begin("respond");
	const reader = new SseUsageReader(!plan.clientWantsUsage);
	const onEnd = (ended: StreamEnd) => {
		// A client that leaves after [DONE] got everything; one whose read failed because it left is a disconnect.
		const end: StreamEnd = reader.sawDone
			? "completed"
			: ended === "upstream_failed" && call.clientGone
				? "client_cancelled"
				: ended;
		void land(ctx, flight, streamOutcome(ctx, flight, reader, end));
	};
	const ttft = ctx.metrics.forModel(plan.model.id).timeToFirstToken;
	let firstEvent = true;
	const relayed = relaySse(
		body,
		reader,
		() => call.abort(),
		onEnd,
		(err) => streamFailure(call, plan.model, err),
		() => {
			call.touch();
			if (firstEvent) {
				firstEvent = false;
				ttft.observe((performance.now() - x.identifiedAt) / 1000);
			}
		},
	);
	flight.headers["content-type"] = "text/event-stream; charset=utf-8";
	flight.headers["cache-control"] = "no-cache";
	const response = new Response(relayed, { status: 200, headers: flight.headers });
	x.clock?.end();
	return response;
}

/**
 * A model server's error answer: nothing was generated, so everything is
 * refunded (awaited, so the client's retry finds its budget back); the caller
 * gets the error in OpenAI's shape.
 */
export async function respondUpstreamError(
	ctx: PipelineContext,
	flight: Flight,
	res: Response,
): Promise<Response> {
	const text = await res.text().catch(() => "");
	const { model } = flight.plan;
	// vLLM does not serve the name it was asked for: say so in the client's terms.
	const error =
		res.status === 404 && servesNoSuchModel(text, model.upstreamModel)
			? new GatewayError(
					404,
					"invalid_request_error",
					"model_not_found",
					model.upstreamModel === model.id
						? `The model server for ${model.id} does not serve a model named ${model.id}.`
						: `The model server for ${model.id} does not serve ${model.upstreamModel} (its upstream-model); check vllm.services.${model.id}.upstream-model against the server's --served-model-name.`,
					"model",
				)
			: upstreamError(res.status, text, res.headers.get("retry-after"));
	await land(ctx, flight, {
		status: error.status,
		actualTokens: 0,
		usage: undefined,
		countedBy: "none",
		...(error.code === null ? {} : { code: error.code }),
	});
	// The reservation was refunded: the admission's rate-limit headers are stale.
	return error.toResponse({ "x-request-id": flight.exchange.requestId });
}

/**
 * A call that failed before it completed: settled first (charging `charged`),
 * then answered with the ending's error (nothing for a client that left).
 */
export async function respondFailure(
	ctx: PipelineContext,
	flight: Flight,
	phase: Phase,
	err: unknown,
	charged: number,
): Promise<Response> {
	const { call, plan, exchange: x } = flight;
	const ending = endingOf(call, phase);
	await land(ctx, flight, {
		status: ending.status,
		actualTokens: charged,
		usage: undefined,
		countedBy: charged > 0 ? "estimate" : "none",
		code: ending.code,
	});
	const error = endingError(ending, call, plan.model, phase, err, x.requestId);
	if (error === undefined) return new Response(null, { status: 499 });
	return error.toResponse({ "x-request-id": x.requestId });
}

/** How a relayed stream ended, with its usage: vLLM's own count, else the streamed text counted here. */
function streamOutcome(
	ctx: PipelineContext,
	flight: Flight,
	reader: SseUsageReader,
	end: StreamEnd,
): Outcome {
	const ended =
		end === "completed"
			? { status: 200 }
			: end === "client_cancelled"
				? ({ status: 499, code: "client_cancelled" } as const)
				: endingOf(flight.call, "stream");
	const fallback =
		end === "completed" ? "missing" : end === "client_cancelled" ? "disconnect" : "upstream_failed";
	return usageOutcome(ctx, flight, ended, reader.usage(), fallback, () => {
		const text = reader.generatedText();
		return text === undefined ? reader.eventsSeen : generatedTokens(flight, text);
	});
}

/**
 * The outcome of an answered call: the usage the model server reported (which
 * also teaches the estimate), else the prompt as estimated and the generated
 * tokens counted here, marked as the gateway's count with the reason.
 */
function usageOutcome(
	ctx: PipelineContext,
	flight: Flight,
	ended: { readonly status: number; readonly code?: string },
	reported: Usage | undefined,
	fallback: string,
	generated: () => number,
): Outcome {
	const code = ended.code === undefined ? {} : { code: ended.code };
	if (reported !== undefined) {
		observeEstimate(ctx, flight, reported);
		return {
			status: ended.status,
			actualTokens: reported.promptTokens + reported.completionTokens,
			usage: reported,
			countedBy: "model-server",
			...code,
		};
	}
	const { plan } = flight;
	ctx.metrics.usageFallback.labels(plan.model.id, fallback).inc();
	const usage: Usage = { promptTokens: plan.estimate.promptTokens, completionTokens: generated() };
	return {
		status: ended.status,
		actualTokens: usage.promptTokens + usage.completionTokens,
		usage,
		countedBy: "gateway",
		fallback,
		...code,
	};
}

/**
 * The usage object of a JSON completion. vLLM writes it as one of the last
 * top-level fields, so it is parsed on its own when what follows it is only
 * scalar fields and the closing brace of the answer; otherwise (a nested
 * `usage`, anything unusual) the whole body is parsed.
 */
export function usageOfJson(text: string): Usage | undefined {
	const at = text.lastIndexOf('"usage"');
	if (at < 0) return undefined;
	const open = text.indexOf("{", at + 7);
	if (open >= 0 && /^\s*:\s*$/.test(text.slice(at + 7, open))) {
		const close = objectEnd(text, open);
		if (close > 0 && closesTopLevel(text, close + 1)) {
			const usage = usageFrom(parseOrUndefined(text.slice(open, close + 1)));
			if (usage !== undefined) return usage;
		}
	}
	const parsed = parseOrUndefined(text);
	return parsed !== null && typeof parsed === "object" && "usage" in parsed
		? usageFrom(parsed.usage)
		: undefined;
}

/** Where the object opening at `open` closes (its `}`), strings skipped; -1 when it does not. */
function objectEnd(text: string, open: number): number {
	let depth = 0;
	let inString = false;
	for (let i = open; i < text.length; i++) {
		const c = text.charCodeAt(i);
		if (inString) {
			if (c === 0x5c)
				i++; // an escaped character
			else if (c === 0x22) inString = false;
		} else if (c === 0x22) inString = true;
		else if (c === 0x7b) depth++;
		else if (c === 0x7d && --depth === 0) return i;
	}
	return -1;
}

/**
 * Whether `text` from `from` holds no object or array and exactly one closing
 * brace, which ends the text: the object before `from` was then a field of the
 * top-level object.
 */
function closesTopLevel(text: string, from: number): boolean {
	let closed = false;
	let inString = false;
	for (let i = from; i < text.length; i++) {
		const c = text.charCodeAt(i);
		if (inString) {
			if (c === 0x5c) i++;
			else if (c === 0x22) inString = false;
		} else if (closed) {
			if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return false;
		} else if (c === 0x22) inString = true;
		else if (c === 0x7b || c === 0x5b || c === 0x5d) return false;
		else if (c === 0x7d) closed = true;
	}
	return closed;
}

function parseOrUndefined(text: string): unknown {
	try {
		return JSON.parse(text);
	} catch {
		return undefined;
	}
}

/**
 * Tokens of generated text the model server did not count (a cut stream, a
 * response without usage): counted with the model's tokenizer and calibrated
 * like the prompt, and never more than the request was allowed.
 */
function generatedTokens(flight: Flight, text: string): number {
	const { counter, estimate } = flight.plan;
	const n = counter.count(text);
	const counted = estimate.ratio === 1 ? n : scaled(n, estimate.ratio);
	return Math.min(counted, estimate.maxCompletionTokens * estimate.choices);
}

/**
 * How far the pre-flight prompt estimate was from the model server's own
 * count; the counted part of the prompt teaches the model's calibration.
 */
function observeEstimate(ctx: PipelineContext, flight: Flight, usage: Usage): void {
	const { model, estimate } = flight.plan;
	if (estimate.promptTokens <= 0) return;
	ctx.metrics
		.forModel(model.id)
		.estimateError.observe(usage.promptTokens / estimate.promptTokens - 1);
	ctx.calibrator.observe(model.id, estimate.parts, usage.promptTokens);
}

/**
 * Whether a 404 body is vLLM saying it serves no model of that name (its
 * NotFoundError, or a message naming the model), not some other 404 (a wrong
 * path, an ingress page), which is relayed as it came.
 */
function servesNoSuchModel(text: string, upstreamModel: string): boolean {
	try {
		const parsed: unknown = JSON.parse(text);
		if (parsed === null || typeof parsed !== "object") return false;
		const inner =
			"error" in parsed && parsed.error !== null && typeof parsed.error === "object"
				? parsed.error
				: parsed;
		const type = "type" in inner && typeof inner.type === "string" ? inner.type : "";
		const msg = "message" in inner && typeof inner.message === "string" ? inner.message : "";
		return type === "NotFoundError" || msg.includes(upstreamModel);
	} catch {
		return false;
	}
}
