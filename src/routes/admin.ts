import { Elysia, t } from "elysia";
import type { Principal } from "../auth/principal.ts";
import { limitsOf } from "../config/loader.ts";
import type { ModelConfig } from "../config/schema.ts";
import { GatewayError, modelNotFound } from "../errors.ts";
import type { OverrideScope } from "../limits/overrides.ts";
import type { Runtime } from "../runtime.ts";
import {
	CalibrationPinBody,
	ErrorBody,
	IssuedKey,
	IssueKeyBody,
	KeyInfoBody,
	LimitValues,
	ModelCalibration,
	OverrideView,
	TokenUsage,
} from "./schemas.ts";

const modelParam = t.String({ examples: ["llama2-7b"] });

const admin: { tags: string[]; security: Record<string, string[]>[] } = {
	tags: ["Admin"],
	security: [{ apiKey: [] }, { bearer: [] }],
};

function errorExample(description: string, type: string, code: string, message: string) {
	return {
		description,
		content: { "application/json": { example: { error: { message, type, param: null, code } } } },
	};
}

/** Documented responses of the admin DELETE routes (204, no body). */
const deleted = {
	204: { description: "Done; no body." },
	401: errorExample(
		"No or invalid credentials.",
		"authentication_error",
		"missing_credentials",
		"Missing credentials: send 'Authorization: Bearer <API key or token>' or 'X-API-Key'.",
	),
	403: errorExample(
		"The caller lacks the admin role.",
		"permission_error",
		"forbidden",
		"This operation needs the admin role.",
	),
	404: errorExample(
		"Nothing to delete.",
		"invalid_request_error",
		"not_found",
		"No override is set for this scope.",
	),
	503: errorExample(
		"The shared store (Redis) did not answer.",
		"server_error",
		"store_unavailable",
		"The shared store (Redis) did not answer. Please retry shortly.",
	),
};

/** Operator API: usage, API keys and live limit overrides. Every change is audited. */
export function adminRoutes(runtime: Runtime) {
	const { limiter, auth, keys, overrides, policy, logger, calibrator } = runtime.deps;

	const modelOf = (id: string): ModelConfig => {
		const model = runtime.config.models.get(id);
		if (model === undefined) throw modelNotFound(id);
		return model;
	};
	// Who is asking is settled before the body is validated: a caller without a
	// credential hears 401, not what is wrong with a body it may not send.
	const identifyFirst = async ({ request }: { request: Request }) => {
		await auth.authenticate(request);
	};
	const asAdmin = async (request: Request): Promise<Principal> => {
		const principal = await auth.authenticate(request);
		auth.requireAdmin(principal);
		return principal;
	};
	const audit = (
		actor: Principal,
		action: string,
		target: Record<string, unknown>,
		before: unknown,
		after: unknown,
	) => {
		logger.info("audit", {
			actor: {
				user: actor.user,
				via: actor.via,
				...(actor.keyId === undefined ? {} : { keyId: actor.keyId }),
			},
			action,
			target,
			before: before ?? null,
			after: after ?? null,
		});
	};
	const overrideView = (model: ModelConfig, scope: OverrideScope, name: string) => {
		const configured = scope === "user" ? model.userWindows : model.tenantWindows;
		const o = overrides.get(model.id, scope, name);
		// What is enforced: for a user, their API keys' own limits too.
		const effective = policy.effective(model, scope, name);
		return {
			model: model.id,
			scope,
			name,
			configured: limitsOf(configured),
			override:
				o === undefined
					? null
					: { limits: { ...o.limits }, updatedAt: o.updatedAt, updatedBy: o.updatedBy },
			effective: {
				...limitsOf(effective.windows),
				...(effective.concurrency === undefined
					? {}
					: { "max-concurrent-requests": effective.concurrency }),
			},
		};
	};

	/** Changes a model's calibration on every replica, audited; answers with the new state. */
	const changeCalibration = async (
		request: Request,
		modelId: string,
		action: "pin" | "unpin" | "reset",
		change: (model: string) => Promise<unknown>,
	) => {
		const actor = await asAdmin(request);
		const model = modelOf(modelId);
		const before = runtime.calibration(model.id);
		await change(model.id);
		const after = runtime.calibration(model.id);
		audit(actor, `calibration.${action}`, { model: model.id }, before, after);
		return { model: model.id, calibration: after };
	};
	const calibrationResponses = {
		200: ModelCalibration,
		401: ErrorBody,
		403: ErrorBody,
		404: ErrorBody,
		503: ErrorBody,
	};

	const overrideRoutes = (scope: OverrideScope, segment: "users" | "tenants") => {
		const path = `/api/v1/admin/limits/:model/${segment}/:name` as const;
		const params = t.Object({
			model: modelParam,
			name: t.String({ examples: [scope === "user" ? "user123" : "team-a"] }),
		});
		const what = scope === "user" ? "a user's" : "a tenant's";
		return new Elysia({ normalize: false })
			.onTransform(identifyFirst)
			.get(
				path,
				async ({ params: p, request }) => {
					await asAdmin(request);
					await overrides.reload();
					return overrideView(modelOf(p.model), scope, p.name);
				},
				{
					params,
					response: { 200: OverrideView, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody },
					detail: {
						...admin,
						summary: `Read ${what} limits for one model: configured, override, effective`,
					},
				},
			)
			.put(
				path,
				async ({ params: p, request, body }) => {
					const actor = await asAdmin(request);
					const model = modelOf(p.model);
					const { before, after } = await overrides.set(model.id, scope, p.name, body, actor.user);
					audit(
						actor,
						"limits.set",
						{ model: model.id, scope, name: p.name },
						before?.limits,
						after.limits,
					);
					return overrideView(model, scope, p.name);
				},
				{
					params,
					body: LimitValues,
					response: {
						200: OverrideView,
						400: ErrorBody,
						401: ErrorBody,
						403: ErrorBody,
						404: ErrorBody,
					},
					detail: {
						...admin,
						summary: `Set ${what} token limits for one model, on every replica within a second`,
						description:
							"Replaces the configured windows of this scope for the model. Persisted in the store; no restart.",
					},
				},
			)
			.delete(
				path,
				async ({ params: p, request, set }) => {
					const actor = await asAdmin(request);
					const model = modelOf(p.model);
					const before = await overrides.remove(model.id, scope, p.name);
					if (before === undefined) {
						throw new GatewayError(
							404,
							"invalid_request_error",
							"override_not_found",
							"No override is set for this scope.",
						);
					}
					audit(
						actor,
						"limits.delete",
						{ model: model.id, scope, name: p.name },
						before.limits,
						null,
					);
					set.status = 204;
					return "";
				},
				{
					params,
					detail: {
						...admin,
						summary: `Remove ${what} override: the configured limits apply again`,
						responses: deleted,
					},
				},
			);
	};

	return new Elysia({ normalize: false })
		.onTransform(identifyFirst)
		.get(
			"/api/v1/admin/token-usage/:model/:user",
			async ({ params, request }) => {
				auth.requireSelfOrAdmin(await auth.authenticate(request), params.user);
				const model = modelOf(params.model);
				// The windows the user's requests are charged to, their keys' limits and tenant included.
				const usage = await limiter.usage(model, policy.spenderForUser(model, params.user));
				return {
					model: model.id,
					user: params.user,
					windows: usage.windows.map(({ window, status }) => ({
						window: window.name,
						unit: window.perRequest === true ? ("requests" as const) : ("tokens" as const),
						scope: window.scope,
						limit: window.limitTokens,
						burst: window.burstTokens,
						used: status.usedTokens,
						remaining: status.remainingTokens,
						resetSeconds: Math.ceil(status.resetUs / 1_000_000),
					})),
					concurrency: { inUse: usage.slotsInUse, limit: model.maxConcurrentRequests ?? null },
				};
			},
			{
				params: t.Object({ model: modelParam, user: t.String({ examples: ["user123"] }) }),
				response: { 200: TokenUsage, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody },
				detail: {
					...admin,
					summary: "A user's token usage for one model, per window",
					description:
						"Per window: limit, tokens still counted (used), tokens spendable now (remaining) and seconds until fully replenished. Windows are rolling (GCRA), not calendar periods. Admins may read anyone's; a user their own.",
				},
			},
		)
		.delete(
			"/api/v1/admin/token-usage/:model/:user",
			async ({ params, request, set }) => {
				const actor = await asAdmin(request);
				const model = modelOf(params.model);
				const spender = policy.spenderForUser(model, params.user);
				const before = await limiter.usage(model, spender);
				// Exactly the user's own windows that are enforced; the tenant's and the model's are shared.
				await limiter.store.resetWindows(
					before.windows.filter((w) => w.window.scope === "user").map((w) => w.window),
				);
				audit(
					actor,
					"usage.reset",
					{ model: model.id, user: params.user },
					Object.fromEntries(
						before.windows.map((w) => [`${w.window.scope}-${w.window.name}`, w.status.usedTokens]),
					),
					null,
				);
				set.status = 204;
				return "";
			},
			{
				params: t.Object({ model: modelParam, user: t.String({ examples: ["user123"] }) }),
				detail: {
					...admin,
					summary: "Reset a user's usage for one model: their windows start full again",
					responses: deleted,
				},
			},
		)
		.get(
			"/api/v1/admin/api-keys",
			async ({ request }) => {
				await asAdmin(request);
				await keys.reload();
				return { keys: keys.list() };
			},
			{
				response: { 200: t.Object({ keys: t.Array(KeyInfoBody) }), 401: ErrorBody, 403: ErrorBody },
				detail: { ...admin, summary: "List API keys (never the keys themselves)" },
			},
		)
		.post(
			"/api/v1/admin/api-keys",
			async ({ request, body, set }) => {
				const actor = await asAdmin(request);
				if (body.id !== undefined && keys.has(body.id)) {
					throw new GatewayError(
						409,
						"invalid_request_error",
						"key_exists",
						`An API key with id '${body.id}' exists.`,
						"id",
					);
				}
				const issued = await keys.issue(body, actor.user);
				audit(actor, "api-key.create", { id: issued.info.id }, null, issued.info);
				set.status = 201;
				return issued;
			},
			{
				body: IssueKeyBody,
				response: {
					201: IssuedKey,
					400: ErrorBody,
					401: ErrorBody,
					403: ErrorBody,
					409: ErrorBody,
				},
				detail: {
					...admin,
					summary: "Issue an API key; the key is shown once, only its hash is kept",
					description: "In force on every replica within a second.",
				},
			},
		)
		.delete(
			"/api/v1/admin/api-keys/:id",
			async ({ params, request, set }) => {
				const actor = await asAdmin(request);
				if (keys.isConfigured(params.id)) {
					throw new GatewayError(
						409,
						"invalid_request_error",
						"key_in_config",
						"This key comes from the configuration file; remove it there.",
					);
				}
				const before = keys.list().find((k) => k.id === params.id);
				if (!(await keys.revoke(params.id))) {
					throw new GatewayError(
						404,
						"invalid_request_error",
						"key_not_found",
						`No API key with id '${params.id}'.`,
					);
				}
				audit(actor, "api-key.revoke", { id: params.id }, before, null);
				set.status = 204;
				return "";
			},
			{
				params: t.Object({ id: t.String({ examples: ["team-a-app"] }) }),
				detail: {
					...admin,
					summary: "Revoke an API key, on every replica within a second",
					responses: {
						...deleted,
						409: errorExample(
							"The key comes from the configuration file.",
							"invalid_request_error",
							"key_in_config",
							"This key comes from the configuration file; remove it there.",
						),
					},
				},
			},
		)
		.get(
			"/api/v1/admin/calibration/:model",
			async ({ params, request }) => {
				await asAdmin(request);
				const model = modelOf(params.model);
				await calibrator.sync();
				return { model: model.id, calibration: runtime.calibration(model.id) };
			},
			{
				params: t.Object({ model: modelParam }),
				response: { 200: ModelCalibration, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody },
				detail: {
					...admin,
					summary: "A model's prompt-estimate calibration: applied, learned, pinned",
				},
			},
		)
		.put(
			"/api/v1/admin/calibration/:model",
			({ params, request, body }) =>
				changeCalibration(request, params.model, "pin", (m) => calibrator.pin(m, body.ratio)),
			{
				params: t.Object({ model: modelParam }),
				body: CalibrationPinBody,
				response: { ...calibrationResponses, 400: ErrorBody },
				detail: {
					...admin,
					summary: "Pin a model's calibration ratio on every replica",
					description:
						"The pinned ratio replaces the learned one (and the configuration's) until unpinned or reset. In force on every replica within a second.",
				},
			},
		)
		.delete(
			"/api/v1/admin/calibration/:model/pin",
			({ params, request }) =>
				changeCalibration(request, params.model, "unpin", (m) => calibrator.pin(m, undefined)),
			{
				params: t.Object({ model: modelParam }),
				response: calibrationResponses,
				detail: {
					...admin,
					summary: "Remove a pin: the learned (or configured) ratio applies again",
				},
			},
		)
		.delete(
			"/api/v1/admin/calibration/:model",
			({ params, request }) =>
				changeCalibration(request, params.model, "reset", (m) => calibrator.reset(m)),
			{
				params: t.Object({ model: modelParam }),
				response: calibrationResponses,
				detail: {
					...admin,
					summary:
						"Reset a model's calibration on every replica: forget what was learned and the pin",
					description: "Learning starts again from the next request.",
				},
			},
		)
		.use(overrideRoutes("user", "users"))
		.use(overrideRoutes("tenant", "tenants"));
}
