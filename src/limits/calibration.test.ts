import { describe, expect, it } from "bun:test";
import fc from "fast-check";
import {
	ALPHA,
	type CalibrationBatch,
	type CalibrationState,
	EMPTY_CALIBRATION,
	fold,
	foldMean,
	MAX_ABS_LOG_RATIO,
	MemoryCalibration,
	OUTLIER_LOG_DISTANCE,
	sampleLogRatio,
	WARMUP_SAMPLES,
} from "./calibration.ts";

let seq = 0;
const batch = (
	means: number[],
	count = 1,
	epoch = 0,
	residuals: number[] = means.map(() => 0),
): CalibrationBatch => ({
	sender: "t",
	seq: ++seq,
	epoch,
	count,
	meanSums: means.map((m) => m * count),
	residualSums: residuals.map((r) => r * count),
});

describe("calibration arithmetic", () => {
	it("averages the first samples plainly, per candidate", () => {
		let s = EMPTY_CALIBRATION;
		for (const x of [0.1, 0.3, 0.2, 0.25]) s = fold(s, batch([x, -x]));
		expect(s.samples).toBe(4);
		expect(s.means[0]).toBeCloseTo(0.2125, 12);
		expect(s.means[1]).toBeCloseTo(-0.2125, 12);
	});

	it("weighs each sample by ALPHA once warmed up", () => {
		let s = EMPTY_CALIBRATION;
		for (let i = 0; i < WARMUP_SAMPLES; i++) s = fold(s, batch([0.2]));
		expect(s.means[0]).toBeCloseTo(0.2, 12);
		s = fold(s, batch([0.7]));
		expect(s.means[0]).toBeCloseTo(0.2 + ALPHA * 0.5, 12);
	});

	it("moves a batch of k samples as k single samples of its mean would, across the warm-up too", () => {
		fc.assert(
			fc.property(
				fc.double({ min: -1, max: 1, noNaN: true }),
				fc.integer({ min: 0, max: 500 }),
				fc.double({ min: -1, max: 1, noNaN: true }),
				fc.integer({ min: 1, max: 50 }),
				(mean, samples, x, k) => {
					let one = mean;
					for (let i = 0; i < k; i++) one = foldMean(one, samples + i, x, 1);
					expect(foldMean(mean, samples, x, k)).toBeCloseTo(one, 9);
				},
			),
		);
	});

	it("drops a batch learned in another epoch", () => {
		const s: CalibrationState = { ...EMPTY_CALIBRATION, epoch: 2 };
		expect(fold(s, batch([0.5], 3, 1))).toBe(s);
		expect(fold(s, batch([0.5], 3, 2)).samples).toBe(3);
	});

	it("keeps ratios within 1/4 and 4, and clips an outlier to the learned mean's neighbourhood", () => {
		expect(sampleLogRatio(0, 0, 1000, 1)).toBe(MAX_ABS_LOG_RATIO);
		expect(sampleLogRatio(0, 0, 1, 1000)).toBe(-MAX_ABS_LOG_RATIO);
		const mean = Math.log(1.2);
		expect(sampleLogRatio(mean, 50, 300, 100)).toBeCloseTo(mean + OUTLIER_LOG_DISTANCE, 12);
		expect(sampleLogRatio(mean, 50, 125, 100)).toBeCloseTo(Math.log(1.25), 12);
		expect(sampleLogRatio(mean, 50, 0, 100)).toBeUndefined();
		expect(sampleLogRatio(mean, 50, 10, 0)).toBeUndefined();
	});

	it("the memory store applies a sender's batch once, keeps the pin, and starts a new epoch on reset", async () => {
		const m = new MemoryCalibration();
		expect(await m.read("a")).toEqual(EMPTY_CALIBRATION);
		const b = batch([Math.log(1.5)], 3);
		await m.fold("a", b);
		// A retry of the same batch (a timed-out call that did land) is not applied again.
		expect((await m.fold("a", b)).samples).toBe(3);
		expect(Math.exp((await m.read("a")).means[0] ?? 0)).toBeCloseTo(1.5, 12);
		expect((await m.pin("a", 2)).pinned).toBe(2);
		expect((await m.read("b")).samples).toBe(0);
		const reset = await m.reset("a");
		expect(reset).toEqual({ ...EMPTY_CALIBRATION, epoch: 1 });
		// Samples learned before the reset are dropped.
		expect((await m.fold("a", batch([0.4], 5, 0))).samples).toBe(0);
		expect((await m.fold("a", batch([0.4], 5, 1))).samples).toBe(5);
	});
});
