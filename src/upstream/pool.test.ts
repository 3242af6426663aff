import { describe, expect, it } from "bun:test";
import { ReplicaPool } from "./pool.ts";

describe("a replica pool's changes as reported", () => {
	it("reports a replica whose host never resolves as taken out, and nothing when the pool stops", async () => {
		const changes: string[] = [];
		const pool = new ReplicaPool(
			["http://replica.does-not-exist.invalid:8000"],
			undefined,
			(url, change) => changes.push(`${url} ${change}`),
		);
		expect(await pool.checkHealth(500)).toEqual(["http://replica.does-not-exist.invalid:8000"]);
		expect(changes).toEqual([
			"http://replica.does-not-exist.invalid:8000 taken out: /health failed",
		]);
		pool.stopHealthChecks();
		// Releasing it on the way out is not "breaker closed": it never worked.
		expect(changes).toEqual([
			"http://replica.does-not-exist.invalid:8000 taken out: /health failed",
		]);
	});
});
