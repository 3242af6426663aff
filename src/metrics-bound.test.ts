import { describe, expect, it } from "bun:test";
import { Counter, Histogram, Registry } from "prom-client";
import { BoundHistogram, Tally } from "./metrics-bound.ts";

const BUCKETS = [0.005, 0.01, 0.1, 1, 10];
const VALUES = [0, 0.005, 0.007, 0.05, 0.5, 3, 10, 11, 1e-7];

function pair() {
	const plainRegistry = new Registry();
	const boundRegistry = new Registry();
	const config = { name: "x_seconds", help: "x", labelNames: ["model", "status"] as const };
	const plain = new Histogram({ ...config, buckets: BUCKETS, registers: [plainRegistry] });
	const bound = new BoundHistogram({ ...config, buckets: BUCKETS, registers: [boundRegistry] });
	return { plain, bound, plainRegistry, boundRegistry };
}

describe("BoundHistogram", () => {
	it("writes exactly what prom-client writes for the same observations", async () => {
		const { plain, bound, plainRegistry, boundRegistry } = pair();
		const a = bound.bind({ model: "m1", status: "2xx" });
		const b = bound.bind({ model: 'm"2', status: "5xx" });
		for (const v of VALUES) {
			plain.observe({ model: "m1", status: "2xx" }, v);
			a.observe(v);
		}
		for (const v of VALUES.slice(3)) {
			plain.observe({ model: 'm"2', status: "5xx" }, v);
			b.observe(v);
		}
		expect(await boundRegistry.metrics()).toBe(await plainRegistry.metrics());
		expect(await bound.get()).toEqual(await plain.get());
	});

	it("keeps counting through bound observers after a reset, and writes out only what was observed", async () => {
		const { bound, boundRegistry } = pair();
		const a = bound.bind({ model: "m1", status: "2xx" });
		a.observe(0.5);
		boundRegistry.resetMetrics();
		expect(await boundRegistry.metrics()).not.toContain("x_seconds_count");
		a.observe(0.5);
		expect(await boundRegistry.metrics()).toContain('x_seconds_count{model="m1",status="2xx"} 1');
	});

	it("removes one series, by label object or by values", async () => {
		const { bound, boundRegistry } = pair();
		bound.bind({ model: "m1", status: "2xx" }).observe(1);
		bound.bind({ model: "m2", status: "2xx" }).observe(1);
		bound.remove({ model: "m1", status: "2xx" });
		let text = await boundRegistry.metrics();
		expect(text).not.toContain('model="m1"');
		expect(text).toContain('model="m2"');
		bound.remove("m2", "2xx");
		text = await boundRegistry.metrics();
		expect(text).not.toContain('model="m2"');
	});
});

describe("Tally", () => {
	it("hands every increment to the counter exactly once", async () => {
		const registry = new Registry();
		const counter = new Counter({ name: "t_total", help: "t", registers: [registry] });
		const t = new Tally(counter);
		t.inc(3);
		t.inc(4);
		t.flush();
		t.flush();
		t.inc(1);
		t.flush();
		expect((await counter.get()).values[0]?.value).toBe(8);
	});
});
