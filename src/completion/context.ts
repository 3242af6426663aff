import type { Principal } from "../auth/principal.ts";
import type { GatewayConfig, ModelConfig } from "../config/schema.ts";
import type { Spender, TokenLimiter } from "../limits/limiter.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type { Calibrator } from "../tokens/calibration.ts";
import type { TokenCounters } from "../tokens/counter.ts";
import type { ReplicaPool } from "../upstream/pool.ts";
import type { Flight } from "./exchange.ts";
import type { StageSampler, StageSink } from "./stages.ts";

/**
 * What the pipeline needs of the runtime that owns the live configuration: the
 * configuration in force, the services, and the book of admitted requests.
 */
export interface PipelineContext {
	readonly config: GatewayConfig;
	readonly pools: ReadonlyMap<string, ReplicaPool>;
	readonly counters: TokenCounters;
	readonly metrics: Metrics;
	readonly logger: Logger;
	readonly limiter: TokenLimiter;
	readonly calibrator: Calibrator;
	/** Picks the requests whose stages are timed, and where their times go. */
	readonly stages: StageSampler;
	readonly stageSink: StageSink;
	/** Whether the replica is shutting down (new requests are refused). */
	readonly draining: boolean;
	authenticate(request: Request): Promise<Principal>;
	/** Whose windows and slots a request of `principal` to `model` spends. */
	spenderFor(model: ModelConfig, principal: Principal): Spender;
	/** An admitted request takes off: it is in flight until its settlement ends. */
	takeOff(flight: Flight): void;
	/** Tracks a flight's settlement until it has finished; then the flight has landed. */
	landing(flight: Flight, settlement: Promise<void>): Promise<void>;
}
