import type { GatewayConfig, ModelConfig } from "./config/schema.ts";
import {
	bodyTooLarge,
	GatewayError,
	invalidRequest,
	modelNotFound,
	upstreamTimeout,
	upstreamUnavailable,
} from "./errors.ts";
import type { Ticket, TokenLimiter } from "./limits/limiter.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import {
	type ChatCompletionBody,
	ChatCompletionRequest,
	type CompletionBody,
	CompletionRequest,
	parseBody,
} from "./openai.ts";
import type { TokenCounters } from "./tokens/counter.ts";
import {
	chatPromptTokens,
	completionPromptTokens,
	type Estimate,
	estimate,
} from "./tokens/estimate.ts";
import { UpstreamCall } from "./upstream/call.ts";
import type { Replica, ReplicaPool } from "./upstream/pool.ts";
import { relaySse, type StreamEnd } from "./upstream/relay.ts";
import { SseUsageReader, textOfChunk, type Usage, usageFrom } from "./upstream/sse.ts";

export type CompletionKind = "chat" | "completion";

/** Who is calling; `user` names the budget that is spent. */
export interface Principal {
	readonly user: string;
}

export interface GatewayDeps {
	readonly config: GatewayConfig;
	readonly limiter: TokenLimiter;
	readonly counters: TokenCounters;
	readonly pools: ReadonlyMap<string, ReplicaPool>;
	readonly metrics: Metrics;
	readonly logger: Logger;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The caller's request id when it is a sane one, else a new one. */
export function requestIdOf(request: Request): string {
	const given = request.headers.get("x-request-id");
	return given !== null && REQUEST_ID.test(given) ? given : crypto.randomUUID();
}

/**
 * Reads the body as text, refusing more than `limitBytes` (413) without
 * reading past the limit.
 */
export async function readBodyText(request: Request, limitBytes: number): Promise<string> {
	const declared = request.headers.get("content-length");
	if (declared !== null && Number(declared) > limitBytes) throw bodyTooLarge(limitBytes);
	if (request.body === null) return "";
	if (declared !== null) {
		const text = await request.text();
		if (Buffer.byteLength(text) > limitBytes) throw bodyTooLarge(limitBytes);
		return text;
	}
	const reader = request.body.getReader();
	const parts: Uint8Array[] = [];
	let total = 0;
	for (;;) {
		const { done, value } = await reader.read();
		if (done) break;
		total += value.byteLength;
		if (total > limitBytes) {
			await reader.cancel().catch(() => {});
			throw bodyTooLarge(limitBytes);
		}
		parts.push(value);
	}
	return Buffer.concat(parts).toString("utf8");
}

function parseJson(text: string): unknown {
	if (text.trim() === "") {
		throw invalidRequest("The request body is empty; send a JSON object.", null, "invalid_json");
	}
	try {
		return JSON.parse(text);
	} catch (err) {
		const detail = err instanceof Error ? err.message : String(err);
		throw invalidRequest(
			`We could not parse the JSON body of your request (${detail}).`,
			null,
			"invalid_json",
		);
	}
}

/** Maps a vLLM error body (old `{"object":"error",...}` or OpenAI-shaped) to OpenAI's shape. */
function upstreamErrorResponse(status: number, text: string, headers: Record<string, string>) {
	let message = text.slice(0, 1000) || `The model server answered ${status}.`;
	let type = status >= 500 ? "server_error" : "invalid_request_error";
	let param: string | null = null;
	let code: string | null = null;
	try {
		const parsed: unknown = JSON.parse(text);
		if (parsed !== null && typeof parsed === "object") {
			const inner =
				"error" in parsed && parsed.error !== null && typeof parsed.error === "object"
					? parsed.error
					: parsed;
			const e = inner as Record<string, unknown>;
			if (typeof e.message === "string") message = e.message;
			if (typeof e.type === "string" && status < 500) type = e.type;
			if (typeof e.param === "string") param = e.param;
			if (typeof e.code === "string") code = e.code;
		}
	} catch {
		// Not JSON: the text itself is the message.
	}
	// A 5xx from vLLM is a bad gateway from the caller's side; 4xx are the caller's to fix.
	const outStatus = status >= 500 ? 502 : status;
	return new GatewayError(
		outStatus,
		type,
		code ?? (status >= 500 ? "upstream_error" : null),
		message,
		param,
	).toResponse(headers);
}

/**
 * The request path of the gateway: parse → resolve → estimate → admit →
 * forward → settle. Rejections never reach the model server.
 */
export class Gateway {
	constructor(readonly deps: GatewayDeps) {}

	async complete(
		kind: CompletionKind,
		request: Request,
		principal: Principal,
		pathModel?: string,
	): Promise<Response> {
		const { config, metrics } = this.deps;
		const started = performance.now();
		const requestId = requestIdOf(request);
		const json = parseJson(await readBodyText(request, config.server.maxBodyBytes));
		if (
			pathModel !== undefined &&
			json !== null &&
			typeof json === "object" &&
			!Array.isArray(json)
		) {
			(json as Record<string, unknown>).model = pathModel;
		}
		const body: ChatCompletionBody | CompletionBody =
			kind === "chat" ? parseBody(ChatCompletionRequest, json) : parseBody(CompletionRequest, json);
		const model = config.models.get(body.model);
		if (model === undefined) throw modelNotFound(body.model);

		const counter = this.deps.counters.get(model.tokenizer);
		const promptTokens =
			kind === "chat"
				? chatPromptTokens(counter, body as ChatCompletionBody)
				: completionPromptTokens(counter, body as CompletionBody);
		const est = estimate(promptTokens, body, model.defaultMaxTokens);
		const ticket = await this.deps.limiter.admit(model, principal.user, requestId, est.totalTokens);
		const stream = body.stream === true;
		const gauge = metrics.concurrentRequests.labels(model.id);
		gauge.inc();
		const done = (status: number, actual: number | undefined, usage?: Usage) => {
			gauge.dec();
			metrics.requestDuration
				.labels(model.id, `${Math.floor(status / 100)}xx`, String(stream))
				.observe((performance.now() - started) / 1000);
			if (usage !== undefined) {
				metrics.tokenUsage.labels(model.id, "prompt").inc(usage.promptTokens);
				metrics.tokenUsage.labels(model.id, "completion").inc(usage.completionTokens);
			}
			return this.settle(ticket, actual ?? 0);
		};

		const clientWantsUsage = body.stream_options?.include_usage === true;
		const upstreamBody = body as Record<string, unknown>;
		upstreamBody.model = model.upstreamModel;
		if (est.defaultedMaxTokens) upstreamBody.max_tokens = model.defaultMaxTokens;
		if (stream) {
			upstreamBody.stream_options = {
				...(body.stream_options ?? {}),
				include_usage: true,
				// vLLM adds usage to every event only with include_usage; the client did not ask for it.
				...(clientWantsUsage ? {} : { continuous_usage_stats: false }),
			};
		}
		const headers = { ...ticket.headers, "x-request-id": requestId };
		const pool = this.deps.pools.get(model.id);
		if (pool === undefined) throw modelNotFound(model.id);
		const call = new UpstreamCall(pool.pick(), model.timeoutMs, request.signal);
		const replica = call.replica;

		let res: Response;
		try {
			res = await fetch(
				`${replica.url}${kind === "chat" ? "/v1/chat/completions" : "/v1/completions"}`,
				{
					method: "POST",
					headers: { "content-type": "application/json", "x-request-id": requestId },
					body: JSON.stringify(upstreamBody),
					signal: call.signal,
				},
			);
		} catch (err) {
			call.release();
			// Nothing was generated: refund everything.
			await done(503, 0);
			if (call.clientGone) return new Response(null, { status: 499 });
			if (call.timedOut)
				throw upstreamTimeout(
					`The model server for ${model.id} did not answer within ${model.timeoutMs} ms.`,
				);
			throw upstreamUnavailable(
				`The model server for ${model.id} is unreachable: ${err instanceof Error ? err.message : String(err)}`,
				{ ...headers, "retry-after": "1" },
			);
		}

		if (!res.ok) {
			const text = await res.text().catch(() => "");
			call.release();
			await done(res.status, 0);
			this.logRequest(requestId, model, principal, res.status, est, 0, started, replica);
			return upstreamErrorResponse(res.status, text, headers);
		}

		if (!stream || res.body === null) {
			return this.finishJson(res, model, est, call, done, headers, requestId, principal, started);
		}

		const reader = new SseUsageReader(!clientWantsUsage);
		const onEnd = (ended: StreamEnd) => {
			call.release();
			// A read that failed because the client left is a disconnect, not an upstream failure.
			const end = ended === "upstream_failed" && call.clientGone ? "client_cancelled" : ended;
			const usage = this.streamUsage(reader, model, est, end);
			const status = end === "completed" ? 200 : end === "client_cancelled" ? 499 : 502;
			done(status, usage.promptTokens + usage.completionTokens, usage)
				.catch((err: unknown) =>
					this.deps.logger.error("settle failed", { requestId, error: String(err) }),
				)
				.finally(() =>
					this.logRequest(
						requestId,
						model,
						principal,
						status,
						est,
						usage.promptTokens + usage.completionTokens,
						started,
						replica,
					),
				);
		};
		const relayed = relaySse(res.body, reader, () => call.abort(), onEnd);
		return new Response(relayed, {
			status: 200,
			headers: {
				...headers,
				"content-type": "text/event-stream; charset=utf-8",
				"cache-control": "no-cache",
			},
		});
	}

	private async finishJson(
		res: Response,
		model: ModelConfig,
		est: Estimate,
		call: UpstreamCall,
		done: (status: number, actual: number | undefined, usage?: Usage) => Promise<void>,
		headers: Record<string, string>,
		requestId: string,
		principal: Principal,
		started: number,
	): Promise<Response> {
		let text: string;
		try {
			text = await res.text();
		} catch (err) {
			call.release();
			// The model server may have spent the prompt; charge it, nothing more is known.
			await done(call.clientGone ? 499 : 502, est.promptTokens);
			if (call.clientGone) return new Response(null, { status: 499 });
			if (call.timedOut) {
				throw upstreamTimeout(
					`The model server for ${model.id} did not finish within ${model.timeoutMs} ms.`,
				);
			}
			throw upstreamUnavailable(
				`The model server response for ${model.id} was cut off: ${err instanceof Error ? err.message : String(err)}`,
			);
		}
		call.release();
		let parsed: unknown;
		try {
			parsed = JSON.parse(text);
		} catch {
			parsed = undefined;
		}
		let usage =
			parsed !== null && typeof parsed === "object" && parsed !== undefined && "usage" in parsed
				? usageFrom(parsed.usage)
				: undefined;
		if (usage === undefined) {
			this.deps.metrics.usageFallback.labels(model.id, "missing").inc();
			usage = {
				promptTokens: est.promptTokens,
				completionTokens: this.deps.counters.get(model.tokenizer).count(textOfChunk(parsed)),
			};
		}
		const actual = usage.promptTokens + usage.completionTokens;
		await done(200, actual, usage);
		this.logRequest(requestId, model, principal, 200, est, actual, started, call.replica);
		return new Response(text, {
			status: 200,
			headers: { ...headers, "content-type": "application/json" },
		});
	}

	/** Usage of a relayed stream: vLLM's own count, else the streamed text counted here. */
	private streamUsage(
		reader: SseUsageReader,
		model: ModelConfig,
		est: Estimate,
		end: StreamEnd,
	): Usage {
		const reported = reader.usage();
		if (reported !== undefined) return reported;
		const reason =
			end === "completed"
				? "missing"
				: end === "client_cancelled"
					? "disconnect"
					: "upstream_failed";
		this.deps.metrics.usageFallback.labels(model.id, reason).inc();
		const text = reader.generatedText();
		const completionTokens =
			text === undefined ? reader.eventsSeen : this.deps.counters.get(model.tokenizer).count(text);
		return { promptTokens: est.promptTokens, completionTokens };
	}

	private async settle(ticket: Ticket, actualTokens: number): Promise<void> {
		try {
			await ticket.finish(actualTokens);
		} catch (err) {
			this.deps.logger.error("settle failed", { requestId: ticket.requestId, error: String(err) });
		}
	}

	private logRequest(
		requestId: string,
		model: ModelConfig,
		principal: Principal,
		status: number,
		est: Estimate,
		actual: number,
		started: number,
		replica: Replica,
	): void {
		const { logger } = this.deps;
		if (!logger.enabled("info")) return;
		logger.info("request", {
			requestId,
			model: model.id,
			user: principal.user,
			status,
			tokensEstimated: est.totalTokens,
			tokensActual: actual,
			durationMs: Math.round(performance.now() - started),
			upstream: replica.url,
		});
	}
}
