import { describe, expect, it } from "bun:test";
import { Deadlines, StoreTimeoutError } from "./deadlines.ts";

describe("Deadlines", () => {
	it("rejects a call that never answers with StoreTimeoutError", async () => {
		const d = new Deadlines(20);
		const never = new Promise<number>(() => {});
		const err = await d.run(never, "Redis").catch((e: unknown) => e);
		expect(err).toBeInstanceOf(StoreTimeoutError);
		expect(String(err)).toContain("within 20 ms");
	});

	it("passes answers and errors through when they come in time", async () => {
		const d = new Deadlines(1000);
		expect(await d.run(Promise.resolve(7), "Redis")).toBe(7);
		const err = await d
			.run(Promise.reject(new Error("NOSCRIPT")), "Redis")
			.catch((e: unknown) => e);
		expect(err).toBeInstanceOf(Error);
		expect((err as Error).message).toBe("NOSCRIPT");
	});

	it("ignores an answer that comes after the deadline", async () => {
		const d = new Deadlines(10);
		let answer: (v: string) => void = () => {};
		const late = new Promise<string>((resolve) => {
			answer = resolve;
		});
		const outcome = d.run(late, "Redis").then(
			(v) => `resolved ${v}`,
			(e: unknown) => (e instanceof StoreTimeoutError ? "timed out" : "other"),
		);
		await Bun.sleep(40);
		answer("too late");
		expect(await outcome).toBe("timed out");
	});

	it("keeps many concurrent calls apart", async () => {
		const d = new Deadlines(50);
		const results = await Promise.all(
			Array.from({ length: 100 }, (_, i) =>
				d
					.run(i % 2 === 0 ? Promise.resolve(i) : new Promise<number>(() => {}), "Redis")
					.catch(() => -1),
			),
		);
		expect(results.filter((r) => r === -1).length).toBe(50);
		expect(results.filter((r) => r >= 0).every((r) => r % 2 === 0)).toBe(true);
	});
});
