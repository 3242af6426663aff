import type { Principal } from "../auth/principal.ts";
import type { ModelConfig } from "../config/schema.ts";
import type { Spender, Ticket } from "../limits/limiter.ts";
import type { ChatCompletionBody, CompletionBody } from "../openai.ts";
import type { TokenCounter } from "../tokens/counter.ts";
import type { Estimate } from "../tokens/estimate.ts";
import type { UpstreamCall } from "../upstream/call.ts";
import type { ReplicaPool } from "../upstream/pool.ts";
import type { Usage } from "../upstream/sse.ts";
import type { StageClock } from "./stages.ts";

export type CompletionKind = "chat" | "completion";

/** A request body once read and validated: the kind and its body travel together. */
export type ParsedRequest =
	| { readonly kind: "chat"; readonly body: ChatCompletionBody }
	| { readonly kind: "completion"; readonly body: CompletionBody };

/**
 * The one record of a request on its way through the pipeline. It starts with
 * what the route knows; each stage adds what later stages (and the request's log
 * line) need.
 */
export interface Exchange {
	readonly kind: CompletionKind;
	readonly request: Request;
	readonly requestId: string;
	/** The model named by the seed's path, which takes precedence over the body's. */
	readonly pathModel: string | undefined;
	/** performance.now() when the request arrived (a refusal's duration counts from here). */
	readonly started: number;
	/**
	 * performance.now() once the caller is identified: an admitted request's
	 * duration and time to first token count from here, as they always have.
	 */
	identifiedAt: number;
	/** Set for the sampled requests whose stages are timed. */
	readonly clock: StageClock | undefined;
	/** The authenticated caller, once known. */
	caller: Principal | undefined;
	/** The model the request named, once known (even when the body is refused). */
	modelName: string | undefined;
	/** How long it waited for a concurrency slot, when it had to. */
	queuedMs?: number;
}

/** What the plan stage decided: where the request goes, what it may cost, whose budget it spends. */
export interface Plan {
	readonly parsed: ParsedRequest;
	readonly principal: Principal;
	readonly model: ModelConfig;
	readonly pool: ReplicaPool;
	/** The model's counter when the request arrived (a reload may replace it). */
	readonly counter: TokenCounter;
	readonly estimate: Estimate;
	/** Prompts the request carries (a text completion may batch several). */
	readonly prompts: number;
	/** The prompt was counted by the model server's /tokenize (exact-count). */
	readonly exactCount: boolean;
	readonly spender: Spender;
	readonly stream: boolean;
	/** The client asked for the usage event of a stream (else it is stripped). */
	readonly clientWantsUsage: boolean;
	/** The body sent to vLLM: a new object, the client's body untouched. */
	readonly upstreamBody: Record<string, unknown>;
	readonly upstreamPath: "/v1/chat/completions" | "/v1/completions";
}

/** An admitted request: everything it holds until it is settled. */
export interface Flight {
	readonly exchange: Exchange;
	readonly plan: Plan;
	readonly ticket: Ticket;
	readonly call: UpstreamCall;
	/** Headers every answer to the client carries (rate limits, request id). */
	readonly headers: Record<string, string>;
	/** Its settlement, once begun: it happens once, later callers wait on it. */
	landing: Promise<void> | undefined;
}

/**
 * Who counted the tokens a request is charged: the model server's usage, the
 * gateway (text it relayed, when the server reported none), the prompt estimate
 * (an answer cut before its usage), or nothing (nothing was generated).
 */
export type CountedBy = "model-server" | "gateway" | "estimate" | "none";

/** How an admitted request ended: one record, whatever the path. */
export interface Outcome {
	readonly status: number;
	/** Tokens finally charged. */
	readonly actualTokens: number;
	/** Prompt and completion tokens, when the call produced any. */
	readonly usage: Usage | undefined;
	readonly countedBy: CountedBy;
	/** Why the gateway counted the usage itself (missing, disconnect, upstream_failed). */
	readonly fallback?: string;
	/** The error's code, for a request that failed after admission. */
	readonly code?: string;
}
