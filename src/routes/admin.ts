import { Elysia, t } from "elysia";
import { modelNotFound } from "../errors.ts";
import type { Gateway } from "../gateway.ts";
import { ErrorBody, TokenUsage } from "./schemas.ts";

/** Operator views of the limiter. */
export function adminRoutes(gateway: Gateway) {
	const { config, limiter, auth } = gateway.deps;
	return new Elysia().get(
		"/api/v1/admin/token-usage/:model/:user",
		async ({ params, request }) => {
			auth.requireSelfOrAdmin(await auth.authenticate(request), params.user);
			const model = config.models.get(params.model);
			if (model === undefined) throw modelNotFound(params.model);
			// The user's own windows and the model's; tenant windows are shown by /v1/rate-limits.
			const usage = await limiter.usage(model, { user: params.user });
			return {
				model: model.id,
				user: params.user,
				windows: usage.windows.map(({ window, status }) => ({
					window: window.name,
					scope: window.scope,
					limit: window.limitTokens,
					burst: window.burstTokens,
					used: status.usedTokens,
					remaining: status.remainingTokens,
					resetSeconds: Math.ceil(status.resetUs / 1_000_000),
				})),
				concurrency: {
					inUse: usage.slotsInUse,
					limit: model.maxConcurrentRequests ?? null,
				},
			};
		},
		{
			params: t.Object({
				model: t.String({ examples: ["llama2-7b"] }),
				user: t.String({ examples: ["user123"] }),
			}),
			response: { 200: TokenUsage, 404: ErrorBody },
			detail: {
				tags: ["Admin"],
				summary: "A user's token usage for one model, per window",
				description:
					"Per window: limit, tokens still counted (used), tokens spendable now (remaining) and seconds until fully replenished. Windows are rolling (GCRA), not calendar periods.",
			},
		},
	);
}
