import { BrokenCircuitError, CircuitState, IsolatedCircuitError } from "cockatiel";
import type { Authenticator } from "./auth/authenticator.ts";
import type { KeyRegistry } from "./auth/key-registry.ts";
import type { Principal } from "./auth/principal.ts";
import { isPlainObject, mergeWindows } from "./config/loader.ts";
import type { GatewayConfig, ModelConfig } from "./config/schema.ts";
import {
	bodyTooLarge,
	GatewayError,
	invalidRequest,
	modelNotFound,
	upstreamTimeout,
	upstreamUnavailable,
} from "./errors.ts";
import type { Spender, Ticket, TokenLimiter } from "./limits/limiter.ts";
import type { Overrides } from "./limits/overrides.ts";
import type { Logger } from "./log.ts";
import type { Metrics, UpstreamView } from "./metrics.ts";
import {
	type ChatCompletionBody,
	ChatCompletionRequest,
	type CompletionBody,
	CompletionRequest,
	parseBody,
} from "./openai.ts";
import { requestIdOf } from "./request-id.ts";
import type { SettingsWatcher } from "./settings.ts";
import type { CalibrationView, Calibrator } from "./tokens/calibration.ts";
import { type TokenCounter, TokenCounters } from "./tokens/counter.ts";
import {
	chatPromptParts,
	completionPromptParts,
	type Estimate,
	estimate,
	promptTexts,
	scaled,
} from "./tokens/estimate.ts";
import { UpstreamCall } from "./upstream/call.ts";
import {
	ConnectTimeoutError,
	connects,
	DEFAULT_BREAKER,
	type Replica,
	ReplicaPool,
} from "./upstream/pool.ts";

/** A replica that answered (or accepted a connection) within this long is not checked first. */
const CONNECT_CHECK_AFTER_MS = 1000;

import { relaySse, type StreamEnd } from "./upstream/relay.ts";
import { SseUsageReader, textOfChunk, type Usage, usageFrom } from "./upstream/sse.ts";
import { countWithServer, type TokenizeRequest } from "./upstream/tokenize.ts";

export type CompletionKind = "chat" | "completion";

const UNCALIBRATED: CalibrationView = {
	enabled: false,
	direction: "up",
	template: "openai",
	ratio: 1,
	source: "none",
	learnedRatio: 1,
	samples: 0,
	pinned: null,
	configRatio: null,
};

export interface GatewayDeps {
	readonly config: GatewayConfig;
	readonly auth: Authenticator;
	readonly keys: KeyRegistry;
	readonly overrides: Overrides;
	readonly watcher: SettingsWatcher;
	readonly limiter: TokenLimiter;
	readonly counters: TokenCounters;
	/** Learns and applies each model's prompt-estimate calibration. */
	readonly calibrator: Calibrator;
	readonly pools: ReadonlyMap<string, ReplicaPool>;
	readonly metrics: Metrics;
	readonly logger: Logger;
}

/**
 * Reads the body as text, refusing more than `limitBytes` (413) without
 * reading past the limit.
 */
export async function readBodyText(request: Request, limitBytes: number): Promise<string> {
	const declared = request.headers.get("content-length");
	if (declared !== null && Number(declared) > limitBytes) throw bodyTooLarge(limitBytes);
	if (request.body === null) return "";
	// A declared length is what the server reads, and it was checked above.
	if (declared !== null) return request.text();
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

/** Deeper JSON than this is refused before it is validated. */
const MAX_JSON_DEPTH = 32;

/** Whether a parsed value nests arrays/objects deeper than `max` (iteratively, no recursion). */
function tooDeep(value: unknown, max: number): boolean {
	const stack: [unknown, number][] = [[value, 1]];
	while (stack.length > 0) {
		const top = stack.pop();
		if (top === undefined) break;
		const [v, depth] = top;
		if (v === null || typeof v !== "object") continue;
		if (depth > max) return true;
		for (const child of Array.isArray(v) ? v : Object.values(v)) {
			if (child !== null && typeof child === "object") stack.push([child, depth + 1]);
		}
	}
	return false;
}

/** Whether `text` has more than `max` opening brackets in all (then it may nest deeper than `max`). */
function manyBrackets(text: string, max: number): boolean {
	let n = 0;
	for (let i = text.indexOf("{"); i >= 0; i = text.indexOf("{", i + 1)) if (++n > max) return true;
	for (let i = text.indexOf("["); i >= 0; i = text.indexOf("[", i + 1)) if (++n > max) return true;
	return false;
}

function parseJson(text: string): unknown {
	if (text.trim() === "") {
		throw invalidRequest("The request body is empty; send a JSON object.", null, "invalid_json");
	}
	let value: unknown;
	try {
		value = JSON.parse(text);
	} catch (err) {
		const detail = err instanceof Error ? err.message : String(err);
		throw invalidRequest(
			`We could not parse the JSON body of your request (${detail}).`,
			null,
			"invalid_json",
		);
	}
	if (manyBrackets(text, MAX_JSON_DEPTH) && tooDeep(value, MAX_JSON_DEPTH)) {
		throw invalidRequest(
			`The JSON body nests deeper than ${MAX_JSON_DEPTH} levels.`,
			null,
			"invalid_json",
		);
	}
	return value;
}

const TYPE_BY_STATUS: Record<number, string> = {
	400: "invalid_request_error",
	401: "authentication_error",
	403: "permission_error",
	404: "invalid_request_error",
	413: "invalid_request_error",
	422: "invalid_request_error",
	429: "rate_limit_error",
};

/**
 * Maps a vLLM error (old `{"object":"error",...}` or `{"error":{...}}`) to
 * OpenAI's shape. 4xx stay the caller's to fix, with OpenAI's types; an
 * overloaded vLLM (503) stays retryable; other 5xx are a bad gateway.
 */
/** The caller's error for a model server's error response (status mapped, message kept). */
function upstreamError(status: number, text: string, retryAfter: string | null): GatewayError {
	let message = text.slice(0, 1000) || `The model server answered ${status}.`;
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
			if (typeof e.param === "string") param = e.param;
			if (typeof e.code === "string" && !/^\d+$/.test(e.code)) code = e.code;
		}
	} catch {
		// Not JSON: the text itself is the message.
	}
	if (status < 500) {
		if (
			/context length|max_model_len|maximum model length|too many tokens|longer than the maximum/i.test(
				message,
			)
		) {
			code ??= "context_length_exceeded";
			param ??= "messages";
		}
		return new GatewayError(
			status,
			TYPE_BY_STATUS[status] ?? "invalid_request_error",
			code,
			message,
			param,
		);
	}
	if (status === 503) {
		return new GatewayError(
			503,
			"server_error",
			"upstream_overloaded",
			`The model server is overloaded: ${message}`,
			null,
			{
				"retry-after": retryAfter ?? "1",
			},
		);
	}
	if (status === 504) return new GatewayError(504, "server_error", "upstream_timeout", message);
	return new GatewayError(
		502,
		"server_error",
		code ?? "upstream_error",
		`The model server failed (${status}): ${message}`,
	);
}

/** Everything one admitted request carries until it is settled. */
interface Flight {
	readonly requestId: string;
	readonly model: ModelConfig;
	readonly principal: Principal;
	readonly est: Estimate;
	/** The model's counter when the request arrived (a reload may replace it). */
	readonly counter: TokenCounter;
	/** The prompt was counted by the model server's /tokenize (exact-count). */
	readonly exactCount: boolean;
	/** Why usage was counted here rather than reported by the model server, when it was. */
	usageCountedHere?: string;
	readonly ticket: Ticket;
	readonly stream: boolean;
	readonly started: number;
	readonly call: UpstreamCall;
	readonly headers: Record<string, string>;
}

/**
 * Tokens of generated text the model server did not count (a cut stream, a
 * response without usage): counted with the model's tokenizer and calibrated
 * like the prompt.
 */
function generatedTokens(flight: Flight, text: string): number {
	const n = flight.counter.count(text);
	const counted = flight.est.ratio === 1 ? n : scaled(n, flight.est.ratio);
	// The model server cannot have generated more than it was allowed.
	return Math.min(counted, flight.est.maxCompletionTokens * flight.est.choices);
}

/** Bun's fetch has its own idle timeout (5 minutes); the gateway keeps its own limits instead. */
type UpstreamInit = RequestInit & { timeout: false };

/**
 * The request path of the gateway: parse → resolve → estimate → admit →
 * forward → settle. Rejections never reach the model server.
 */
export class Gateway {
	/** What a configuration reload replaces: models, their limits, upstreams and tokenizers. */
	private live: {
		config: GatewayConfig;
		pools: ReadonlyMap<string, ReplicaPool>;
		counters: TokenCounters;
	};

	/** Admitted requests not yet settled. */
	private readonly flights = new Set<Flight>();
	private draining = false;

	constructor(readonly deps: GatewayDeps) {
		this.live = { config: deps.config, pools: deps.pools, counters: deps.counters };
		deps.metrics.setLimits(deps.config.models.values());
		deps.metrics.watchUpstreams(() => upstreamViews(this.live.pools));
	}

	/** Requests admitted and not yet settled. */
	get inFlight(): number {
		return this.flights.size;
	}

	private idleWaiters: (() => void)[] = [];

	/**
	 * Resolves once every admitted request has been settled (its reservation
	 * finished in the store, its slot released, its log line written): at once
	 * when none is in flight.
	 */
	settled(): Promise<void> {
		if (this.flights.size === 0) return Promise.resolve();
		return new Promise((resolve) => this.idleWaiters.push(resolve));
	}

	/**
	 * Graceful shutdown: refuse new requests (503, so a load balancer retries
	 * elsewhere), let in-flight ones finish for up to `drainMs`, then cut the rest;
	 * each is settled (what was generated is charged) and its slot released.
	 */
	async drain(drainMs: number): Promise<void> {
		this.draining = true;
		const { logger } = this.deps;
		logger.info("draining", { inFlight: this.flights.size, drainMs });
		const until = performance.now() + drainMs;
		while (this.flights.size > 0 && performance.now() < until) await Bun.sleep(25);
		if (this.flights.size > 0) {
			logger.warn("drain time over; cutting in-flight requests", { inFlight: this.flights.size });
			for (const flight of this.flights) flight.call.drain();
		}
		const settleBy = performance.now() + 5000;
		while (this.flights.size > 0 && performance.now() < settleBy) await Bun.sleep(10);
	}

	/** The configuration in force (it changes on reload). */
	get config(): GatewayConfig {
		return this.live.config;
	}

	get pools(): ReadonlyMap<string, ReplicaPool> {
		return this.live.pools;
	}

	/** Every model's tokenizer and chat framing in force. */
	get counters(): TokenCounters {
		return this.live.counters;
	}

	/** A model's calibration (a model just added by a reload starts uncalibrated). */
	calibration(model: string): CalibrationView {
		return this.deps.calibrator.view(model) ?? UNCALIBRATED;
	}

	/**
	 * Puts a validated configuration in force for new requests: models, limits,
	 * upstreams, tokenizers. Requests in flight finish on what they started with.
	 * Returns the changed settings that only a restart applies.
	 */
	async reload(next: GatewayConfig): Promise<string[]> {
		const counters = await TokenCounters.load(next.models.values(), this.live.counters);
		const pools = new Map<string, ReplicaPool>();
		for (const m of next.models.values()) {
			const old = this.live.pools.get(m.id);
			const same =
				old !== undefined && old.replicas.map((r) => r.url).join(",") === m.upstreamUrls.join(",");
			if (same && old !== undefined) {
				// Kept, with the reloaded probe and polling intervals.
				old.startHealthChecks(next.healthCheckMs);
				old.startLoadPolling(next.loadPollMs);
				pools.set(m.id, old);
			} else {
				pools.set(m.id, startPool(m, next, this.deps.logger));
			}
		}
		for (const [id, old] of this.live.pools) if (pools.get(id) !== old) old.stopHealthChecks();
		const prev = this.live.config;
		const restart: string[] = [];
		if (next.server.port !== prev.server.port || next.server.host !== prev.server.host)
			restart.push("server.host/port");
		if (next.store !== prev.store || JSON.stringify(next.redis) !== JSON.stringify(prev.redis)) {
			restart.push("store and spring.data.redis / redis");
		}
		if (
			JSON.stringify([...next.auth.modes, next.auth.apiKeys, next.auth.jwt]) !==
			JSON.stringify([...prev.auth.modes, prev.auth.apiKeys, prev.auth.jwt])
		) {
			restart.push("auth");
		}
		if (next.metrics.perUserLabels !== prev.metrics.perUserLabels) {
			restart.push("metrics.per-user-labels");
		}
		this.live = { config: next, pools, counters };
		this.deps.calibrator.configure(
			[...next.models.values()].map((m) => {
				const { key, template } = counters.identity(m.id);
				return { ...m, tokenizer: { key }, template };
			}),
		);
		this.deps.metrics.setLimits(next.models.values());
		return restart;
	}

	/**
	 * Serves one completion request. A refusal (bad input, unknown model, a limit,
	 * no replica) is thrown as the OpenAI-shaped error after its log line.
	 */
	async complete(
		kind: CompletionKind,
		request: Request,
		principal: Principal | ((request: Request) => Promise<Principal>),
		pathModel?: string,
	): Promise<Response> {
		const started = performance.now();
		const seen: { model?: string; admitted?: boolean } = {};
		let caller: Principal | undefined;
		try {
			// Authentication is part of the request: a refusal gets its log line too.
			caller = typeof principal === "function" ? await principal(request) : principal;
			return await this.serve(kind, request, caller, pathModel, seen);
		} catch (err) {
			const { logger } = this.deps;
			const status = err instanceof GatewayError ? err.status : 500;
			const level = status >= 500 ? "warn" : "info";
			if (seen.admitted !== true) {
				const model =
					seen.model !== undefined && this.live.config.models.has(seen.model)
						? seen.model
						: "unknown";
				this.deps.metrics.refused
					.labels(
						model,
						String(status),
						err instanceof GatewayError && err.code !== null ? err.code : "internal_error",
					)
					.inc();
			}
			// An admitted request has had its line when it was settled.
			if (seen.admitted !== true && logger.enabled(level)) {
				logger.log(level, "request", {
					requestId: requestIdOf(request),
					path: new URL(request.url).pathname,
					...(seen.model === undefined ? {} : { model: seen.model }),
					...(caller === undefined ? {} : { user: caller.user }),
					...(caller?.keyId === undefined ? {} : { keyId: caller.keyId }),
					...(caller?.tenant === undefined ? {} : { tenant: caller.tenant }),
					status,
					...(err instanceof GatewayError ? { code: err.code } : {}),
					durationMs: Math.round(performance.now() - started),
				});
			}
			throw err;
		}
	}

	private async serve(
		kind: CompletionKind,
		request: Request,
		principal: Principal,
		pathModel: string | undefined,
		seen: { model?: string; admitted?: boolean },
	): Promise<Response> {
		const { metrics } = this.deps;
		const { config, pools, counters } = this.live;
		if (this.draining) {
			throw shuttingDown();
		}
		const started = performance.now();
		const requestId = requestIdOf(request);
		const bodyText = await readBodyText(request, config.server.maxBodyBytes);
		const json = parseJson(bodyText);
		// Named in the refusal's log line and metric even when the body is refused.
		const named =
			pathModel ?? (isPlainObject(json) && typeof json.model === "string" ? json.model : undefined);
		if (named !== undefined) seen.model = named;
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
		if (
			kind === "chat" &&
			(body as ChatCompletionBody).messages.length > config.server.maxMessages
		) {
			throw invalidRequest(
				`Too many messages: at most ${config.server.maxMessages} per request.`,
				"messages",
				"too_many_messages",
			);
		}
		seen.model = body.model;
		const model = config.models.get(body.model);
		if (model === undefined) throw modelNotFound(body.model);
		const pool = pools.get(model.id);
		if (pool === undefined) throw modelNotFound(model.id);

		const { counter, framing } = counters.of(model.id);
		// A very long prompt is counted a slice at a time, other requests served in between.
		if (bodyText.length > 32_768) await counter.prime(promptTexts(body));
		const parts =
			kind === "chat"
				? chatPromptParts(counter, body as ChatCompletionBody, framing)
				: completionPromptParts(counter, body as CompletionBody);
		const prompts = kind === "chat" ? 1 : promptCount(body as CompletionBody);
		let est = estimate(
			parts,
			body,
			model.defaultMaxTokens,
			prompts,
			this.deps.calibrator.apply(model.id, parts),
		);
		// Every replica's breaker open: refuse before anything is reserved.
		const replica = pool.pick();
		if (replica === undefined) throw allReplicasDown(model, pool);
		// Shed before vLLM's queue explodes: even the least loaded replica is backed up.
		const waiting = config.shedWaitingAbove === undefined ? undefined : pool.waiting(replica);
		if (
			waiting !== undefined &&
			config.shedWaitingAbove !== undefined &&
			waiting >= config.shedWaitingAbove
		) {
			metrics.upstreamShed.labels(model.id).inc();
			throw upstreamOverloaded(model, waiting);
		}
		// Exact mode: a long prompt is counted by the model server itself.
		const exact =
			model.exactCount !== undefined && est.promptTokens > model.exactCount.aboveTokens
				? await this.exactPromptTokens(model, replica, kind, body, requestId)
				: undefined;
		if (exact !== undefined) {
			est = estimate(
				{ content: 0, framings: [], configured: 0, exact },
				body,
				model.defaultMaxTokens,
				prompts,
			);
		}
		const maxPrompt = config.server.maxPromptTokens;
		if (maxPrompt !== undefined && est.promptTokens > maxPrompt) {
			throw invalidRequest(
				`The prompt is about ${est.promptTokens} tokens; this gateway accepts at most ${maxPrompt}.`,
				kind === "chat" ? "messages" : "prompt",
				"prompt_too_large",
			);
		}
		const ticket = await this.deps.limiter.admit(
			model,
			this.spenderFor(model, principal),
			requestId,
			est.totalTokens,
		);
		const instruments = metrics.forModel(model.id);
		instruments.concurrent.inc();
		instruments.reserved.inc(est.totalTokens);

		const stream = body.stream === true;
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
		seen.admitted = true;
		const flight: Flight = {
			requestId,
			model,
			principal,
			est,
			counter,
			exactCount: exact !== undefined,
			ticket,
			stream,
			started,
			call: new UpstreamCall(replica, model.timeoutMs, request.signal),
			headers: { ...ticket.headers, "x-request-id": requestId },
		};
		const { call } = flight;
		this.flights.add(flight);

		// A stream's first event must come within first-byte-timeout-ms of sending (vLLM's
		// prefill; the headers may wait for it too), and no gap may exceed idle-timeout-ms.
		if (stream) call.watchStream(model.firstByteTimeoutMs, model.idleTimeoutMs);
		let res: Response;
		try {
			const init: UpstreamInit = {
				method: "POST",
				headers: { "content-type": "application/json", "x-request-id": requestId },
				body: JSON.stringify(upstreamBody),
				signal: call.signal,
				timeout: false,
			};
			res = await forward(
				call,
				pool,
				kind === "chat" ? "/v1/chat/completions" : "/v1/completions",
				init,
				config.connectTimeoutMs,
			);
		} catch (err) {
			// Nothing was generated: refund everything.
			if (call.clientGone) {
				await this.land(flight, 499, 0, undefined, "client_cancelled");
				return new Response(null, { status: 499 });
			}
			if (call.drained) {
				await this.land(flight, 503, 0, undefined, "shutting_down");
				throw shuttingDown();
			}
			if (call.unreachable) {
				// Its replica stopped answering /health before it answered this request.
				await this.land(flight, 503, 0, undefined, "upstream_unavailable");
				throw upstreamUnavailable(
					`The model server for ${model.id} stopped answering (${call.replica.url} failed its /health check).`,
					{ "x-request-id": requestId, "retry-after": "1" },
				);
			}
			if (call.timedOut) {
				await this.land(flight, 504, 0, undefined, "upstream_timeout");
				throw upstreamTimeout(
					call.timeout === "first-byte"
						? `The model server for ${model.id} sent nothing within ${model.firstByteTimeoutMs} ms (first-byte-timeout-ms).`
						: `The model server for ${model.id} did not answer within ${model.timeoutMs} ms.`,
				);
			}
			await this.land(flight, 503, 0, undefined, "upstream_unavailable");
			throw upstreamUnavailable(
				`The model server for ${model.id} is unreachable: ${describe(err)}`,
				{
					"x-request-id": requestId,
					"retry-after": "1",
				},
			);
		}

		if (!res.ok) {
			const text = await res.text().catch(() => "");
			const error = upstreamError(res.status, text, res.headers.get("retry-after"));
			await this.land(flight, error.status, 0, undefined, error.code ?? undefined);
			// The reservation was refunded: the admission's rate-limit headers are stale.
			return error.toResponse({ "x-request-id": requestId });
		}
		if (!stream || res.body === null) return this.finishJson(flight, res);

		const reader = new SseUsageReader(!clientWantsUsage);
		const onEnd = (ended: StreamEnd) => {
			// A client that leaves after [DONE] got everything; one whose read failed because it left is a disconnect.
			const end: StreamEnd = reader.sawDone
				? "completed"
				: ended === "upstream_failed" && call.clientGone
					? "client_cancelled"
					: ended;
			const usage = this.streamUsage(reader, flight, end);
			const status =
				end === "completed"
					? 200
					: end === "client_cancelled"
						? 499
						: call.drained
							? 503
							: call.timedOut
								? 504
								: 502;
			const code =
				status === 499
					? "client_cancelled"
					: status === 503
						? "shutting_down"
						: status === 504
							? "upstream_timeout"
							: status === 502
								? "upstream_error"
								: undefined;
			void this.land(flight, status, usage.promptTokens + usage.completionTokens, usage, code);
		};
		const describeFailure = (err: unknown) => {
			if (call.drained) {
				return {
					message: "This gateway replica is shutting down; the stream was cut. Please retry.",
					code: "shutting_down",
				};
			}
			switch (call.timeout) {
				case "total":
					return `The model server did not finish within ${model.timeoutMs} ms (timeout-ms).`;
				case "first-byte":
					return `The model server sent nothing within ${model.firstByteTimeoutMs} ms (first-byte-timeout-ms).`;
				case "idle":
					return `The model server went silent for ${model.idleTimeoutMs} ms mid-stream (idle-timeout-ms).`;
				default:
					return `The model server stream failed: ${describe(err)}`;
			}
		};
		let firstEvent = true;
		const relayed = relaySse(
			res.body,
			reader,
			() => call.abort(),
			onEnd,
			describeFailure,
			() => {
				call.touch();
				if (firstEvent) {
					firstEvent = false;
					instruments.timeToFirstToken.observe((performance.now() - started) / 1000);
				}
			},
		);
		return new Response(relayed, {
			status: 200,
			headers: {
				...flight.headers,
				"content-type": "text/event-stream; charset=utf-8",
				"cache-control": "no-cache",
			},
		});
	}

	/**
	 * Whose windows a caller's request to `model` spends: runtime overrides first,
	 * then the API key's own limits, then the model's configuration.
	 */
	spenderFor(model: ModelConfig, principal: Principal): Spender {
		const { overrides } = this.deps;
		const tenant = principal.tenant;
		return {
			user: principal.user,
			tenant,
			userWindows: mergeWindows(
				// A key's own limits replace the windows they name; the others stay.
				mergeWindows(model.userWindows, principal.userWindows),
				overrides.windows(model.id, "user", principal.user),
			),
			tenantWindows:
				tenant === undefined
					? undefined
					: mergeWindows(model.tenantWindows, overrides.windows(model.id, "tenant", tenant)),
			userConcurrency:
				overrides.concurrency(model.id, "user", principal.user) ?? principal.userConcurrency,
			tenantConcurrency:
				tenant === undefined ? undefined : overrides.concurrency(model.id, "tenant", tenant),
		};
	}

	private async finishJson(flight: Flight, res: Response): Promise<Response> {
		const { model, est, call } = flight;
		let text: string;
		try {
			text = await res.text();
		} catch (err) {
			// The model server may have spent the prompt; charge it, nothing more is known.
			if (call.clientGone) {
				await this.land(flight, 499, est.promptTokens, undefined, "client_cancelled");
				return new Response(null, { status: 499 });
			}
			if (call.drained) {
				await this.land(flight, 503, est.promptTokens, undefined, "shutting_down");
				throw shuttingDown();
			}
			if (call.timedOut) {
				await this.land(flight, 504, est.promptTokens, undefined, "upstream_timeout");
				throw upstreamTimeout(
					`The model server for ${model.id} did not finish within ${model.timeoutMs} ms.`,
				);
			}
			await this.land(flight, 502, est.promptTokens, undefined, "upstream_error");
			throw upstreamUnavailable(
				`The model server response for ${model.id} was cut off: ${describe(err)}`,
			);
		}
		let parsed: unknown;
		try {
			parsed = JSON.parse(text);
		} catch {
			parsed = undefined;
		}
		let usage =
			parsed !== null && typeof parsed === "object" && "usage" in parsed
				? usageFrom(parsed.usage)
				: undefined;
		if (usage !== undefined) this.observeEstimate(flight, usage);
		if (usage === undefined) {
			this.deps.metrics.usageFallback.labels(model.id, "missing").inc();
			flight.usageCountedHere = "missing";
			usage = {
				promptTokens: est.promptTokens,
				completionTokens: generatedTokens(flight, textOfChunk(parsed)),
			};
		}
		// Settle without holding the response: a later call on the same store connection
		// (the usage API, the next request) is ordered after it anyway.
		void this.land(flight, 200, usage.promptTokens + usage.completionTokens, usage);
		return new Response(text, {
			status: 200,
			headers: { ...flight.headers, "content-type": "application/json" },
		});
	}

	/** Usage of a relayed stream: vLLM's own count, else the streamed text counted here. */
	private streamUsage(reader: SseUsageReader, flight: Flight, end: StreamEnd): Usage {
		const { model, est } = flight;
		const reported = reader.usage();
		if (reported !== undefined) {
			this.observeEstimate(flight, reported);
			return reported;
		}
		const reason =
			end === "completed"
				? "missing"
				: end === "client_cancelled"
					? "disconnect"
					: "upstream_failed";
		this.deps.metrics.usageFallback.labels(model.id, reason).inc();
		flight.usageCountedHere = reason;
		const text = reader.generatedText();
		const completionTokens = text === undefined ? reader.eventsSeen : generatedTokens(flight, text);
		return { promptTokens: est.promptTokens, completionTokens };
	}

	/**
	 * The prompt's tokens as the model server counts them (its /tokenize), or
	 * undefined when it cannot say in time or the prompt is a batch.
	 */
	private async exactPromptTokens(
		model: ModelConfig,
		replica: Replica,
		kind: CompletionKind,
		body: ChatCompletionBody | CompletionBody,
		requestId: string,
	): Promise<number | undefined> {
		const timeoutMs = model.exactCount?.timeoutMs ?? 1000;
		let request: TokenizeRequest["body"];
		if (kind === "chat") {
			const chat = body as ChatCompletionBody;
			request =
				chat.tools === undefined
					? { messages: chat.messages }
					: { messages: chat.messages, tools: chat.tools };
		} else {
			const prompt = (body as CompletionBody).prompt;
			if (typeof prompt !== "string") return undefined;
			request = { prompt };
		}
		const started = performance.now();
		const count = await countWithServer({
			url: replica.url,
			model: model.upstreamModel,
			body: request,
			timeoutMs,
			requestId,
		});
		const { metrics } = this.deps;
		metrics.exactCountDuration.labels(model.id).observe((performance.now() - started) / 1000);
		metrics.exactCounts.labels(model.id, count === undefined ? "failed" : "counted").inc();
		return count;
	}

	/**
	 * How far the pre-flight prompt estimate was from the model server's own
	 * count; the counted part of the prompt teaches the model's calibration.
	 */
	private observeEstimate(flight: Flight, usage: Usage): void {
		const { model, est } = flight;
		if (est.promptTokens <= 0) return;
		this.deps.metrics
			.forModel(model.id)
			.estimateError.observe(usage.promptTokens / est.promptTokens - 1);
		this.deps.calibrator.observe(model.id, est.parts, usage.promptTokens);
	}

	/**
	 * The end of an admitted request, whatever happened: lets go of the replica,
	 * settles the reservation to `actualTokens` (and frees the slot), records the
	 * metrics and writes the request's log line. Called exactly once per flight.
	 */
	private async land(
		flight: Flight,
		status: number,
		actualTokens: number,
		usage?: Usage,
		/** The error's code, for a request that failed after admission. */
		code?: string,
	): Promise<void> {
		const { metrics, logger } = this.deps;
		const { model, call } = flight;
		call.release();
		const instruments = metrics.forModel(model.id);
		instruments.concurrent.dec();
		const durationS = (performance.now() - flight.started) / 1000;
		instruments.duration(status, flight.stream).observe(durationS);
		instruments.settled.inc(actualTokens);
		if (usage !== undefined) {
			instruments.prompt.inc(usage.promptTokens);
			instruments.completion.inc(usage.completionTokens);
			const perUser = metrics.userUsage;
			if (perUser !== undefined) {
				const user = flight.principal.user;
				perUser.labels(model.id, user, "prompt").inc(usage.promptTokens);
				perUser.labels(model.id, user, "completion").inc(usage.completionTokens);
			}
		}
		try {
			await flight.ticket.finish(actualTokens);
		} catch (err) {
			logger.error("settle failed", { requestId: flight.requestId, error: describe(err) });
		} finally {
			this.flights.delete(flight);
		}
		if (this.flights.size === 0 && this.idleWaiters.length > 0) {
			const waiters = this.idleWaiters;
			this.idleWaiters = [];
			queueMicrotask(() => {
				for (const resolve of waiters) resolve();
			});
		}
		const level = status >= 500 ? "warn" : "info";
		if (!logger.enabled(level)) return;
		logger.log(level, "request", {
			requestId: flight.requestId,
			model: model.id,
			user: flight.principal.user,
			...(flight.principal.keyId === undefined ? {} : { keyId: flight.principal.keyId }),
			...(flight.principal.tenant === undefined ? {} : { tenant: flight.principal.tenant }),
			status,
			...(code === undefined ? {} : { code }),
			stream: flight.stream,
			tokensEstimated: flight.est.totalTokens,
			tokensActual: actualTokens,
			promptTokensEstimated: flight.est.promptTokens,
			...(flight.exactCount ? { promptCountedBy: "model-server" } : {}),
			...(flight.usageCountedHere === undefined
				? {}
				: { usageCountedBy: "gateway", usageFallback: flight.usageCountedHere }),
			...(flight.est.ratio === 1 ? {} : { calibrationRatio: flight.est.ratio }),
			...(usage === undefined
				? {}
				: { promptTokens: usage.promptTokens, completionTokens: usage.completionTokens }),
			durationMs: Math.round(durationS * 1000),
			upstream: call.replica.url,
		});
	}
}

/**
 * A model's replica pool with its probes and polling started; each change of a
 * replica (breaker, /health) is logged once: a warning when it goes, info when
 * it comes back.
 */
export function startPool(model: ModelConfig, config: GatewayConfig, logger: Logger): ReplicaPool {
	const pool = new ReplicaPool(model.upstreamUrls, DEFAULT_BREAKER, (url, change, detail) =>
		logger.log(
			change === "breaker closed" || change.startsWith("back in") ? "info" : "warn",
			"upstream replica",
			{ model: model.id, url, change, ...(detail === undefined ? {} : { detail }) },
		),
	);
	pool.startHealthChecks(config.healthCheckMs);
	pool.startLoadPolling(config.loadPollMs);
	return pool;
}

/** Each replica's state, for the upstream gauges. */
function* upstreamViews(pools: ReadonlyMap<string, ReplicaPool>): Iterable<UpstreamView> {
	for (const [model, pool] of pools) {
		for (const r of pool.replicas) {
			const state = r.breaker.state;
			yield {
				model,
				replica: r.url,
				breaker: state === CircuitState.Closed ? 0 : state === CircuitState.HalfOpen ? 1 : 2,
				up: !pool.isTakenOut(r),
				inFlight: r.inFlight,
				waiting: pool.waiting(r),
				kvCacheUsage: pool.waiting(r) === undefined ? undefined : r.load?.kvCacheUsage,
			};
		}
	}
}

function describe(err: unknown): string {
	return err instanceof Error ? err.message : String(err);
}

/** How many prompts a text completion carries: vLLM completes each one. */
function promptCount(body: CompletionBody): number {
	const p = body.prompt;
	if (typeof p === "string" || p.length === 0) return 1;
	return typeof p[0] === "number" ? 1 : p.length;
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

/** This replica is shutting down: a retry goes to another one. */
function shuttingDown(): GatewayError {
	return new GatewayError(
		503,
		"server_error",
		"shutting_down",
		"This gateway replica is shutting down; please retry.",
		null,
		{ "retry-after": "1", connection: "close" },
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
 * Sends the request through the replica's breaker. A connection that never
 * reached vLLM is tried once more on another replica; a request that may have
 * started generating is never retried.
 */
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
				// A replica that has not answered lately must first accept a connection in time.
				if (
					connectTimeoutMs > 0 &&
					performance.now() - replica.answeredAt > CONNECT_CHECK_AFTER_MS
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
