/**
 * Smoke test: one virtual user, a few iterations. Is the gateway up, does it list
 * the model, and does a chat completion come back with the OpenAI shape and
 * rate-limit headers?
 *
 *   k6 run -e BASE_URL=https://gateway.example -e API_KEY=... perf/k6/smoke.ts
 *
 * Env: BASE_URL, API_KEY, MODEL (see lib.ts), ITERATIONS (default 3),
 * MAX_TOKENS (default 16).
 */
import { check, group } from "k6";
import http from "k6/http";
import type { Options } from "k6/options";
import {
	bodyText,
	chatCompletionOf,
	envNumber,
	isRecord,
	MODEL,
	parseJson,
	postChat,
	rateLimitOf,
	requestHeaders,
	SUMMARY_TREND_STATS,
	url,
} from "./lib.ts";

const MAX_TOKENS = envNumber("MAX_TOKENS", 16);

export const options: Options = {
	scenarios: {
		smoke: {
			executor: "per-vu-iterations",
			vus: 1,
			iterations: envNumber("ITERATIONS", 3),
			maxDuration: "2m",
		},
	},
	thresholds: {
		// Every check passes and no request fails.
		checks: ["rate==1"],
		http_req_failed: ["rate<0.01"],
	},
	summaryTrendStats: SUMMARY_TREND_STATS,
};

export default function (): void {
	group("health", () => {
		const res = http.get(url("/health/ready"), { tags: { endpoint: "health" } });
		const body = parseJson(bodyText(res));
		check(res, {
			"ready: status 200": (r) => r.status === 200,
			"ready: status UP": () => isRecord(body) && body.status === "UP",
		});
	});

	group("models", () => {
		const res = http.get(url("/v1/models"), {
			headers: requestHeaders(),
			tags: { endpoint: "models" },
		});
		const body = parseJson(bodyText(res));
		const ids =
			isRecord(body) && Array.isArray(body.data)
				? body.data.map((m: unknown) => (isRecord(m) ? m.id : undefined))
				: [];
		check(res, {
			"models: status 200": (r) => r.status === 200,
			"models: object is list": () => isRecord(body) && body.object === "list",
			[`models: lists ${MODEL}`]: () => ids.includes(MODEL),
		});
	});

	group("chat completion", () => {
		const res = postChat({ maxTokens: MAX_TOKENS });
		const completion = chatCompletionOf(res);
		const limits = rateLimitOf(res);
		check(res, {
			"chat: status 200": (r) => r.status === 200,
			"chat: choices[0].message.content is a string": () => completion !== undefined,
			"chat: usage.total_tokens > 0": () =>
				completion?.usage !== undefined && completion.usage.totalTokens > 0,
			"chat: x-ratelimit-limit-tokens and -remaining-tokens": () =>
				limits.limitTokens !== undefined && limits.remainingTokens !== undefined,
		});
	});
}
