import { describe, expect, it } from "bun:test";
import { adminCredentialProblem } from "./bootstrap.ts";
import { parseConfig } from "./config/loader.ts";

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
