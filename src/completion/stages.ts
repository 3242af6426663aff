/** The pipeline's stages, in order. */
export const STAGES = ["read", "plan", "admit", "forward", "respond", "settle"] as const;
export type Stage = (typeof STAGES)[number];

/** Where sampled stage times go (the `gateway_stage_seconds` histogram). */
export type StageSink = (stage: Stage, seconds: number) => void;

/**
 * Times the synchronous work of each stage of one sampled request: `begin`
 * and `end` bracket the work, and time spent waiting for the network in
 * between is left out by ending before an await and beginning again after it.
 * A stage timed in several pieces is reported as their sum, once, at `flush`.
 */
export class StageClock {
	private readonly spent = new Float64Array(STAGES.length);
	private current = -1;
	private since = 0;

	begin(stage: Stage): void {
		this.current = STAGES.indexOf(stage);
		this.since = performance.now();
	}

	end(): void {
		if (this.current < 0) return;
		this.spent[this.current] = (this.spent[this.current] ?? 0) + performance.now() - this.since;
		this.current = -1;
	}

	/** Reports every stage that was timed; the clock is done after this. */
	flush(sink: StageSink): void {
		this.end();
		for (let i = 0; i < STAGES.length; i++) {
			const ms = this.spent[i] ?? 0;
			const stage = STAGES[i];
			if (ms > 0 && stage !== undefined) sink(stage, ms / 1000);
		}
	}
}

/**
 * Picks one request in `every` to time (0: none). Cheap enough to leave on:
 * unsampled requests cost one counter increment.
 */
export class StageSampler {
	private n = 0;

	constructor(private readonly every: number) {}

	next(): StageClock | undefined {
		if (this.every <= 0) return undefined;
		if (++this.n < this.every) return undefined;
		this.n = 0;
		return new StageClock();
	}
}
