/**
 * Self-calibration state and arithmetic, shared by the memory store and (as
 * Lua, src/limits/lua/calibrate.lua) by the Redis store, so that every store
 * learns alike.
 *
 * A model's state holds, for each of K candidates (the chat templates the
 * prompt could be framed with), two running means: of the log ratio learned
 * from each request, and of the absolute log error that candidate would have
 * made. Each is a plain mean over the first WARMUP_SAMPLES samples, then an
 * exponentially weighted mean with weight ALPHA per sample; a batch of k
 * samples moves a mean as k single samples of the batch's mean would.
 *
 * Replicas send batches tagged with their sender id and a sequence number, so
 * a batch retried after a timeout is applied once; and with the epoch they
 * learned in, so samples taken before a reset are dropped.
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
/** How long a sender's last sequence number is kept (a retried batch comes sooner). */
export const SENDER_TTL_MS = 600_000;

export interface CalibrationState {
	/** Per candidate: mean of the log ratio. */
	readonly means: readonly number[];
	/** Per candidate: mean absolute log error of its predictions. */
	readonly residuals: readonly number[];
	/** Samples folded in so far. */
	readonly samples: number;
	/** An operator's pinned ratio, which wins over the learned one. */
	readonly pinned: number | undefined;
	/** Bumped by every reset: batches learned in an older epoch are dropped. */
	readonly epoch: number;
}

export const EMPTY_CALIBRATION: CalibrationState = {
	means: [],
	residuals: [],
	samples: 0,
	pinned: undefined,
	epoch: 0,
};

/** Samples one replica learned since its last sync. */
export interface CalibrationBatch {
	/** The replica's id and this batch's number: a batch is applied once. */
	readonly sender: string;
	readonly seq: number;
	/** The epoch the samples were learned in. */
	readonly epoch: number;
	readonly count: number;
	/** Per candidate: sums over the batch's samples. */
	readonly meanSums: readonly number[];
	readonly residualSums: readonly number[];
}

const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, x));

/** One sample's log ratio, clamped to the allowed range and, once learned, clipped near the mean. */
export function sampleLogRatio(
	mean: number,
	samples: number,
	actual: number,
	counted: number,
): number | undefined {
	if (!(actual > 0) || !(counted > 0)) return undefined;
	const x = clamp(Math.log(actual / counted), -MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO);
	if (samples < OUTLIER_MIN_SAMPLES) return x;
	return clamp(x, mean - OUTLIER_LOG_DISTANCE, mean + OUTLIER_LOG_DISTANCE);
}

/** Moves `mean` (over `samples` so far) by a batch of `count` samples averaging `batchMean`. */
export function foldMean(mean: number, samples: number, batchMean: number, count: number): number {
	let m = mean;
	// The part of the batch still in the warm-up is averaged plainly, the rest weighted.
	const plain = Math.min(count, Math.max(0, WARMUP_SAMPLES - samples));
	if (plain > 0) m += (plain / (samples + plain)) * (batchMean - m);
	const weighted = count - plain;
	if (weighted > 0) m += (1 - (1 - ALPHA) ** weighted) * (batchMean - m);
	return m;
}

/** Folds a batch into the state, unless it belongs to another epoch. */
export function fold(state: CalibrationState, batch: CalibrationBatch): CalibrationState {
	if (batch.count <= 0 || batch.epoch !== state.epoch) return state;
	const k = batch.meanSums.length;
	const means: number[] = [];
	const residuals: number[] = [];
	for (let i = 0; i < k; i++) {
		const m = foldMean(
			state.means[i] ?? 0,
			state.samples,
			(batch.meanSums[i] ?? 0) / batch.count,
			batch.count,
		);
		means.push(clamp(m, -MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO));
		residuals.push(
			foldMean(
				state.residuals[i] ?? 0,
				state.samples,
				(batch.residualSums[i] ?? 0) / batch.count,
				batch.count,
			),
		);
	}
	return { ...state, means, residuals, samples: state.samples + batch.count };
}

/**
 * Where the learned calibration lives: in the memory store for one process, in
 * Redis (one hash per model and tokenizer) for every replica alike. `key` names
 * the model and its tokenizer.
 */
export interface CalibrationStore {
	/** Folds a batch in (once per sender and sequence number) and returns the shared state. */
	fold(key: string, batch: CalibrationBatch): Promise<CalibrationState>;
	/** Reads the shared state. */
	read(key: string): Promise<CalibrationState>;
	/** Pins the ratio (undefined: unpins) and returns the state. */
	pin(key: string, ratio: number | undefined): Promise<CalibrationState>;
	/** Forgets what was learned and the pin, and starts a new epoch. */
	reset(key: string): Promise<CalibrationState>;
}

/** The calibration of one process (memory store). */
export class MemoryCalibration implements CalibrationStore {
	private readonly states = new Map<string, CalibrationState>();
	/** key → sender → last applied sequence number. */
	private readonly applied = new Map<string, Map<string, number>>();

	async fold(key: string, batch: CalibrationBatch): Promise<CalibrationState> {
		const state = this.states.get(key) ?? EMPTY_CALIBRATION;
		const senders = this.applied.get(key) ?? new Map<string, number>();
		if ((senders.get(batch.sender) ?? 0) >= batch.seq) return state;
		senders.set(batch.sender, batch.seq);
		this.applied.set(key, senders);
		const next = fold(state, batch);
		this.states.set(key, next);
		return next;
	}

	async read(key: string): Promise<CalibrationState> {
		return this.states.get(key) ?? EMPTY_CALIBRATION;
	}

	async pin(key: string, ratio: number | undefined): Promise<CalibrationState> {
		const next = { ...(this.states.get(key) ?? EMPTY_CALIBRATION), pinned: ratio };
		this.states.set(key, next);
		return next;
	}

	async reset(key: string): Promise<CalibrationState> {
		const next = { ...EMPTY_CALIBRATION, epoch: (this.states.get(key)?.epoch ?? 0) + 1 };
		this.states.set(key, next);
		return next;
	}
}

/**
 * A calibration's store key: the model (its hash tag, one cluster slot with the
 * model's windows) and a tag of its tokenizer, so that a tokenizer change, or
 * replicas with different tokenizers during a rollout, learn apart.
 */
export const calibrationStoreKey = (model: string, tokenizerTag: string) =>
	`{${model}}:${tokenizerTag}`;

/** The Redis hash of a calibration. */
export const calibrationKey = (key: string) => `trl:${key}:calibration`;

/** The last batch number a replica's batches were applied up to (expires: retries come soon). */
export const calibrationSenderKey = (key: string, sender: string) =>
	`trl:${key}:calibration:s:${sender}`;

/** Parses the calibrate script's reply {samples, pinned or '', epoch, k, means…, residuals…}. */
export function calibrationFromReply(reply: unknown): CalibrationState {
	if (!Array.isArray(reply) || reply.length < 4) {
		throw new Error(`calibrate: unexpected reply ${JSON.stringify(reply)}`);
	}
	const values = reply.map((v) => (typeof v === "string" ? v : String(v)));
	const [samples, pinned, epoch, k] = values;
	const n = Number(samples);
	const e = Number(epoch);
	const count = Number(k);
	const p = pinned === "" || pinned === undefined ? undefined : Number(pinned);
	const means = values.slice(4, 4 + count).map(Number);
	const residuals = values.slice(4 + count, 4 + 2 * count).map(Number);
	if (
		!Number.isFinite(n) ||
		!Number.isFinite(e) ||
		!Number.isInteger(count) ||
		(p !== undefined && !Number.isFinite(p)) ||
		means.length !== count ||
		residuals.length !== count ||
		[...means, ...residuals].some((x) => !Number.isFinite(x))
	) {
		throw new Error(`calibrate: unexpected reply ${JSON.stringify(reply)}`);
	}
	return { means, residuals, samples: n, pinned: p, epoch: e };
}
