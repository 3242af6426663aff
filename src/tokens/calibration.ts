import {
	type CalibrationState,
	type CalibrationStore,
	EMPTY_CALIBRATION,
	fold,
	learnedRatio,
	sampleLogRatio,
} from "../limits/calibration.ts";

/** Samples learned before the learned ratio is applied: a few requests are not a trend. */
export const MIN_SAMPLES = 10;

/** Where the applied ratio comes from. */
export type CalibrationSource = "pinned" | "config" | "learned" | "none";

/** One model's calibration as the API shows it. */
export interface CalibrationView {
	/** Whether the learned ratio is applied (the configuration's `calibration.enabled`). */
	readonly enabled: boolean;
	/** up: only a learned ratio above 1 is applied; both: any. */
	readonly direction: "up" | "both";
	/** The ratio applied to the counted part of every prompt estimate now. */
	readonly ratio: number;
	readonly source: CalibrationSource;
	/** What was learned from the model server's counts (1 before any sample). */
	readonly learnedRatio: number;
	/** Samples learned from, across every replica. */
	readonly samples: number;
	/** An operator's pin (admin API), if any. */
	readonly pinned: number | null;
	/** The configuration's fixed ratio, if any. */
	readonly configRatio: number | null;
}

interface ModelCalibration {
	enabled: boolean;
	configRatio: number | undefined;
	/** up: a learned ratio below 1 is not applied. */
	direction: "up" | "both";
	/** The store's state as last read. */
	shared: CalibrationState;
	/** Samples not yet sent to the store: sum of log ratios, count. */
	pendingSum: number;
	pendingCount: number;
	/** Samples on their way to the store. */
	sendingSum: number;
	sendingCount: number;
	/** What this replica sees: the shared state with its own unsent samples folded in. */
	local: CalibrationState;
	applied: number;
	source: CalibrationSource;
}

/** What the calibrator needs of a model's configuration. */
export interface CalibratedModel {
	readonly id: string;
	readonly calibration: {
		readonly enabled: boolean;
		readonly ratio: number | undefined;
		readonly direction: "up" | "both";
	};
}

export interface CalibratorOptions {
	/** How often samples are sent and the shared state read back (default 1 s). */
	readonly syncMs?: number;
	/** Told whenever a model's applied ratio may have changed. */
	readonly onRatio?: (model: string, ratio: number) => void;
	/** Told when the store could not be reached (the local state is kept). */
	readonly onSyncError?: (model: string, err: unknown) => void;
}

/**
 * Self-calibration of prompt estimates: learns, per model, the ratio of the
 * model server's own `prompt_tokens` to the gateway's count (a robust running
 * mean of the log ratio, outliers clipped) and applies it to pre-flight
 * estimates. Samples are applied here at once and sent to the store in batches;
 * the store folds every replica's batches into one state that all of them read
 * back, so replicas share what any of them learned.
 */
export class Calibrator {
	private readonly models = new Map<string, ModelCalibration>();
	private timer: ReturnType<typeof setInterval> | undefined;
	private syncing: Promise<void> | undefined;

	constructor(
		private readonly store: CalibrationStore,
		private readonly options: CalibratorOptions = {},
	) {}

	/** Takes the models of a configuration (boot and reload); what was learned is kept. */
	configure(models: Iterable<CalibratedModel>): void {
		const seen = new Set<string>();
		for (const m of models) {
			seen.add(m.id);
			const c = this.models.get(m.id) ?? {
				enabled: true,
				configRatio: undefined,
				direction: "up" as const,
				shared: EMPTY_CALIBRATION,
				pendingSum: 0,
				pendingCount: 0,
				sendingSum: 0,
				sendingCount: 0,
				local: EMPTY_CALIBRATION,
				applied: 1,
				source: "none" as CalibrationSource,
			};
			c.enabled = m.calibration.enabled;
			c.configRatio = m.calibration.ratio;
			c.direction = m.calibration.direction;
			this.models.set(m.id, c);
			this.refresh(m.id, c);
		}
		for (const id of [...this.models.keys()]) if (!seen.has(id)) this.models.delete(id);
	}

	/** The ratio to apply to the model's counted prompt tokens. */
	ratio(model: string): number {
		return this.models.get(model)?.applied ?? 1;
	}

	/**
	 * One completed request: the gateway counted `counted` prompt tokens, the
	 * model server reported `actual` for the same text.
	 */
	observe(model: string, counted: number, actual: number): void {
		const c = this.models.get(model);
		if (c === undefined) return;
		const x = sampleLogRatio(c.local, actual, counted);
		if (x === undefined) return;
		c.pendingSum += x;
		c.pendingCount++;
		c.local = fold(c.local, x, 1);
		this.refresh(model, c);
	}

	/** Sends every model's unsent samples and reads the shared state back. */
	sync(): Promise<void> {
		if (this.syncing === undefined) {
			this.syncing = this.syncAll().finally(() => {
				this.syncing = undefined;
			});
		}
		return this.syncing;
	}

	private async syncAll(): Promise<void> {
		await Promise.all([...this.models.keys()].map((id) => this.syncModel(id)));
	}

	private async syncModel(model: string): Promise<void> {
		const c = this.models.get(model);
		if (c === undefined) return;
		c.sendingSum = c.pendingSum;
		c.sendingCount = c.pendingCount;
		c.pendingSum = 0;
		c.pendingCount = 0;
		try {
			const shared = await this.store.fold(model, c.sendingSum, c.sendingCount);
			c.sendingSum = 0;
			c.sendingCount = 0;
			this.adopt(model, c, shared);
		} catch (err) {
			// Kept for the next sync.
			c.pendingSum += c.sendingSum;
			c.pendingCount += c.sendingCount;
			c.sendingSum = 0;
			c.sendingCount = 0;
			this.options.onSyncError?.(model, err);
		}
	}

	/** Pins the model's ratio on every replica (undefined: removes the pin). */
	async pin(model: string, ratio: number | undefined): Promise<CalibrationView | undefined> {
		const c = this.models.get(model);
		if (c === undefined) return undefined;
		this.adopt(model, c, await this.store.pin(model, ratio));
		return this.view(model);
	}

	/** Forgets what every replica learned for the model, and its pin. */
	async reset(model: string): Promise<CalibrationView | undefined> {
		const c = this.models.get(model);
		if (c === undefined) return undefined;
		c.pendingSum = 0;
		c.pendingCount = 0;
		this.adopt(model, c, await this.store.reset(model));
		return this.view(model);
	}

	view(model: string): CalibrationView | undefined {
		const c = this.models.get(model);
		if (c === undefined) return undefined;
		return {
			enabled: c.enabled,
			direction: c.direction,
			ratio: c.applied,
			source: c.source,
			learnedRatio: learnedRatio(c.local),
			samples: c.local.samples,
			pinned: c.shared.pinned ?? null,
			configRatio: c.configRatio ?? null,
		};
	}

	/** Syncs every `syncMs` (default 1 s) until stopped. */
	start(): void {
		if (this.timer !== undefined) return;
		this.timer = setInterval(() => void this.sync(), this.options.syncMs ?? 1000);
		this.timer.unref();
	}

	/** Stops the timer and sends what is left. */
	async stop(): Promise<void> {
		if (this.timer !== undefined) clearInterval(this.timer);
		this.timer = undefined;
		await this.sync();
	}

	private adopt(model: string, c: ModelCalibration, shared: CalibrationState): void {
		c.shared = shared;
		// Samples taken while the batch was on its way are still this replica's own.
		c.local = fold(shared, c.pendingSum + c.sendingSum, c.pendingCount + c.sendingCount);
		this.refresh(model, c);
	}

	private refresh(model: string, c: ModelCalibration): void {
		const before = c.applied;
		if (c.shared.pinned !== undefined) {
			c.applied = c.shared.pinned;
			c.source = "pinned";
		} else if (c.configRatio !== undefined) {
			c.applied = c.configRatio;
			c.source = "config";
		} else if (c.enabled && c.local.samples >= MIN_SAMPLES) {
			const learned = learnedRatio(c.local);
			c.applied = c.direction === "up" ? Math.max(1, learned) : learned;
			c.source = "learned";
		} else {
			c.applied = 1;
			c.source = "none";
		}
		if (c.applied !== before || c.source === "learned") this.options.onRatio?.(model, c.applied);
	}
}
