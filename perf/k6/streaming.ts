/**
 * Streaming (SSE) test: chat completions with `"stream": true` and
 * `stream_options.include_usage`, each body checked to be `data: {...}` events
 * separated by blank lines, with a usage event, ending with `data: [DONE]`.
 *
 *   k6 run -e BASE_URL=https://gateway.example -e API_KEY=... perf/k6/streaming.ts
 *
 * `stream_ttfb` is the time to the first byte of the response (k6's
 * `timings.waiting`): the gateway's admission plus the model server's time to
 * answer. k6 reads a stream to its end before the script sees it, so the time
 * to the first token is not visible here; the gateway exports it as
 * `model_time_to_first_token_seconds`. The threshold is the model server's own
 * time to first byte (MODEL_TTFB_MS, measured against vLLM directly) plus what
 * the gateway may add (TTFB_BUDGET_MS).
 *
 * Env (defaults in brackets): BASE_URL, API_KEY, MODEL (see lib.ts); VUS [10];
 * DURATION [1m]; PAUSE_S [1] (between one user's streams); MAX_TOKENS [32];
 * MODEL_TTFB_MS [0]; TTFB_BUDGET_MS [100]; MAX_429_RATE [0.05].
 */
import { check, sleep } from "k6";
import http from "k6/http";
import { Counter, Rate, Trend } from "k6/metrics";
import type { Options } from "k6/options";
import {
	assertGatewayReady,
	bodyText,
	envDuration,
	envNumber,
	header,
	parseSse,
	postChat,
	rateLimitOf,
	SUMMARY_TREND_STATS,
} from "./lib.ts";

const MAX_TOKENS = envNumber("MAX_TOKENS", 32);
const PAUSE_S = envNumber("PAUSE_S", 1);
const TTFB_LIMIT_MS = envNumber("MODEL_TTFB_MS", 0) + envNumber("TTFB_BUDGET_MS", 100);
const MAX_429_RATE = envNumber("MAX_429_RATE", 0.05);

export const options: Options = {
	scenarios: {
		streaming: {
			executor: "constant-vus",
			vus: envNumber("VUS", 10),
			duration: envDuration("DURATION", "1m"),
		},
	},
	thresholds: {
		stream_ttfb: [`p(95)<${TTFB_LIMIT_MS}`],
		// Every admitted stream is well formed and reports its usage.
		sse_malformed: ["count==0"],
		sse_usage_missing: ["count==0"],
		checks: ["rate==1"],
		http_req_failed: ["rate<0.01"],
		// Each VU is one user; 429s mean PAUSE_S is too short for the user's budget.
		rate_limited: [`rate<${MAX_429_RATE}`],
	},
	summaryTrendStats: SUMMARY_TREND_STATS,
};

http.setResponseCallback(http.expectedStatuses(200, 429));

const ttfb = new Trend("stream_ttfb", true);
const events = new Trend("stream_events");
const malformed = new Counter("sse_malformed");
const usageMissing = new Counter("sse_usage_missing");
const rateLimited = new Rate("rate_limited");

export function setup(): void {
	assertGatewayReady();
}

export default function (): void {
	const res = postChat({ maxTokens: MAX_TOKENS, stream: true, includeUsage: true });
	rateLimited.add(res.status === 429);
	if (res.status === 429) {
		check(res, { "a 429 carries Retry-After": (r) => header(r, "retry-after") !== undefined });
		sleep(PAUSE_S);
		return;
	}
	ttfb.add(res.timings.waiting);
	const sse = parseSse(bodyText(res));
	events.add(sse.events.length);
	if (res.status === 200 && !sse.wellFormed) {
		malformed.add(1);
		console.warn(`malformed stream: ${sse.problem ?? ""}`);
	}
	if (res.status === 200 && sse.usage === undefined) usageMissing.add(1);
	const limits = rateLimitOf(res);
	check(res, {
		"status 200": (r) => r.status === 200,
		"content-type text/event-stream": (r) =>
			(header(r, "content-type") ?? "").startsWith("text/event-stream"),
		"x-ratelimit-remaining-tokens": () => limits.remainingTokens !== undefined,
		"every event is data: {...} and a blank line": () => sse.wellFormed,
		"ends with data: [DONE]": () => sse.done,
		"streams some content": () => sse.content.length > 0,
		"a usage event with total = prompt + completion": () =>
			sse.usage !== undefined &&
			sse.usage.totalTokens === sse.usage.promptTokens + sse.usage.completionTokens,
	});
	sleep(PAUSE_S);
}
