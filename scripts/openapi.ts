/**
 * Exports the gateway's OpenAPI document (what /swagger/json serves) to
 * docs/openapi.json, for API clients, code generators and reviews of API
 * changes in a diff.
 *
 *   bun run openapi            rewrites docs/openapi.json
 *   bun run openapi --check    exits 1 when the committed file is stale
 */
import { createApp } from "../src/app.ts";
import { buildGateway } from "../src/bootstrap.ts";
import { parseConfig } from "../src/config/loader.ts";
import { Logger } from "../src/log.ts";

export const OPENAPI_FILE = `${import.meta.dir}/../docs/openapi.json`;

/**
 * A configuration to build the app from. The document describes routes and
 * schemas, not configured models or limits (a test holds it to that), so any
 * valid configuration gives the same document.
 */
export const EXPORT_CONFIG = `token:
  rate-limit:
    models:
      llama2-7b:
        max-tokens-per-minute: 2000
vllm:
  health-check-ms: 0
  services:
    llama2-7b: http://127.0.0.1:8000
logging:
  level: silent
`;

/** The OpenAPI document the app serves at /swagger/json, built in-process from `configYaml`. */
export async function openapiDocument(configYaml: string = EXPORT_CONFIG): Promise<unknown> {
	const config = parseConfig(configYaml, {}, "openapi export");
	const gateway = await buildGateway(config, { logger: new Logger("silent") });
	try {
		const res = await createApp(gateway).handle(new Request("http://localhost/swagger/json"));
		if (res.status !== 200) throw new Error(`/swagger/json answered ${res.status}`);
		return await res.json();
	} finally {
		for (const pool of gateway.pools.values()) pool.stopHealthChecks();
		gateway.deps.watcher.stop();
		await gateway.deps.limiter.store.close();
	}
}

/** The file's text, formatted by the repository's Biome so `bun run lint` accepts it as written. */
export async function renderOpenapi(doc: unknown): Promise<string> {
	const biome = Bun.spawn(
		[
			`${import.meta.dir}/../node_modules/.bin/biome`,
			"format",
			"--stdin-file-path=docs/openapi.json",
		],
		{ stdin: new TextEncoder().encode(JSON.stringify(doc)), stdout: "pipe", stderr: "pipe" },
	);
	const [out, err, code] = await Promise.all([
		new Response(biome.stdout).text(),
		new Response(biome.stderr).text(),
		biome.exited,
	]);
	if (code !== 0) throw new Error(`biome format failed (${code}): ${err}`);
	return out;
}

if (import.meta.main) {
	const next = await renderOpenapi(await openapiDocument());
	const file = Bun.file(OPENAPI_FILE);
	const current = (await file.exists()) ? await file.text() : "";
	if (Bun.argv.includes("--check")) {
		if (current !== next) {
			process.stderr.write("docs/openapi.json is stale; run `bun run openapi`\n");
			process.exit(1);
		}
		process.stdout.write("docs/openapi.json is up to date\n");
	} else {
		await Bun.write(OPENAPI_FILE, next);
		process.stdout.write(
			current === next ? "docs/openapi.json unchanged\n" : "docs/openapi.json written\n",
		);
	}
}
