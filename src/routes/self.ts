import { Elysia } from "elysia";
import type { Runtime } from "../runtime.ts";
import { CALLER_SECURITY } from "./completions.ts";
import { ErrorBody, OwnLimits } from "./schemas.ts";

/** Self-service: what the caller may still spend, per model and window. */
export function selfRoutes(runtime: Runtime) {
	const { limiter, auth, policy } = runtime.deps;
	return new Elysia().get(
		"/v1/rate-limits",
		async ({ request }) => {
			const principal = await auth.authenticate(request);
			return {
				user: principal.user,
				tenant: principal.tenant ?? null,
				models: await Promise.all(
					[...runtime.config.models.values()].map(async (model) => {
						const spender = policy.spenderFor(model, principal);
						const usage = await limiter.usage(model, spender);
						return {
							model: model.id,
							windows: usage.windows.map(({ window, status }) => ({
								scope: window.scope,
								window: window.name,
								unit: window.perRequest === true ? ("requests" as const) : ("tokens" as const),
								limit: window.limitTokens,
								burst: window.burstTokens,
								used: status.usedTokens,
								remaining: status.remainingTokens,
								resetSeconds: Math.ceil(status.resetUs / 1_000_000),
							})),
							concurrency: {
								inUse: usage.slotsInUse,
								limit: model.maxConcurrentRequests ?? null,
								userLimit: spender.userConcurrency ?? null,
								tenantLimit: spender.tenantConcurrency ?? null,
							},
						};
					}),
				),
			};
		},
		{
			response: { 200: OwnLimits, 401: ErrorBody },
			detail: {
				tags: ["OpenAI"],
				summary: "The caller's own remaining budget, per model and window",
				security: CALLER_SECURITY,
				description:
					"Identifies the caller like a completion does (API key, JWT, or X-User-ID in development) and reports every window that caller's requests are charged to: the user's, the tenant's and the model's.",
			},
		},
	);
}
