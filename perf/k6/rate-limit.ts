/**
 * Rate-limit correctness: one user sends the same chat completion again and
 * again, one request at a time, until the gateway refuses it, waits the
 * Retry-After it was given, and checks that 429s start exactly where the budget
 * ends:
 *
 * - while the budget left is at least the request's cost, the request is admitted
 *   (else `premature_429`);
 * - once the budget cannot pay for it, even counting what refilled in between,
 *   it is refused (else `late_admission`);
 * - a 429 is OpenAI-shaped (`error.code` rate_limit_exceeded, `error.type`
 *   tokens or requests), carries `retry-after`, `retry-after-ms` and the
 *   `x-ratelimit-*` headers, and reports a remaining budget below the cost
 *   (else `malformed_429`);
 * - after waiting Retry-After the same request passes (else `retry_after_broken`).
 *
 * Each counter has the threshold `count==0`, so k6 exits non-zero (99) when the
 * limiter is wrong.
 *
 * The cost of a request is what the gateway reserves: its estimate of the prompt
 * plus max_tokens. The client cannot compute it (the gateway counts with its own
 * tokenizer and the chat template's framing), so it is taken from the first 429,
 * whose message names it ("requested N"), or from COST_TOKENS. Every request is
 * recorded and judged once the cost is known.
 *
 * What the headers say: `x-ratelimit-remaining-tokens` on a 200 is the tightest
 * token window's budget right after the cost was reserved; the reservation is then
 * settled to vLLM's `usage.total_tokens` (the difference is refunded, or charged),
 * so the next request finds remaining + cost - used. The gateway sends that
 * settlement to the limit store before it answers, so it lands before the next
 * request's decision (ASSUME_SETTLED, default true). With ASSUME_SETTLED=false
 * the budget is only bounded by min(remaining, remaining + cost - used) and the
 * max of the two: then a request must pass while remaining >= cost, and must be
 * refused only when even the refunded budget could not pay. A 429 spends
 * nothing: its remaining is the budget as it stood.
 *
 * The budget refills continuously (GCRA): a window of L tokens per W seconds
 * regains L/W tokens a second, so between two decisions the user regains up to
 * elapsed x limit / 60 s (the minute window refills fastest; hour and day windows
 * refill slower, so the bound holds for them too). Requests run back to back, so
 * this allowance is small; SLACK_TOKENS absorbs rounding (headers round down).
 *
 * Run it with a user of its own: anything else spending the same user's, tenant's
 * or the model-wide budget meanwhile makes the arithmetic wrong. Without API_KEY a
 * fresh X-User-ID is made for each run; with API_KEY the key's budget is spent
 * (use a key whose minute budget is a few requests' worth, or raise MAX_TOKENS).
 *
 *   k6 run -e BASE_URL=https://gateway.example -e API_KEY=... perf/k6/rate-limit.ts
 *
 * Env (defaults in brackets): BASE_URL, API_KEY, MODEL (see lib.ts); RL_USER
 * [k6-rate-limit-<time>]; MAX_TOKENS [256]; PROMPT; COST_TOKENS [learned];
 * ROUNDS [2] (429s to reach, each followed by a Retry-After wait and a retry);
 * MAX_REQUESTS [500]; MAX_WAIT_S [120] (longest Retry-After to wait for);
 * SLACK_TOKENS [2]; ASSUME_SETTLED [true]; MAX_DURATION [15m]; VERBOSE [false]
 * (log every request).
 */
import { check, sleep } from "k6";
import http from "k6/http";
import { Counter } from "k6/metrics";
import type { Options } from "k6/options";
import {
	type ApiError,
	apiErrorOf,
	assertGatewayReady,
	bodyText,
	chatCompletionOf,
	env,
	envDuration,
	envFlag,
	envNumber,
	header,
	headerInt,
	postChat,
	type RateLimitHeaders,
	type Response,
	rateLimitOf,
} from "./lib.ts";

const MAX_TOKENS = envNumber("MAX_TOKENS", 256);
const PROMPT = env("PROMPT", "Count from 1 to 1000, one number per line.");
const COST_TOKENS = envNumber("COST_TOKENS", 0);
const ROUNDS = envNumber("ROUNDS", 2);
const MAX_REQUESTS = envNumber("MAX_REQUESTS", 500);
const MAX_WAIT_S = envNumber("MAX_WAIT_S", 120);
const SLACK_TOKENS = envNumber("SLACK_TOKENS", 2);
const ASSUME_SETTLED = envFlag("ASSUME_SETTLED", true);
const VERBOSE = envFlag("VERBOSE", false);

export const options: Options = {
	scenarios: {
		rate_limit: {
			executor: "per-vu-iterations",
			vus: 1,
			iterations: 1,
			maxDuration: envDuration("MAX_DURATION", "15m"),
		},
	},
	thresholds: {
		premature_429: ["count==0"],
		late_admission: ["count==0"],
		malformed_429: ["count==0"],
		retry_after_broken: ["count==0"],
		checks: ["rate==1"],
		// 200 and 429 are the expected answers; anything else fails the run.
		http_req_failed: ["rate==0"],
	},
};

http.setResponseCallback(http.expectedStatuses(200, 429));

const premature = new Counter("premature_429");
const late = new Counter("late_admission");
const malformed = new Counter("malformed_429");
const retryBroken = new Counter("retry_after_broken");
/** Requests whose outcome either way was within the bounds (information only). */
const undecided = new Counter("admission_undecided");

type Outcome = "admitted" | "tokens" | "requests" | "concurrency" | "other";

interface Observation {
	/** 1-based request number. */
	readonly n: number;
	readonly outcome: Outcome;
	readonly status: number;
	readonly startedMs: number;
	readonly endedMs: number;
	readonly limits: RateLimitHeaders;
	/** An admitted request: what it is settled to, vLLM's usage.total_tokens. */
	readonly used: number | undefined;
	/** A token 429: the cost its message names ("requested N"). */
	readonly requested: number | undefined;
	/** A 429: how long to wait before the same request passes. */
	readonly retryAfterMs: number | undefined;
	/** The request sent after waiting for the previous 429's Retry-After. */
	readonly isRetry: boolean;
}

interface SetupData {
	readonly user: string;
}

export function setup(): SetupData {
	assertGatewayReady();
	return { user: env("RL_USER", `k6-rate-limit-${Date.now()}`) };
}

/** Checks one budget 429 (`rate_limit_exceeded`); true when it has everything it should. */
function check429(res: Response, error: ApiError, requested: number | undefined): boolean {
	const limits = rateLimitOf(res);
	const retryAfter = headerInt(res, "retry-after");
	const retryAfterMs = headerInt(res, "retry-after-ms");
	const cost = COST_TOKENS > 0 ? COST_TOKENS : requested;
	const tokens = error.type === "tokens";
	return check(res, {
		"429: error.type is tokens or requests": () => tokens || error.type === "requests",
		"429: error.message names the requested cost": () => !tokens || requested !== undefined,
		"429: the requested cost is COST_TOKENS": () =>
			!tokens || COST_TOKENS <= 0 || requested === COST_TOKENS,
		"429: Retry-After in whole seconds": () => retryAfter !== undefined && retryAfter >= 1,
		"429: retry-after-ms rounds up to Retry-After": () =>
			retryAfter !== undefined &&
			retryAfterMs !== undefined &&
			Math.ceil(retryAfterMs / 1000) === retryAfter,
		"429: x-ratelimit-limit, -remaining and -reset-tokens": () =>
			limits.limitTokens !== undefined &&
			limits.remainingTokens !== undefined &&
			limits.resetTokens !== undefined,
		"429: RateLimit and RateLimit-Policy": (r) =>
			header(r, "ratelimit") !== undefined && header(r, "ratelimit-policy") !== undefined,
		"429: remaining budget below the cost": () =>
			tokens
				? limits.remainingTokens !== undefined &&
					cost !== undefined &&
					limits.remainingTokens < cost
				: limits.remainingRequests !== undefined && limits.remainingRequests < 1,
	});
}

function send(n: number, user: string, isRetry: boolean): Observation {
	const startedMs = Date.now();
	const res = postChat({ maxTokens: MAX_TOKENS, prompt: PROMPT }, user);
	const endedMs = Date.now();
	const limits = rateLimitOf(res);
	const base = {
		n,
		status: res.status,
		startedMs,
		endedMs,
		limits,
		isRetry,
		used: undefined,
		requested: undefined,
		retryAfterMs: undefined,
	};
	if (res.status === 200) {
		const completion = chatCompletionOf(res);
		check(res, {
			"200: a chat completion with usage": () => completion?.usage !== undefined,
			"200: x-ratelimit-limit-tokens and -remaining-tokens": () =>
				limits.limitTokens !== undefined && limits.remainingTokens !== undefined,
		});
		return { ...base, outcome: "admitted", used: completion?.usage?.totalTokens };
	}
	const error = apiErrorOf(res);
	const retryAfterMs =
		headerInt(res, "retry-after-ms") ?? (headerInt(res, "retry-after") ?? 1) * 1000;
	if (res.status === 429 && error?.code === "rate_limit_exceeded") {
		const m = /requested (\d+)/.exec(error.message);
		const requested = error.type === "tokens" && m?.[1] !== undefined ? Number(m[1]) : undefined;
		if (!check429(res, error, requested)) {
			malformed.add(1);
			console.error(`request #${n}: malformed 429: ${bodyText(res)}`);
		}
		return {
			...base,
			outcome: error.type === "requests" ? "requests" : "tokens",
			requested,
			retryAfterMs,
		};
	}
	if (res.status === 429 && error?.code === "concurrency_limit_exceeded") {
		// Every concurrency slot is taken by other callers: not this budget's doing.
		return { ...base, outcome: "concurrency", retryAfterMs };
	}
	if (res.status === 429) {
		check(res, { "429: an OpenAI error body with a known code": () => false });
		malformed.add(1);
	} else {
		check(res, { "status is 200 or 429": () => false });
	}
	console.error(`request #${n}: unexpected ${res.status}: ${bodyText(res).slice(0, 500)}`);
	return { ...base, outcome: "other" };
}

interface Verdict {
	/** The budget surely held the cost: the request had to be admitted. */
	readonly mustAdmit: boolean;
	/** The budget surely could not pay: the request had to be refused. */
	readonly mustRefuse: boolean;
	readonly why: string;
}

/**
 * What the gateway had to decide for `cur`, from the headers of the request
 * before it (`prev`) and the time between them. Undefined when `prev` has no
 * rate-limit headers.
 */
function verdict(prev: Observation, cur: Observation, cost: number): Verdict | undefined {
	const { remainingTokens, limitTokens, remainingRequests, limitRequests } = prev.limits;
	if (remainingTokens === undefined || limitTokens === undefined) return undefined;
	// Both decisions happened within [prev.startedMs, cur.endedMs].
	const elapsedMs = Math.max(0, cur.endedMs - prev.startedMs);
	let low = remainingTokens;
	let high = remainingTokens;
	if (prev.outcome === "admitted") {
		if (prev.used === undefined) {
			// No usage to settle to: the gateway counted the text itself; assume nothing.
			low = Number.NEGATIVE_INFINITY;
			high = remainingTokens + cost;
		} else {
			const settled = remainingTokens + cost - prev.used;
			low = ASSUME_SETTLED ? settled : Math.min(remainingTokens, settled);
			high = ASSUME_SETTLED ? settled : Math.max(remainingTokens, settled);
		}
	}
	const refill = (elapsedMs * limitTokens) / 60_000;
	let mustAdmit = low - SLACK_TOKENS >= cost;
	const mustRefuse = high + refill + SLACK_TOKENS < cost;
	// A requests-per-minute window (max-requests-per-minute) costs 1 a request, no refund.
	if (remainingRequests !== undefined && limitRequests !== undefined) {
		mustAdmit = mustAdmit && remainingRequests >= 1;
	}
	const why =
		`after #${prev.n} (${prev.status}, remaining ${remainingTokens}` +
		`${prev.used === undefined ? "" : `, used ${prev.used}`}) the budget was within ` +
		`[${Math.floor(low)}, ${Math.ceil(high + refill)}] tokens (${elapsedMs} ms, ` +
		`refill up to ${refill.toFixed(1)}), cost ${cost}`;
	return { mustAdmit, mustRefuse, why };
}

export default function (data: SetupData): void {
	// A zero sample each, so the counters show (and their thresholds hold) when nothing is wrong.
	for (const counter of [premature, late, malformed, retryBroken, undecided]) counter.add(0);

	const log: Observation[] = [];
	let refusals = 0;
	let retryNext = false;
	while (log.length < MAX_REQUESTS) {
		const obs = send(log.length + 1, data.user, retryNext);
		log.push(obs);
		retryNext = false;
		if (VERBOSE) {
			console.log(
				`#${obs.n} ${obs.status} remaining ${obs.limits.remainingTokens ?? "-"}` +
					` used ${obs.used ?? "-"} ${obs.isRetry ? "(retry)" : ""}`,
			);
		}
		if (obs.outcome === "other") break;
		if (obs.isRetry && obs.outcome !== "concurrency") {
			if (obs.outcome !== "admitted") {
				retryBroken.add(1);
				console.error(`request #${obs.n}: refused again after waiting Retry-After`);
			}
			if (refusals >= ROUNDS) break;
		}
		if (obs.outcome === "admitted") continue;
		const waitMs = obs.retryAfterMs ?? 1000;
		if (obs.outcome === "concurrency") {
			sleep(waitMs / 1000);
			retryNext = obs.isRetry;
			continue;
		}
		refusals += 1;
		if (waitMs > MAX_WAIT_S * 1000) {
			console.warn(`Retry-After is ${waitMs} ms, above MAX_WAIT_S; not waiting for it`);
			break;
		}
		sleep(waitMs / 1000);
		retryNext = true;
	}

	const firstTokens429 = log.find((o) => o.outcome === "tokens");
	const cost = COST_TOKENS > 0 ? COST_TOKENS : firstTokens429?.requested;
	check(null, {
		"the budget ran out within MAX_REQUESTS requests": () => refusals > 0,
		"the cost is known (COST_TOKENS, or a tokens 429 naming it)": () => cost !== undefined,
	});
	if (cost === undefined) return;

	let prev: Observation | undefined;
	for (const cur of log) {
		if (cur.outcome === "concurrency" || cur.outcome === "other") continue;
		const v = prev === undefined ? undefined : verdict(prev, cur, cost);
		prev = cur;
		if (v === undefined) continue;
		const admitted = cur.outcome === "admitted";
		if (!admitted && v.mustAdmit) {
			premature.add(1);
			console.error(`request #${cur.n}: 429 although ${v.why}`);
		} else if (admitted && v.mustRefuse) {
			late.add(1);
			console.error(`request #${cur.n}: admitted although ${v.why}`);
		} else if (!v.mustAdmit && !v.mustRefuse) {
			undecided.add(1);
		}
	}
	const first = log.find((o) => o.outcome === "tokens" || o.outcome === "requests");
	console.log(
		`${log.length} requests costing ${cost} tokens each; first 429 at #${first?.n ?? "-"}`,
	);
}
