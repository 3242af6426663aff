import { describe, expect, it } from "bun:test";
import { GenerationalCache } from "./cache.ts";

describe("GenerationalCache", () => {
	it("answers what it was given", () => {
		const c = new GenerationalCache<string, number>(10);
		c.set("a", 1);
		c.set("b", 2);
		expect(c.get("a")).toBe(1);
		expect(c.get("b")).toBe(2);
		expect(c.get("c")).toBeUndefined();
		expect(c.has("a")).toBe(true);
		expect(c.has("c")).toBe(false);
	});

	it("never holds more than its bound under a stream of new keys", () => {
		const c = new GenerationalCache<number, number>(100);
		for (let i = 0; i < 10_000; i++) {
			c.set(i, i);
			expect(c.size).toBeLessThanOrEqual(100);
		}
		// The newest keys are still there, the oldest are gone.
		expect(c.get(9_999)).toBe(9_999);
		expect(c.get(0)).toBeUndefined();
	});

	it("keeps an entry that is used while newer ones come and go", () => {
		const c = new GenerationalCache<string, number>(10);
		c.set("hot", 42);
		for (let i = 0; i < 1_000; i++) {
			c.set(`cold-${i}`, i);
			expect(c.get("hot")).toBe(42);
		}
	});

	it("forgets an entry that is not used once two generations have passed", () => {
		const c = new GenerationalCache<string, number>(10);
		c.set("once", 1);
		for (let i = 0; i < 10; i++) c.set(`k${i}`, i);
		expect(c.get("once")).toBeUndefined();
	});
});
