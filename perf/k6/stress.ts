/**
 * Stress test: raises the arrival rate in steps past the target (by default
 * 0.5x, 1x, 1.5x, 2x, 2.5x and 3x TARGET_RPS) to find where the gateway breaks.
 *
 *   k6 run -e BASE_URL=https://gateway.example -e TARGET_RPS=10000 perf/k6/stress.ts
 *
 * Shedding load is expected: 429 (a budget or concurrency slot) and 503 with
 * Retry-After (e.g. draining, every replica's breaker open) are counted in
 * `shed`. What must stay rare is a gateway error: any other 5xx, or no answer
 * at all (status 0: refused, reset, timed out), counted in `gateway_errors`.
 * Every request is tagged with its step (`step:1.5x`), and the summary lists
 * latency, errors and shedding per step; the breaking point is the first step
 * where they jump. By default the run stops once gateway errors pass the limit.
 *
 * Env (defaults in brackets): BASE_URL, API_KEY, MODEL (see lib.ts);
 * TARGET_RPS [10000]; STEPS [0.5,1,1.5,2,2.5,3] (multiples of TARGET_RPS);
 * STEP_RAMP [30s]; STEP_HOLD [1m]; PRE_VUS [TARGET_RPS / 10]; MAX_VUS [peak rate / 5];
 * USERS [1000]; USER_PREFIX [k6-user]; STREAM_SHARE [0.1]; MAX_TOKENS [16];
 * P95_MS [500]; MAX_ERROR_RATE [0.01]; MAX_FAILED_RATE [0.05]; ABORT_ON_FAIL [true].
 */
import { check } from "k6";
import exec from "k6/execution";
import http from "k6/http";
import { Rate } from "k6/metrics";
import type { Options, Stage } from "k6/options";
import {
	assertGatewayReady,
	bodyText,
	durationSeconds,
	env,
	envDuration,
	envFlag,
	envNumber,
	header,
	postChat,
	SUMMARY_TREND_STATS,
	warnAboutBudgets,
} from "./lib.ts";

const TARGET_RPS = envNumber("TARGET_RPS", 10_000);
const STEPS = env("STEPS", "0.5,1,1.5,2,2.5,3")
	.split(",")
	.map((s) => {
		const factor = Number(s.trim());
		if (!(factor > 0)) throw new Error(`STEPS: "${s}" is not a positive number`);
		return factor;
	});
const STEP_RAMP = envDuration("STEP_RAMP", "30s");
const STEP_HOLD = envDuration("STEP_HOLD", "1m");
const PEAK_RPS = TARGET_RPS * Math.max(...STEPS);
const PRE_VUS = envNumber("PRE_VUS", Math.ceil(TARGET_RPS / 10));
// 200 ms per request at the peak rate; past the breaking point k6 runs out of VUs
// and reports dropped_iterations, which is itself a sign of the limit.
const MAX_VUS = envNumber("MAX_VUS", Math.max(PRE_VUS, Math.ceil(PEAK_RPS / 5)));
const USERS = envNumber("USERS", 1000);
const USER_PREFIX = env("USER_PREFIX", "k6-user");
const STREAM_SHARE = envNumber("STREAM_SHARE", 0.1);
const MAX_TOKENS = envNumber("MAX_TOKENS", 16);
const P95_MS = envNumber("P95_MS", 500);
const MAX_ERROR_RATE = envNumber("MAX_ERROR_RATE", 0.01);
const MAX_FAILED_RATE = envNumber("MAX_FAILED_RATE", 0.05);
const ABORT_ON_FAIL = envFlag("ABORT_ON_FAIL", true);

const stepLabel = (factor: number) => `${factor}x`;

// Each step ramps to its rate over STEP_RAMP, then holds it for STEP_HOLD.
const stages: Stage[] = STEPS.flatMap((factor) => [
	{ duration: STEP_RAMP, target: Math.round(TARGET_RPS * factor) },
	{ duration: STEP_HOLD, target: Math.round(TARGET_RPS * factor) },
]);
stages.push({ duration: "30s", target: 0 });

/** The step a moment of the scenario belongs to: its ramp and its hold. */
const STEP_SECONDS = durationSeconds(STEP_RAMP) + durationSeconds(STEP_HOLD);
function currentStep(): string {
	const elapsed = (Date.now() - exec.scenario.startTime) / 1000;
	const factor = STEPS[Math.floor(elapsed / STEP_SECONDS)];
	return factor === undefined ? "ramp-down" : stepLabel(factor);
}

/** Per-step lines in the summary: k6 prints a tagged sub-metric only when it has a threshold. */
const perStep: Record<string, string[]> = {};
for (const factor of STEPS) {
	const step = stepLabel(factor);
	perStep[`http_req_duration{endpoint:chat,stream:false,step:${step}}`] = ["max>=0"];
	perStep[`gateway_errors{step:${step}}`] = ["rate>=0"];
	perStep[`shed{step:${step}}`] = ["rate>=0"];
}

export const options: Options = {
	scenarios: {
		stress: {
			executor: "ramping-arrival-rate",
			startRate: Math.min(100, TARGET_RPS),
			timeUnit: "1s",
			preAllocatedVUs: PRE_VUS,
			maxVUs: MAX_VUS,
			stages,
		},
	},
	thresholds: {
		// Gateway errors: 5xx other than 503 with Retry-After, and requests without an answer.
		gateway_errors: [
			{ threshold: `rate<${MAX_ERROR_RATE}`, abortOnFail: ABORT_ON_FAIL, delayAbortEval: "1m" },
		],
		// 200, 429 and 503 are expected answers (a 503 without Retry-After is a gateway error).
		http_req_failed: [`rate<${MAX_FAILED_RATE}`],
		"http_req_duration{endpoint:chat,stream:false}": [`p(95)<${P95_MS}`],
		checks: ["rate>0.95"],
		...perStep,
	},
	summaryTrendStats: SUMMARY_TREND_STATS,
};

http.setResponseCallback(http.expectedStatuses(200, 429, 503));

const gatewayErrors = new Rate("gateway_errors");
const shed = new Rate("shed");

export function setup(): void {
	assertGatewayReady();
	warnAboutBudgets(TARGET_RPS, USERS, MAX_TOKENS);
}

export default function (): void {
	const step = currentStep();
	const user = `${USER_PREFIX}-${exec.scenario.iterationInTest % USERS}`;
	const stream = Math.random() < STREAM_SHARE;
	const res = postChat({ maxTokens: MAX_TOKENS, stream, includeUsage: stream }, user, { step });
	const retryAfter = header(res, "retry-after") !== undefined;
	const shedding = res.status === 429 || (res.status === 503 && retryAfter);
	const broken = res.status === 0 || (res.status >= 500 && !shedding);
	gatewayErrors.add(broken, { step });
	shed.add(shedding, { step });
	check(res, {
		"status is 200, 429 or 503": (r) => r.status === 200 || r.status === 429 || r.status === 503,
		"a 429 carries Retry-After": (r) => r.status !== 429 || retryAfter,
		"a 200 carries a completion": (r) =>
			r.status !== 200 ||
			(stream
				? bodyText(r).replace(/\r\n/g, "\n").endsWith("data: [DONE]\n\n")
				: bodyText(r).includes('"choices"')),
	});
}
