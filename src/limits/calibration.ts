/**
 * Self-calibration arithmetic, shared by the memory store and (as Lua) by the
 * Redis store's calibrate script, so that every store learns alike.
 *
 * The learned value is the mean of ln(model server's prompt tokens / the
 * gateway's count): a running mean for the first WARMUP_SAMPLES samples, then an
 * exponentially weighted mean with weight ALPHA per sample. A batch of k samples
 * with mean m moves the mean as k single samples of value m would.
 */

/** Weight of one new sample once warmed up (about the last 20 samples count). */
export const ALPHA = 0.05;
/** Samples averaged plainly before the weighting takes over (1 / ALPHA). */
export const WARMUP_SAMPLES = 20;
/** Ratios are kept within [1/4, 4]. */
export const MAX_ABS_LOG_RATIO = Math.log(4);
/** Once learned, a sample further than this from the mean (in log terms, ×/÷ 1.65) is clipped to it. */
export const OUTLIER_LOG_DISTANCE = 0.5;
/** Samples needed before outliers are clipped. */
export const OUTLIER_MIN_SAMPLES = 5;

export interface CalibrationState {
	/** Mean of the log ratio (0: none learned). */
	readonly mean: number;
	/** Samples folded in so far. */
	readonly samples: number;
	/** An operator's pinned ratio, which wins over the learned one. */
	readonly pinned: number | undefined;
}

export const EMPTY_CALIBRATION: CalibrationState = { mean: 0, samples: 0, pinned: undefined };

const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, x));

/** One sample's log ratio, clamped to the allowed range and, once learned, clipped near the mean. */
export function sampleLogRatio(
	state: Pick<CalibrationState, "mean" | "samples">,
	actual: number,
	counted: number,
): number | undefined {
	if (!(actual > 0) || !(counted > 0)) return undefined;
	const x = clamp(Math.log(actual / counted), -MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO);
	if (state.samples < OUTLIER_MIN_SAMPLES) return x;
	return clamp(x, state.mean - OUTLIER_LOG_DISTANCE, state.mean + OUTLIER_LOG_DISTANCE);
}

/** Folds `count` samples whose log ratios sum to `sum` into the state. */
export function fold(state: CalibrationState, sum: number, count: number): CalibrationState {
	if (count <= 0) return state;
	const batchMean = sum / count;
	let mean = state.mean;
	// The part of the batch still in the warm-up is averaged plainly, the rest weighted.
	const plain = Math.min(count, Math.max(0, WARMUP_SAMPLES - state.samples));
	if (plain > 0) mean += (plain / (state.samples + plain)) * (batchMean - mean);
	const weighted = count - plain;
	if (weighted > 0) mean += (1 - (1 - ALPHA) ** weighted) * (batchMean - mean);
	return {
		mean: clamp(mean, -MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO),
		samples: state.samples + count,
		pinned: state.pinned,
	};
}

/** A learned state's ratio (1 when nothing is learned). */
export function learnedRatio(state: Pick<CalibrationState, "mean" | "samples">): number {
	return state.samples > 0 ? Math.exp(state.mean) : 1;
}

/**
 * Where the learned calibration lives: in the memory store for one process, in
 * Redis (one hash per model) for every replica alike.
 */
export interface CalibrationStore {
	/** Folds a batch of samples in and returns the shared state (count 0: only reads it). */
	fold(model: string, sum: number, count: number): Promise<CalibrationState>;
	/** Pins the ratio (undefined: unpins) and returns the state. */
	pin(model: string, ratio: number | undefined): Promise<CalibrationState>;
	/** Forgets what was learned and the pin. */
	reset(model: string): Promise<CalibrationState>;
}

/** The calibration of one process (memory store). */
export class MemoryCalibration implements CalibrationStore {
	private readonly states = new Map<string, CalibrationState>();

	async fold(model: string, sum: number, count: number): Promise<CalibrationState> {
		const next = fold(this.states.get(model) ?? EMPTY_CALIBRATION, sum, count);
		if (count > 0) this.states.set(model, next);
		return next;
	}

	async pin(model: string, ratio: number | undefined): Promise<CalibrationState> {
		const next = { ...(this.states.get(model) ?? EMPTY_CALIBRATION), pinned: ratio };
		this.states.set(model, next);
		return next;
	}

	async reset(model: string): Promise<CalibrationState> {
		this.states.delete(model);
		return EMPTY_CALIBRATION;
	}
}

/** The Redis hash of a model's calibration (the model's hash tag: one slot with its windows). */
export const calibrationKey = (model: string) => `trl:{${model}}:calibration`;

/** Parses the calibrate script's reply {mean, samples, pinned or ''}. */
export function calibrationFromReply(reply: unknown): CalibrationState {
	if (!Array.isArray(reply) || reply.length !== 3) {
		throw new Error(`calibrate: unexpected reply ${JSON.stringify(reply)}`);
	}
	const [mean, samples, pinned] = reply.map((v) => (typeof v === "string" ? v : String(v)));
	const m = Number(mean);
	const n = Number(samples);
	const p = pinned === "" || pinned === undefined ? undefined : Number(pinned);
	if (!Number.isFinite(m) || !Number.isFinite(n) || (p !== undefined && !Number.isFinite(p))) {
		throw new Error(`calibrate: unexpected reply ${JSON.stringify(reply)}`);
	}
	return { mean: m, samples: n, pinned: p };
}
