import { describe, expect, it, setDefaultTimeout } from "bun:test";
import { join } from "node:path";
import { EXPORT_CONFIG, openapiDocument } from "../scripts/openapi.ts";
import { run } from "./support/run.ts";

// Builds the app in-process (twice) and runs Biome's formatter.
setDefaultTimeout(30_000);

/**
 * docs/openapi.json is the document the gateway serves at /swagger/json, as
 * `bun run openapi` writes it; this fails as soon as the routes or their
 * schemas change without the file being regenerated.
 */

const FILE = join(import.meta.dir, "..", "docs", "openapi.json");

describe("docs/openapi.json", () => {
	// In a fresh process, as the export script runs: once a route has served a request, Elysia
	// adds `additionalProperties: false` to its response schemas, so a document taken after the
	// other tests' traffic in this process would differ from the one a gateway serves at boot.
	it("is the OpenAPI document the gateway serves at boot, as `bun run openapi` writes it", async () => {
		const {
			code,
			stdout: out,
			stderr: err,
		} = await run(["bun", join(import.meta.dir, "..", "scripts", "openapi.ts"), "--check"]);
		expect({ code, out, err }).toEqual({
			code: 0,
			out: "docs/openapi.json is up to date\n",
			err: "",
		});
	});

	it("holds every route the app serves, with the same methods", async () => {
		const committed = JSON.parse(await Bun.file(FILE).text()) as {
			paths: Record<string, Record<string, unknown>>;
		};
		const live = (await openapiDocument()) as { paths: Record<string, Record<string, unknown>> };
		const methods = (doc: { paths: Record<string, Record<string, unknown>> }) =>
			Object.entries(doc.paths)
				.map(([path, ops]) => `${Object.keys(ops).sort().join(",")} ${path}`)
				.sort();
		expect(methods(committed)).toEqual(methods(live));
	});

	it("does not depend on the configuration it was exported with", async () => {
		const other = EXPORT_CONFIG.replace(
			"      llama2-7b:\n        max-tokens-per-minute: 2000\n",
			"      llama2-7b:\n        max-tokens-per-day: 5\n      another-model:\n        max-concurrent-requests: 1\n",
		).replace(
			"    llama2-7b: http://127.0.0.1:8000\n",
			"    llama2-7b: http://127.0.0.1:8000\n    another-model: [http://10.0.0.1:8000, http://10.0.0.2:8000]\n",
		);
		expect(other).toContain("another-model: [");
		expect(await openapiDocument(`${other}auth:\n  mode: api-key\n`)).toEqual(
			await openapiDocument(),
		);
	});

	it("documents the seed's paths and the OpenAI ones", async () => {
		const doc = JSON.parse(await Bun.file(FILE).text()) as {
			openapi: string;
			paths: Record<string, Record<string, unknown>>;
		};
		expect(doc.openapi).toStartWith("3.");
		for (const [path, method] of [
			["/v1/chat/completions", "post"],
			["/v1/completions", "post"],
			["/v1/models", "get"],
			["/api/v1/models/{model}/chat/completions", "post"],
			["/api/v1/models", "get"],
			["/api/v1/models/{model}/health", "get"],
			["/api/v1/admin/token-usage/{model}/{user}", "get"],
			["/actuator/health", "get"],
			["/actuator/info", "get"],
			["/actuator/prometheus", "get"],
		] as const) {
			expect({ path, method, documented: doc.paths[path]?.[method] !== undefined }).toEqual({
				path,
				method,
				documented: true,
			});
		}
	});
});
