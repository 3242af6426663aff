import { CHAT_TEMPLATES, type ChatTemplateName } from "../config/schema.ts";
import {
	type CalibrationBatch,
	type CalibrationState,
	type CalibrationStore,
	calibrationStoreKey,
	EMPTY_CALIBRATION,
	fold,
	MAX_ABS_LOG_RATIO,
	sampleLogRatio,
} from "../limits/calibration.ts";
import { type PromptParts, rawPromptTokens, scaled } from "./estimate.ts";

/** Samples learned before the learned ratio is applied: a few requests are not a trend. */
export const MIN_SAMPLES = 10;

/** Where the applied ratio comes from. */
export type CalibrationSource = "pinned" | "config" | "learned" | "none";

/** One model's calibration as the API shows it. */
export interface CalibrationView {
	/** Whether the learned ratio is applied (the configuration's `calibration.enabled`). */
	readonly enabled: boolean;
	/** up: a learned calibration only raises estimates; both: it may lower them. */
	readonly direction: "up" | "both";
	/** The ratio applied to the counted prompt tokens now (1: none). */
	readonly ratio: number;
	readonly source: CalibrationSource;
	/** The chat template whose framing fits the model server's counts best (learned). */
	readonly template: ChatTemplateName;
	/** The model server's tokens per counted token of content, as learned with that template. */
	readonly learnedRatio: number;
	/** Requests learned from, across every replica. */
	readonly samples: number;
	/** An operator's pin (admin API), if any. */
	readonly pinned: number | null;
	/** The configuration's fixed ratio, if any. */
	readonly configRatio: number | null;
}

/** A batch on its way to the store, kept until it lands (then resent with the same number). */
interface Pending {
	count: number;
	meanSums: number[];
	residualSums: number[];
}

interface ModelCalibration {
	key: string;
	enabled: boolean;
	configRatio: number | undefined;
	direction: "up" | "both";
	/** The model's own template (the tie-break when candidates fit alike). */
	configured: number;
	/** The store's state as last read. */
	shared: CalibrationState;
	/** Samples not yet sent. */
	pending: Pending;
	/** A batch sent and not yet acknowledged. */
	sending: (Pending & { seq: number; epoch: number }) | undefined;
	/** What this replica sees: the shared state with its own unsent samples folded in. */
	local: CalibrationState;
	/** The candidate template in use (index in CHAT_TEMPLATES). */
	best: number;
	/** The ratio last told to `onRatio`. */
	reported: number | undefined;
}

/** What the calibrator needs of a model's configuration. */
export interface CalibratedModel {
	readonly id: string;
	readonly calibration: {
		readonly enabled: boolean;
		readonly ratio: number | undefined;
		readonly direction: "up" | "both";
	};
	/** The model's tokenizer identity: a tokenizer change starts a new calibration. */
	readonly tokenizer: { readonly key: string };
}

export interface CalibratorOptions {
	/** How often samples are sent and the shared state read back (default 500 ms). */
	readonly syncMs?: number;
	/** Told whenever a model's applied ratio may have changed (and once per model at configure). */
	readonly onRatio?: (model: string, ratio: number) => void;
	/** Told when a model is no longer configured. */
	readonly onRemove?: (model: string) => void;
	/** Told when the store could not be reached (the local state is kept). */
	readonly onSyncError?: (model: string, err: unknown) => void;
}

const emptyPending = (k: number): Pending => ({
	count: 0,
	meanSums: Array(k).fill(0),
	residualSums: Array(k).fill(0),
});

const K = CHAT_TEMPLATES.length;

/** A short, stable tag of a tokenizer key and template (FNV-1a, hex). */
function tag(text: string): string {
	let h = 0x811c9dc5;
	for (let i = 0; i < text.length; i++) {
		h ^= text.charCodeAt(i);
		h = Math.imul(h, 0x01000193);
	}
	return (h >>> 0).toString(16).padStart(8, "0");
}

/**
 * Self-calibration of prompt estimates. For every model it learns, from the
 * model server's own `prompt_tokens`, which chat template's framing fits best
 * and how many of the server's tokens one counted token of content is (a
 * robust running mean of the log ratio, outliers clipped), and applies that to
 * pre-flight estimates. Samples are applied here at once and sent to the store
 * in batches; the store folds every replica's batches into one state that all
 * read back, so replicas share what any of them learned.
 */
export class Calibrator {
	private readonly models = new Map<string, ModelCalibration>();
	private readonly sender = crypto.randomUUID();
	private seq = 0;
	private timer: ReturnType<typeof setInterval> | undefined;
	private syncing: Promise<void> | undefined;

	constructor(
		private readonly store: CalibrationStore,
		private readonly options: CalibratorOptions = {},
	) {}

	/**
	 * Takes the models of a configuration (boot and reload). What was learned is
	 * kept, unless the model's tokenizer changed: then it learns anew.
	 */
	configure(models: Iterable<CalibratedModel & { readonly template?: ChatTemplateName }>): void {
		const seen = new Set<string>();
		for (const m of models) {
			seen.add(m.id);
			const configured = Math.max(0, CHAT_TEMPLATES.indexOf(m.template ?? "openai"));
			const key = calibrationStoreKey(
				m.id,
				tag(`${m.tokenizer.key}|${CHAT_TEMPLATES[configured]}`),
			);
			let c = this.models.get(m.id);
			if (c === undefined || c.key !== key) {
				c = {
					key,
					enabled: true,
					configRatio: undefined,
					direction: "up",
					configured,
					shared: EMPTY_CALIBRATION,
					pending: emptyPending(K),
					sending: undefined,
					local: EMPTY_CALIBRATION,
					best: configured,
					reported: undefined,
				};
				this.models.set(m.id, c);
			}
			c.enabled = m.calibration.enabled;
			c.configRatio = m.calibration.ratio;
			c.direction = m.calibration.direction;
			c.configured = configured;
			this.choose(c);
			c.reported = this.ratioOf(c);
			this.options.onRatio?.(m.id, c.reported);
		}
		for (const id of [...this.models.keys()]) {
			if (!seen.has(id)) {
				this.models.delete(id);
				this.options.onRemove?.(id);
			}
		}
	}

	/**
	 * The prompt's tokens as admitted, and the ratio applied to its counted part:
	 * a pin or a configured ratio scales the whole count; a learned calibration
	 * takes the best-fitting template's framing plus the content times its ratio
	 * (with direction up, never below the plain count).
	 */
	apply(model: string, parts: PromptParts): { tokens: number; ratio: number } {
		const raw = rawPromptTokens(parts);
		const c = this.models.get(model);
		if (c === undefined) return { tokens: raw, ratio: 1 };
		const fixed = c.shared.pinned ?? c.configRatio;
		if (fixed !== undefined) {
			return {
				tokens: parts.exact + scaled(raw - parts.exact, fixed),
				ratio: fixed,
			};
		}
		if (!c.enabled || c.local.samples < MIN_SAMPLES) return { tokens: raw, ratio: 1 };
		const ratio = Math.exp(c.local.means[c.best] ?? 0);
		const learned = parts.exact + (parts.framings[c.best] ?? 0) + scaled(parts.content, ratio);
		// Direction up: never below the plain count, and then no ratio either (it scales
		// the count of generated text when the server reports none).
		if (c.direction === "up" && learned <= raw) return { tokens: raw, ratio: 1 };
		return { tokens: learned, ratio };
	}

	/**
	 * One completed request: its prompt's parts as counted here, and the model
	 * server's `prompt_tokens` for it.
	 */
	observe(model: string, parts: PromptParts, actual: number): void {
		const c = this.models.get(model);
		if (c === undefined || !(parts.content > 0) || !(actual > 0)) return;
		const local = c.local;
		const counted = actual - parts.exact;
		if (!(counted > 0)) return;
		const xs: number[] = [];
		for (let i = 0; i < K; i++) {
			const framing = parts.framings[i] ?? 0;
			const mean = local.means[i] ?? 0;
			const x = sampleLogRatio(mean, local.samples, Math.max(1, counted - framing), parts.content);
			if (x === undefined) return;
			xs.push(x);
		}
		for (let i = 0; i < K; i++) {
			const framing = parts.framings[i] ?? 0;
			const predicted =
				parts.exact +
				framing +
				parts.content * (local.samples > 0 ? Math.exp(local.means[i] ?? 0) : 1);
			const residual = Math.min(MAX_ABS_LOG_RATIO, Math.abs(Math.log(actual / predicted)));
			c.pending.meanSums[i] = (c.pending.meanSums[i] ?? 0) + (xs[i] ?? 0);
			c.pending.residualSums[i] = (c.pending.residualSums[i] ?? 0) + residual;
		}
		c.pending.count++;
		this.refreshLocal(model, c);
	}

	/** Sends every model's unsent samples and reads the shared state back. */
	sync(): Promise<void> {
		if (this.syncing === undefined) {
			this.syncing = Promise.all([...this.models.keys()].map((id) => this.syncModel(id)))
				.then(() => undefined)
				.finally(() => {
					this.syncing = undefined;
				});
		}
		return this.syncing;
	}

	private async syncModel(model: string): Promise<void> {
		const c = this.models.get(model);
		if (c === undefined) return;
		if (c.sending === undefined && c.pending.count > 0) {
			c.sending = { ...c.pending, seq: ++this.seq, epoch: c.shared.epoch };
			c.pending = emptyPending(K);
		}
		const sending = c.sending;
		try {
			let state: CalibrationState;
			if (sending === undefined) state = await this.store.read(c.key);
			else {
				const batch: CalibrationBatch = { ...sending, sender: this.sender };
				state = await this.store.fold(c.key, batch);
				// Landed (or landed before, on a retry): not sent again.
				if (c.sending === sending) c.sending = undefined;
			}
			if (this.models.get(model) === c) this.adopt(model, c, state);
		} catch (err) {
			// The batch is kept and sent again, with the same number, at the next sync.
			this.options.onSyncError?.(model, err);
		}
	}

	/** Pins the model's ratio on every replica (undefined: removes the pin). */
	async pin(model: string, ratio: number | undefined): Promise<CalibrationView | undefined> {
		const c = this.models.get(model);
		if (c === undefined) return undefined;
		this.adopt(model, c, await this.store.pin(c.key, ratio));
		return this.view(model);
	}

	/** Forgets what every replica learned for the model, and its pin. */
	async reset(model: string): Promise<CalibrationView | undefined> {
		const c = this.models.get(model);
		if (c === undefined) return undefined;
		this.adopt(model, c, await this.store.reset(c.key));
		return this.view(model);
	}

	view(model: string): CalibrationView | undefined {
		const c = this.models.get(model);
		if (c === undefined) return undefined;
		const fixed = c.shared.pinned ?? c.configRatio;
		const learning = c.enabled && c.local.samples >= MIN_SAMPLES;
		return {
			enabled: c.enabled,
			direction: c.direction,
			ratio: this.ratioOf(c),
			source:
				c.shared.pinned !== undefined
					? "pinned"
					: fixed !== undefined
						? "config"
						: learning
							? "learned"
							: "none",
			template: CHAT_TEMPLATES[c.best] ?? "openai",
			learnedRatio: c.local.samples > 0 ? Math.exp(c.local.means[c.best] ?? 0) : 1,
			samples: c.local.samples,
			pinned: c.shared.pinned ?? null,
			configRatio: c.configRatio ?? null,
		};
	}

	/** Syncs every `syncMs` (default 500 ms) until stopped. */
	start(): void {
		if (this.timer !== undefined) return;
		this.timer = setInterval(() => void this.sync(), this.options.syncMs ?? 500);
		this.timer.unref();
	}

	/** Stops the timer and sends what is left. */
	async stop(): Promise<void> {
		if (this.timer !== undefined) clearInterval(this.timer);
		this.timer = undefined;
		await this.sync();
	}

	private ratioOf(c: ModelCalibration): number {
		const fixed = c.shared.pinned ?? c.configRatio;
		if (fixed !== undefined) return fixed;
		if (!c.enabled || c.local.samples < MIN_SAMPLES) return 1;
		return Math.exp(c.local.means[c.best] ?? 0);
	}

	private adopt(model: string, c: ModelCalibration, shared: CalibrationState): void {
		if (shared.epoch !== c.shared.epoch) {
			// A reset (here or on another replica): what was learned before it is dropped.
			c.pending = emptyPending(K);
			c.sending = undefined;
		}
		c.shared = shared;
		this.refreshLocal(model, c);
	}

	/** The shared state with this replica's own unsent samples folded in. */
	private refreshLocal(model: string, c: ModelCalibration): void {
		let local = c.shared;
		for (const p of [c.sending, c.pending]) {
			if (p === undefined || p.count === 0) continue;
			local = fold(local, { ...p, sender: this.sender, seq: 0, epoch: local.epoch });
		}
		c.local = local;
		this.choose(c);
		const ratio = this.ratioOf(c);
		if (ratio !== c.reported) {
			c.reported = ratio;
			this.options.onRatio?.(model, ratio);
		}
	}

	/** The candidate template with the smallest error; the model's own on a tie. */
	private choose(c: ModelCalibration): void {
		let best = c.configured;
		const residuals = c.local.residuals;
		for (let i = 0; i < K; i++) {
			if ((residuals[i] ?? Number.POSITIVE_INFINITY) < (residuals[best] ?? 0) - 1e-12) best = i;
		}
		c.best = c.local.samples > 0 ? best : c.configured;
	}
}
