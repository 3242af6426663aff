import { describe, expect, it } from "bun:test";
import fc from "fast-check";
import {
	ALPHA,
	type CalibrationState,
	EMPTY_CALIBRATION,
	fold,
	learnedRatio,
	MAX_ABS_LOG_RATIO,
	MemoryCalibration,
	OUTLIER_LOG_DISTANCE,
	sampleLogRatio,
	WARMUP_SAMPLES,
} from "./calibration.ts";

describe("calibration arithmetic", () => {
	it("averages the first samples plainly", () => {
		let s = EMPTY_CALIBRATION;
		const xs = [0.1, 0.3, 0.2, 0.25];
		for (const x of xs) s = fold(s, x, 1);
		expect(s.samples).toBe(4);
		expect(s.mean).toBeCloseTo(0.2125, 12);
	});

	it("weighs each sample by ALPHA once warmed up", () => {
		let s = EMPTY_CALIBRATION;
		for (let i = 0; i < WARMUP_SAMPLES; i++) s = fold(s, 0.2, 1);
		expect(s.mean).toBeCloseTo(0.2, 12);
		s = fold(s, 0.7, 1);
		expect(s.mean).toBeCloseTo(0.2 + ALPHA * 0.5, 12);
	});

	it("moves a batch of k samples as k single samples of its mean would", () => {
		fc.assert(
			fc.property(
				fc.double({ min: -1, max: 1, noNaN: true }),
				fc.integer({ min: 0, max: 500 }),
				fc.double({ min: -1, max: 1, noNaN: true }),
				fc.integer({ min: 1, max: 50 }),
				(mean, samples, x, k) => {
					const start: CalibrationState = { mean, samples, pinned: undefined };
					let one = start;
					for (let i = 0; i < k; i++) one = fold(one, x, 1);
					const batch = fold(start, x * k, k);
					expect(batch.samples).toBe(samples + k);
					expect(batch.mean).toBeCloseTo(one.mean, 9);
				},
			),
		);
	});

	it("keeps ratios within 1/4 and 4, and clips an outlier to the learned mean's neighbourhood", () => {
		expect(sampleLogRatio(EMPTY_CALIBRATION, 1000, 1)).toBe(MAX_ABS_LOG_RATIO);
		expect(sampleLogRatio(EMPTY_CALIBRATION, 1, 1000)).toBe(-MAX_ABS_LOG_RATIO);
		const learned = { mean: Math.log(1.2), samples: 50 };
		expect(sampleLogRatio(learned, 300, 100)).toBeCloseTo(Math.log(1.2) + OUTLIER_LOG_DISTANCE, 12);
		expect(sampleLogRatio(learned, 125, 100)).toBeCloseTo(Math.log(1.25), 12);
		expect(sampleLogRatio(learned, 0, 100)).toBeUndefined();
		expect(sampleLogRatio(learned, 10, 0)).toBeUndefined();
	});

	it("learns a constant ratio exactly, and a noisy one to within a few percent", () => {
		let s = EMPTY_CALIBRATION;
		for (let i = 0; i < 50; i++) s = fold(s, sampleLogRatio(s, 123, 100) ?? 0, 1);
		expect(learnedRatio(s)).toBeCloseTo(1.23, 9);
		let noisy = EMPTY_CALIBRATION;
		let seed = 1;
		for (let i = 0; i < 200; i++) {
			seed = (seed * 1103515245 + 12345) % 2 ** 31;
			const actual = Math.round(130 * (0.9 + (0.2 * seed) / 2 ** 31));
			noisy = fold(noisy, sampleLogRatio(noisy, actual, 100) ?? 0, 1);
		}
		expect(Math.abs(learnedRatio(noisy) / 1.3 - 1)).toBeLessThan(0.05);
	});

	it("the memory store keeps each model's state, its pin, and forgets both on reset", async () => {
		const m = new MemoryCalibration();
		expect(await m.fold("a", 0, 0)).toEqual(EMPTY_CALIBRATION);
		await m.fold("a", Math.log(1.5) * 3, 3);
		expect(learnedRatio(await m.fold("a", 0, 0))).toBeCloseTo(1.5, 12);
		expect((await m.pin("a", 2)).pinned).toBe(2);
		expect((await m.fold("b", 0, 0)).samples).toBe(0);
		expect(await m.reset("a")).toEqual(EMPTY_CALIBRATION);
		expect(await m.fold("a", 0, 0)).toEqual(EMPTY_CALIBRATION);
	});
});
