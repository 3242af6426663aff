import { describe, expect, it } from "bun:test";
import { adminCredentialProblem, buildGateway } from "./bootstrap.ts";
import { parseConfig } from "./config/loader.ts";
import { Logger } from "./log.ts";

const PROD = await Bun.file(new URL("../config/prod.yaml", import.meta.url)).text();

describe("the boot warns when no one can use the admin API as configured", () => {
	it("names config/prod.yaml's admin key when OPS_API_KEY_SHA256 is unset (the all-zero placeholder)", () => {
		const problem = adminCredentialProblem(parseConfig(PROD, {}, "prod.yaml").auth);
		expect(problem).toBe(
			"admin key ops: its hash is the all-zero placeholder, which no key matches (config/prod.yaml reads it from OPS_API_KEY_SHA256); only other admin credentials work",
		);
	});

	it("is quiet once OPS_API_KEY_SHA256 gives the key's hash", () => {
		const env = { OPS_API_KEY_SHA256: `sha256:${"ab".repeat(32)}` };
		expect(adminCredentialProblem(parseConfig(PROD, env, "prod.yaml").auth)).toBeUndefined();
	});

	it("says so when there is no admin key and no JWT at all", () => {
		const yaml = `auth:
  mode: api-key
  api-keys:
    - id: app
      hash: sha256:${"cd".repeat(32)}
      user: app
token:
  rate-limit:
    models:
      m:
        max-tokens-per-minute: 100
vllm:
  services:
    m: http://127.0.0.1:9
`;
		expect(adminCredentialProblem(parseConfig(yaml, {}, "t").auth)).toBe(
			"no admin credential: no API key with role admin and no JWT; no one can use the admin API",
		);
	});
});

describe("the boot lists the Spring gateway's settings it does not use", () => {
	it("once, in one warning naming each", async () => {
		const lines: string[] = [];
		const yaml = `store: memory
spring:
  application:
    name: token-rate-limiter
management:
  endpoints:
    web:
      exposure:
        include: health,prometheus
token:
  rate-limit:
    models:
      m:
        max-tokens-per-minute: 100
vllm:
  services:
    m: http://127.0.0.1:9
`;
		const gateway = await buildGateway(parseConfig(yaml, {}, "application.yml"), {
			logger: new Logger("warn", (line) => {
				lines.push(line);
			}),
		});
		try {
			const warnings = lines
				.map((l) => JSON.parse(l) as { msg: string; settings?: string[] })
				.filter((l) => l.msg.startsWith("settings of the Spring gateway"));
			expect(warnings).toEqual([
				{
					...warnings[0],
					msg: "settings of the Spring gateway that this gateway does not use (ignored; see docs/operations.md)",
					settings: ["management", "spring.application"],
				},
			]);
		} finally {
			for (const pool of gateway.pools.values()) pool.stopHealthChecks();
			gateway.deps.watcher.stop();
			await gateway.deps.calibrator.stop();
			await gateway.deps.limiter.store.close();
		}
	});
});
