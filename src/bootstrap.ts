import { Authenticator, type KeyDirectory, StaticKeys } from "./auth/authenticator.ts";
import { JwtVerifier } from "./auth/jwt.ts";
import { KeyRegistry } from "./auth/key-registry.ts";
import { ADMIN_ROLE } from "./auth/principal.ts";
import type { AuthConfig, GatewayConfig } from "./config/schema.ts";
import { TokenLimiter } from "./limits/limiter.ts";
import { MemoryLimitStore } from "./limits/memory-store.ts";
import { Overrides } from "./limits/overrides.ts";
import { LimitPolicy } from "./limits/policy.ts";
import { ResilientLimitStore } from "./limits/resilient-store.ts";
import type { ClockUs, LimitStore } from "./limits/store.ts";
import { Logger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { Runtime, startPool } from "./runtime.ts";
import { SettingsWatcher } from "./settings.ts";
import { Calibrator } from "./tokens/calibration.ts";
import { TokenCounters } from "./tokens/counter.ts";

export interface BuildOptions {
	readonly clock?: ClockUs;
	readonly store?: LimitStore;
	readonly logger?: Logger;
	readonly metrics?: Metrics;
	/** One request in this many has its stages timed (default 64; 1 times every request). */
	readonly stageSampleEvery?: number;
}

export function buildAuthenticator(auth: AuthConfig, keys: KeyDirectory): Authenticator {
	const jwt =
		auth.jwt === undefined
			? undefined
			: new JwtVerifier({
					...(auth.jwt.secret === undefined ? {} : { secret: auth.jwt.secret }),
					...(auth.jwt.jwksUrl === undefined ? {} : { jwksUrl: auth.jwt.jwksUrl }),
					...(auth.jwt.issuer === undefined ? {} : { issuer: auth.jwt.issuer }),
					...(auth.jwt.audience === undefined ? {} : { audience: auth.jwt.audience }),
					...(auth.jwt.algorithms === undefined ? {} : { algorithms: auth.jwt.algorithms }),
					userClaim: auth.jwt.userClaim,
					tenantClaim: auth.jwt.tenantClaim,
					rolesClaim: auth.jwt.rolesClaim,
					priorityClaim: auth.jwt.priorityClaim,
					clockToleranceS: auth.jwt.clockToleranceS,
				});
	return new Authenticator(auth, keys, jwt);
}

/** The configured limit store: in-process, or Redis / Redis Cluster behind the failure policy. */
export async function buildStore(
	config: GatewayConfig,
	logger: Logger,
	metrics: Metrics,
	clock?: ClockUs,
): Promise<LimitStore> {
	if (config.store === "memory") {
		// The in-process store is always there.
		metrics.limiterStoreUp.set(1);
		return new MemoryLimitStore(clock);
	}
	const redis = config.redis;
	let connectionErrors = 0;
	const storeOptions = {
		timeoutMs: redis.timeoutMs,
		...(clock === undefined ? {} : { clock }),
		onConnectionError: (err: unknown) => {
			// node-redis reports every reconnect attempt; the transition is logged by the policy.
			connectionErrors++;
			if (connectionErrors === 1) {
				logger.warn("redis connection error", {
					error: err instanceof Error ? err.message : String(err),
				});
			}
		},
	};
	// The Redis client is loaded only by a gateway that uses it (about 12 MB of memory).
	const { RedisLimitStore } = await import("./limits/redis-store.ts");
	const primary =
		config.store === "redis"
			? await RedisLimitStore.standalone(redis, storeOptions)
			: await RedisLimitStore.cluster(redis, storeOptions);
	metrics.limiterStoreUp.set(1);
	const store = new ResilientLimitStore(primary, {
		policy: redis.failurePolicy,
		heartbeatMs: redis.heartbeatMs,
		...(redis.replicas === undefined ? {} : { replicas: redis.replicas }),
		...(clock === undefined ? {} : { clock }),
		hooks: {
			onFallback: (policy, operation) => metrics.limiterFallback.labels(policy, operation).inc(),
			onTransition: (up, detail) => {
				metrics.limiterStoreUp.set(up ? 1 : 0);
				if (up) connectionErrors = 0;
				logger.log(up ? "info" : "warn", up ? "limit store recovered" : "limit store unavailable", {
					store: config.store,
					policy: redis.failurePolicy,
					detail,
				});
			},
		},
	});
	logger.info("limit store", {
		store: config.store,
		target:
			config.store === "redis"
				? (redis.url ?? `${redis.host}:${redis.port}`)
				: redis.clusterNodes.join(","),
		failurePolicy: redis.failurePolicy,
		timeoutMs: redis.timeoutMs,
	});
	return store;
}

/** Builds every dependency of the gateway from a validated configuration. */
export async function buildGateway(
	config: GatewayConfig,
	options: BuildOptions = {},
): Promise<Runtime> {
	const logger = options.logger ?? new Logger(config.logLevel);
	const metrics = options.metrics ?? new Metrics({ perUserLabels: config.metrics.perUserLabels });
	// Tokenizers load first: their synchronous set-up must not stall the store's first calls.
	const counters = await TokenCounters.load(config.models.values());
	const store = options.store ?? (await buildStore(config, logger, metrics, options.clock));
	const limiter = new TokenLimiter(store, {
		leaseMs: config.redis.leaseTtlMs,
		onReject: (model, r, user) => {
			const reason = r.queue === "timeout" ? "queue_timeout" : r.reason;
			metrics.rateLimitExceeded.labels(model, r.window, r.scope, reason).inc();
			metrics.userRateLimited?.labels(model, user).inc();
		},
		onPressure: (model, scope, remaining) => {
			metrics.reportPressure(model, scope, remaining);
		},
		onStoreCall: (operation, seconds) => {
			metrics.observeStoreCall(operation, seconds);
		},
		onQueueDepth: (model, depth) => {
			metrics.queueDepth.labels(model).set(depth);
		},
		onQueueWait: (model, outcome, seconds) => {
			metrics.queueWait.labels(model, outcome).observe(seconds);
		},
	});
	const pools = new Map(
		[...config.models.values()].map((m) => {
			return [m.id, startPool(m, config, logger)] as const;
		}),
	);
	const watcher = new SettingsWatcher(store.settings);
	const keys = new KeyRegistry(
		new StaticKeys(config.auth.apiKeys),
		config.auth.apiKeys,
		store.settings,
	);
	const overrides = new Overrides(store.settings);
	await watcher.subscribe(() => keys.reload());
	await watcher.subscribe(() => overrides.reload());
	watcher.start();
	// Its answers are kept until the keys or the overrides reload, however the reload came.
	const policy = new LimitPolicy(overrides, keys);
	const calibrator = new Calibrator(store.calibration, {
		onRatio: (model, ratio) => metrics.calibrationRatio.labels(model).set(ratio),
		onRemove: (model) => metrics.calibrationRatio.remove(model),
		onSyncError: (model, err) =>
			logger.debug("calibration not shared", {
				model,
				error: err instanceof Error ? err.message : String(err),
			}),
	});
	calibrator.configure(
		[...config.models.values()].map((m) => {
			const { key, template } = counters.identity(m.id);
			return { ...m, tokenizer: { key }, template };
		}),
	);
	await calibrator.sync();
	calibrator.start();
	const auth = buildAuthenticator(config.auth, keys);
	if (config.auth.modes.has("none")) {
		logger.warn("auth.mode none: trusting X-User-ID to name the caller; for development only", {
			modes: [...config.auth.modes],
		});
	}
	if (config.ignoredSettings.length > 0) {
		logger.warn(
			"settings of the Spring gateway that this gateway does not use (ignored; see docs/operations.md)",
			{ settings: config.ignoredSettings },
		);
	}
	const adminProblem = adminCredentialProblem(config.auth);
	if (adminProblem !== undefined) logger.warn(adminProblem, { modes: [...config.auth.modes] });
	return new Runtime(
		{
			config,
			auth,
			keys,
			overrides,
			policy,
			watcher,
			limiter,
			counters,
			calibrator,
			pools,
			metrics,
			logger,
		},
		options.stageSampleEvery === undefined ? {} : { stageSampleEvery: options.stageSampleEvery },
	);
}

/** A hash no key has: the placeholder the example configurations fall back to. */
const PLACEHOLDER_HASH = /^0+$/;

/**
 * What misleads about admin credentials, if anything: an admin key whose hash
 * is the all-zero placeholder (no key matches it), or no admin key and no JWT
 * (which may carry the role) at all.
 */
export function adminCredentialProblem(auth: AuthConfig): string | undefined {
	if (auth.modes.has("none") && auth.modes.size === 1) return undefined;
	const admins = auth.apiKeys.filter((k) => k.roles.includes(ADMIN_ROLE));
	const placeholders = admins.filter((k) => PLACEHOLDER_HASH.test(k.sha256));
	const jwt = auth.modes.has("jwt") && auth.jwt !== undefined;
	if (placeholders.length > 0) {
		const usable = admins.length > placeholders.length || jwt;
		return `admin key ${placeholders.map((k) => k.id).join(", ")}: its hash is the all-zero placeholder, which no key matches (config/prod.yaml reads it from OPS_API_KEY_SHA256); ${usable ? "only other admin credentials work" : "no one can use the admin API"}`;
	}
	if (admins.length === 0 && !jwt) {
		return "no admin credential: no API key with role admin and no JWT; no one can use the admin API";
	}
	return undefined;
}
