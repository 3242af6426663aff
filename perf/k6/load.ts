/**
 * Load test at the target rate (default 10,000 requests/s): ramps the arrival
 * rate up, holds it, ramps down. Requests come from many users (`USERS`,
 * default 1,000) so per-user budgets are not what limits the run; a share of
 * them stream.
 *
 *   k6 run -e BASE_URL=https://gateway.example -e TARGET_RPS=10000 perf/k6/load.ts
 *
 * 429s are the limiter working, not failures: they are counted in `rate_limited`
 * and must stay below MAX_429_RATE. Everything else that is not a 200 counts in
 * `http_req_failed`.
 *
 * Env (defaults in brackets): BASE_URL, API_KEY, MODEL (see lib.ts);
 * TARGET_RPS [10000]; RAMP_UP [2m]; HOLD [5m]; RAMP_DOWN [30s];
 * PRE_VUS [TARGET_RPS / 10]; MAX_VUS [3 x PRE_VUS]; USERS [1000];
 * USER_PREFIX [k6-user]; STREAM_SHARE [0.1]; MAX_TOKENS [16];
 * P95_MS [50]; AVG_MS [50]; MAX_429_RATE [0.01]; MAX_FAILED_RATE [0.01].
 */
import { check } from "k6";
import exec from "k6/execution";
import http from "k6/http";
import { Rate } from "k6/metrics";
import type { Options } from "k6/options";
import {
	assertGatewayReady,
	bodyText,
	durationSeconds,
	env,
	envDuration,
	envNumber,
	postChat,
	SUMMARY_TREND_STATS,
	warnAboutBudgets,
} from "./lib.ts";

const TARGET_RPS = envNumber("TARGET_RPS", 10_000);
const RAMP_UP = envDuration("RAMP_UP", "2m");
const HOLD = envDuration("HOLD", "5m");
const RAMP_DOWN = envDuration("RAMP_DOWN", "30s");
// Little's law: VUs busy = arrival rate x time per request. A tenth of the rate
// covers 100 ms per request on average; k6 adds VUs up to MAX_VUS when slower.
const PRE_VUS = envNumber("PRE_VUS", Math.ceil(TARGET_RPS / 10));
const MAX_VUS = envNumber("MAX_VUS", PRE_VUS * 3);
const USERS = envNumber("USERS", 1000);
const USER_PREFIX = env("USER_PREFIX", "k6-user");
const STREAM_SHARE = envNumber("STREAM_SHARE", 0.1);
const MAX_TOKENS = envNumber("MAX_TOKENS", 16);
const P95_MS = envNumber("P95_MS", 50);
const AVG_MS = envNumber("AVG_MS", 50);
const MAX_429_RATE = envNumber("MAX_429_RATE", 0.01);
const MAX_FAILED_RATE = envNumber("MAX_FAILED_RATE", 0.01);

/** Iterations the stages plan for; at most 1 % of them may be dropped for want of a free VU. */
const PLANNED =
	TARGET_RPS *
	(durationSeconds(RAMP_UP) / 2 + durationSeconds(HOLD) + durationSeconds(RAMP_DOWN) / 2);

export const options: Options = {
	scenarios: {
		load: {
			executor: "ramping-arrival-rate",
			startRate: Math.min(100, TARGET_RPS),
			timeUnit: "1s",
			preAllocatedVUs: PRE_VUS,
			maxVUs: MAX_VUS,
			stages: [
				{ duration: RAMP_UP, target: TARGET_RPS },
				{ duration: HOLD, target: TARGET_RPS },
				{ duration: RAMP_DOWN, target: 0 },
			],
		},
	},
	thresholds: {
		// The gateway's latency promise, on non-streaming chats (a stream lasts as
		// long as the model generates; its time to the response headers is held to
		// the same bound).
		"http_req_duration{endpoint:chat,stream:false}": [`p(95)<${P95_MS}`, `avg<${AVG_MS}`],
		"http_req_waiting{endpoint:chat,stream:true}": [`p(95)<${P95_MS}`],
		// 200 and 429 are expected answers; anything else is a failure.
		http_req_failed: [`rate<${MAX_FAILED_RATE}`],
		// Share of requests refused by a budget: high means the users or limits are too small.
		rate_limited: [`rate<${MAX_429_RATE}`],
		server_errors: [`rate<${MAX_FAILED_RATE}`],
		checks: ["rate>0.99"],
		// The arrival rate was really offered: k6 had a VU free for nearly every iteration.
		dropped_iterations: [`count<${Math.ceil(PLANNED * 0.01)}`],
	},
	summaryTrendStats: SUMMARY_TREND_STATS,
};

http.setResponseCallback(http.expectedStatuses(200, 429));

const rateLimited = new Rate("rate_limited");
const serverErrors = new Rate("server_errors");

export function setup(): void {
	assertGatewayReady();
	warnAboutBudgets(TARGET_RPS, USERS, MAX_TOKENS);
}

export default function (): void {
	const user = `${USER_PREFIX}-${exec.scenario.iterationInTest % USERS}`;
	const stream = Math.random() < STREAM_SHARE;
	const res = postChat({ maxTokens: MAX_TOKENS, stream, includeUsage: stream }, user);
	rateLimited.add(res.status === 429);
	serverErrors.add(res.status >= 500 || res.status === 0);
	check(res, {
		"status is 200 or 429": (r) => r.status === 200 || r.status === 429,
		"a 200 carries a completion": (r) =>
			r.status !== 200 ||
			(stream
				? bodyText(r).replace(/\r\n/g, "\n").endsWith("data: [DONE]\n\n")
				: bodyText(r).includes('"choices"')),
	});
}
