import { afterAll, describe, expect, it, setDefaultTimeout } from "bun:test";
import {
	chmodSync,
	existsSync,
	mkdirSync,
	mkdtempSync,
	readFileSync,
	rmSync,
	writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "./support/run.ts";

// Runs shellcheck and the operator scripts (with stand-ins for kubectl and k6).
setDefaultTimeout(30_000);

/**
 * The operator scripts in scripts/: they pass shellcheck, and they do what
 * their usage says, driven for real with recording stand-ins for kubectl and
 * k6 placed first on PATH.
 */

const ROOT = join(import.meta.dir, "..");
const SHELL_SCRIPTS = [
	...new Bun.Glob("scripts/*.sh").scanSync(ROOT),
	...new Bun.Glob("docker/*.sh").scanSync(ROOT),
].sort();

const scratch = mkdtempSync(join(tmpdir(), "trl-scripts-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Runs a command in the repository root with `env` over this process's environment. */
function runIn(cmd: string[], env: Record<string, string> = {}) {
	return run(cmd, undefined, { cwd: ROOT, env });
}

/**
 * A directory holding a stand-in `name` that appends its arguments (one call
 * per line) to `log` and then runs `body`.
 */
function fakeTool(name: string, body: string): { bin: string; log: string; calls(): string[] } {
	const bin = mkdtempSync(join(scratch, `${name}-`));
	const log = join(bin, "calls.log");
	writeFileSync(log, "");
	const file = join(bin, name);
	writeFileSync(file, `#!/usr/bin/env bash\necho "$*" >> ${JSON.stringify(log)}\n${body}\n`);
	chmodSync(file, 0o755);
	return {
		bin,
		log,
		calls: () => readFileSync(log, "utf8").split("\n").filter(Boolean),
	};
}

describe("shell scripts", () => {
	it("include the seed's helpers that still make sense", () => {
		for (const s of ["scripts/deploy-k8s.sh", "scripts/load-test.sh", "scripts/setup-dev-env.sh"])
			expect(SHELL_SCRIPTS).toContain(s);
	});

	it("pass shellcheck", async () => {
		const { code, stdout, stderr } = await run([
			"shellcheck",
			"--external-sources",
			...SHELL_SCRIPTS.map((s) => join(ROOT, s)),
		]);
		expect(stdout + stderr).toBe("");
		expect(code).toBe(0);
	});

	it("are executable bash scripts that stop at the first error", async () => {
		for (const s of SHELL_SCRIPTS) {
			const text = await Bun.file(join(ROOT, s)).text();
			expect({ s, shebang: /^#!(\/usr\/bin\/env bash|\/bin\/bash)\n/.test(text) }).toEqual({
				s,
				shebang: true,
			});
			expect({ s, strict: text.includes("set -euo pipefail") }).toEqual({ s, strict: true });
			const mode = (await Bun.file(join(ROOT, s)).stat()).mode;
			expect({ s, executable: (mode & 0o111) === 0o111 }).toEqual({ s, executable: true });
		}
	});
});

describe("scripts/setup-dev-env.sh", () => {
	const LINE = /^(ok|missing|mismatch) +(required|tests|optional) +(\S+) +(.+)$/;
	interface Line {
		status: string;
		need: string;
		name: string;
		detail: string;
	}
	function parse(stdout: string): { lines: Line[]; summary: string } {
		const all = stdout.trimEnd().split("\n");
		const summary = all.pop() ?? "";
		const lines = all.map((l) => {
			const m = LINE.exec(l);
			expect({ line: l, matches: m !== null }).toEqual({ line: l, matches: true });
			return { status: m?.[1] ?? "", need: m?.[2] ?? "", name: m?.[3] ?? "", detail: m?.[4] ?? "" };
		});
		return { lines, summary };
	}

	it("tells the truth about this machine, tool by tool, and exits 1 only when a needed one is missing", async () => {
		const { code, stdout, stderr } = await runIn(["scripts/setup-dev-env.sh"]);
		expect(stderr).toBe("");
		const { lines, summary } = parse(stdout);
		const byName = new Map(lines.map((l) => [l.name, l]));
		expect([...byName.keys()]).toEqual([
			"bun",
			"dependencies",
			"redis-server",
			"redis-cli",
			"promtool",
			"shellcheck",
			"kubectl",
			"chromium",
			"docker",
			"docker-compose",
			"k6",
			"wrk",
			"openssl",
		]);
		const present: Record<string, boolean> = {
			bun: Bun.which("bun") !== null,
			dependencies: ["elysia", "fast-check", "openai"].every((p) =>
				existsSync(join(ROOT, "node_modules", p)),
			),
			chromium: existsSync("/usr/bin/chromium"),
			// The CLI alone is not enough: an engine must answer.
			docker:
				Bun.which("docker") !== null &&
				Bun.spawnSync(["docker", "info"], { stdout: "ignore", stderr: "ignore" }).exitCode === 0,
		};
		for (const l of lines) {
			if (l.name === "docker-compose") continue; // a docker plugin, not a file on PATH
			const expected = present[l.name] ?? Bun.which(l.name) !== null;
			expect({ name: l.name, found: l.status !== "missing" }).toEqual({
				name: l.name,
				found: expected,
			});
			// A missing tool comes with what it is for and how to install it.
			if (l.status === "missing") expect(l.detail).toContain("install: ");
		}
		const bun = byName.get("bun");
		const pinned = (await Bun.file(join(ROOT, "Dockerfile")).text()).match(
			/^ARG BUN_VERSION=(\S+)$/m,
		)?.[1];
		expect(bun?.status).toBe(Bun.version === pinned ? "ok" : "mismatch");
		expect(bun?.detail).toStartWith(Bun.version);
		const neededMissing = lines.filter((l) => l.status === "missing" && l.need !== "optional");
		const optionalMissing = lines.filter((l) => l.status === "missing" && l.need === "optional");
		expect(summary).toStartWith(
			`summary: ${neededMissing.length} required or tests tool(s) missing, ${optionalMissing.length} optional missing`,
		);
		expect(code).toBe(neededMissing.length > 0 ? 1 : 0);
	});

	it("names every missing tool on a machine with nothing installed", async () => {
		const empty = mkdtempSync(join(scratch, "empty-path-"));
		const bash = Bun.which("bash") ?? "/bin/bash";
		const { code, stdout } = await runIn([bash, "scripts/setup-dev-env.sh"], { PATH: empty });
		const { lines } = parse(stdout);
		const missing = lines.filter((l) => l.status === "missing").map((l) => l.name);
		for (const name of ["bun", "redis-server", "redis-cli", "promtool", "shellcheck", "kubectl"])
			expect(missing).toContain(name);
		expect(lines.find((l) => l.name === "bun")?.detail).toMatch(/npm install -g bun@\d+\.\d+\.\d+/);
		expect(lines.find((l) => l.name === "redis-server")?.detail).toContain(
			"apt-get install redis-server",
		);
		expect(code).toBe(1);
	});
});

describe("scripts/deploy-k8s.sh", () => {
	/** kubectl that applies (printing what the overlay holds) and knows the Secret when told. */
	function fakeKubectl(secretExists: boolean) {
		return fakeTool(
			"kubectl",
			`case " $* " in
*" current-context "*) echo kind-dev ;;
*" apply "*) echo "deployment.apps/token-rate-limiter configured"; echo "statefulset.apps/redis unchanged" ;;
*" get secret "*) exit ${secretExists ? 0 : 1} ;;
esac`,
		);
	}

	it("applies the overlay with kustomize and waits for Redis and the gateway to roll out", async () => {
		const kubectl = fakeKubectl(true);
		const { code, stdout } = await runIn(["scripts/deploy-k8s.sh", "dev", "--timeout", "120s"], {
			PATH: `${kubectl.bin}:${process.env.PATH}`,
		});
		expect(code).toBe(0);
		expect(stdout).toContain("context kind-dev");
		expect(kubectl.calls()).toEqual([
			"config current-context",
			`apply -k ${ROOT}/k8s/overlays/dev`,
			"-n model-serving get secret token-rate-limiter-secrets",
			"-n model-serving rollout status statefulset/redis --timeout=120s",
			"-n model-serving rollout status deployment/token-rate-limiter --timeout=120s",
		]);
	});

	it("refuses to deploy k8s/ (with its example Secret) over an existing Secret when given no overlay", async () => {
		const kubectl = fakeKubectl(true);
		const { code, stderr } = await runIn(["scripts/deploy-k8s.sh"], {
			PATH: `${kubectl.bin}:${process.env.PATH}`,
		});
		expect(code).toBe(2);
		expect(stderr).toContain("looks like a real deployment");
		expect(kubectl.calls().some((c) => c.startsWith("apply"))).toBe(false);
	});

	it("deploys the whole stack (k8s/) when given no overlay, as the original gateway's script did", async () => {
		// No Secret until k8s/ (which carries the example one) is applied.
		const kubectl = fakeTool(
			"kubectl",
			`state="$(dirname "$0")/applied"
case " $* " in
*" current-context "*) echo kind-dev ;;
*" apply "*) touch "$state"; echo "deployment.apps/token-rate-limiter configured" ;;
*" get secret "*) [ -f "$state" ] ;;
esac`,
		);
		const { code, stdout } = await runIn(["scripts/deploy-k8s.sh"], {
			PATH: `${kubectl.bin}:${process.env.PATH}`,
		});
		expect(code).toBe(0);
		expect(stdout).toContain("no overlay given: deploying k8s/");
		expect(kubectl.calls()).toContain(`apply -k ${ROOT}/k8s`);
		expect(kubectl.calls()).toContain(
			"-n model-serving rollout status deployment/token-rate-limiter --timeout=300s",
		);
	});

	it("stops before waiting when the Secret the pods need is missing", async () => {
		const kubectl = fakeKubectl(false);
		const { code, stderr } = await runIn(["scripts/deploy-k8s.sh", "prod"], {
			PATH: `${kubectl.bin}:${process.env.PATH}`,
			NAMESPACE: "serving",
		});
		expect(code).toBe(1);
		expect(stderr).toContain("Secret serving/token-rate-limiter-secrets does not exist");
		expect(kubectl.calls().some((c) => c.includes("rollout"))).toBe(false);
		expect(kubectl.calls()).toContain(`apply -k ${ROOT}/k8s/overlays/prod`);
	});

	it("shows what an apply that fails part-way did apply, and stops there", async () => {
		const kubectl = fakeTool(
			"kubectl",
			`case " $* " in
*" current-context "*) echo kind-dev ;;
*" apply "*) echo "deployment.apps/token-rate-limiter created"; echo "no matches for kind ServiceMonitor" >&2; exit 1 ;;
esac`,
		);
		const { code, stdout, stderr } = await runIn(["scripts/deploy-k8s.sh", "dev"], {
			PATH: `${kubectl.bin}:${process.env.PATH}`,
		});
		expect(code).toBe(1);
		expect(stdout).toContain("deployment.apps/token-rate-limiter created");
		expect(stderr).toContain("no matches for kind ServiceMonitor");
		expect(kubectl.calls().some((c) => c.includes("rollout"))).toBe(false);
	});

	it("refuses an unknown overlay, listing the ones there are, without calling kubectl", async () => {
		const kubectl = fakeKubectl(true);
		const { code, stderr } = await runIn(["scripts/deploy-k8s.sh", "staging"], {
			PATH: `${kubectl.bin}:${process.env.PATH}`,
		});
		expect(code).toBe(2);
		expect(stderr).toContain("no such overlay: staging");
		expect(stderr).toContain("dev prod");
		expect(kubectl.calls()).toEqual([]);
	});

	it("names kubectl when it is not installed", async () => {
		const empty = mkdtempSync(join(scratch, "no-kubectl-"));
		const bash = Bun.which("bash") ?? "/bin/bash";
		const { code, stderr } = await runIn([bash, "scripts/deploy-k8s.sh", "dev"], { PATH: empty });
		expect(code).toBe(127);
		expect(stderr).toContain("kubectl not found");
	});
});

describe("scripts/load-test.sh", () => {
	function fakeK6(version: string) {
		return fakeTool(
			"k6",
			`if [ "$1" = version ]; then echo "k6 v${version} (go1.24, linux/amd64)"; fi`,
		);
	}

	it("runs the smoke script against the URL by default", async () => {
		const k6 = fakeK6("1.1.0");
		const { code } = await runIn(["scripts/load-test.sh", "http://localhost:8080/"], {
			PATH: `${k6.bin}:${process.env.PATH}`,
		});
		expect(code).toBe(0);
		expect(k6.calls()).toEqual([
			"version",
			`run -e BASE_URL=http://localhost:8080 ${ROOT}/perf/k6/smoke.ts`,
		]);
	});

	it("passes the named script and k6 options through, and never the API key on the command line", async () => {
		const k6 = fakeK6("0.57.0");
		const { code } = await runIn(
			[
				"scripts/load-test.sh",
				"https://gateway.example",
				"load",
				"-e",
				"TARGET_RPS=2000",
				"-e",
				"HOLD=10m",
			],
			{ PATH: `${k6.bin}:${process.env.PATH}`, API_KEY: "trl_secret_key" },
		);
		expect(code).toBe(0);
		expect(k6.calls()[1]).toBe(
			`run -e BASE_URL=https://gateway.example -e TARGET_RPS=2000 -e HOLD=10m ${ROOT}/perf/k6/load.ts`,
		);
		expect(k6.calls().join("\n")).not.toContain("trl_secret_key");
	});

	it("turns on TypeScript support for k6 0.52 to 0.56 and refuses older ones", async () => {
		const mid = fakeK6("0.55.2");
		await runIn(["scripts/load-test.sh", "http://gw:8080", "stress"], {
			PATH: `${mid.bin}:${process.env.PATH}`,
		});
		expect(mid.calls()[1]).toBe(
			`run --compatibility-mode=experimental_enhanced -e BASE_URL=http://gw:8080 ${ROOT}/perf/k6/stress.ts`,
		);
		const old = fakeK6("0.49.0");
		const { code, stderr } = await runIn(["scripts/load-test.sh", "http://gw:8080"], {
			PATH: `${old.bin}:${process.env.PATH}`,
		});
		expect(code).toBe(1);
		expect(stderr).toContain("install 0.57 or later");
		expect(old.calls()).toEqual(["version"]);
	});

	it("refuses what is not a URL or not a script", async () => {
		const k6 = fakeK6("1.1.0");
		const path = `${k6.bin}:${process.env.PATH}`;
		expect((await runIn(["scripts/load-test.sh", "localhost:8080"], { PATH: path })).code).toBe(2);
		const { code, stderr } = await runIn(["scripts/load-test.sh", "http://gw", "soak"], {
			PATH: path,
		});
		expect(code).toBe(2);
		expect(stderr).toContain("no such k6 script: soak");
		expect(k6.calls()).toEqual([]);
	});

	it("says where to get k6 when it is not installed", async () => {
		const empty = mkdtempSync(join(scratch, "no-k6-"));
		const bash = Bun.which("bash") ?? "/bin/bash";
		const { code, stderr } = await runIn([bash, "scripts/load-test.sh", "http://gw"], {
			PATH: empty,
		});
		expect(code).toBe(127);
		expect(stderr).toContain("k6 not found");
	});
});

describe("the mock vLLM, run on its own (bun run mock-vllm)", () => {
	it("says in one line which setting to change when its port is taken", async () => {
		const taken = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("x") });
		try {
			const { code, stdout, stderr } = await run(["bun", "test/support/mock-vllm.ts"], undefined, {
				env: { MOCK_VLLM_PORT: String(taken.port) },
			});
			expect(code).toBe(2);
			expect(stdout).toBe("");
			expect(stderr.trim().split("\n")).toEqual([
				`mock vLLM: port ${taken.port} on 127.0.0.1 is in use; set MOCK_VLLM_PORT to a free port`,
			]);
		} finally {
			taken.stop(true);
		}
	});
});

describe("bun run demo", () => {
	it("prints no colour codes when its output is not a terminal, and says which request was refused", async () => {
		const { code, stdout } = await run(["bun", "scripts/demo.ts", "--once"], undefined, {
			env: { DEMO_PORT: "0", MOCK_VLLM_PORT: "0" },
		});
		expect(code).toBe(0);
		expect(stdout).not.toContain("\x1b[");
		expect(stdout).toMatch(/^ {2}#\d+ 429 /m);
	});

	it("prints a TypeScript snippet that, pasted and run, prints the model's answer", async () => {
		const demo = Bun.spawn(["bun", "scripts/demo.ts"], {
			env: { ...process.env, DEMO_PORT: "0", MOCK_VLLM_PORT: "0" },
			stdout: "pipe",
			stderr: "ignore",
		});
		const dir = join(ROOT, "test-output");
		mkdirSync(dir, { recursive: true });
		const file = join(dir, `hello-${process.pid}.ts`);
		try {
			const reader = demo.stdout.getReader();
			let text = "";
			while (!text.includes("Running. Ctrl-C to stop.")) {
				const { value, done } = await reader.read();
				if (done) throw new Error(`the demo stopped early:\n${text}`);
				text += new TextDecoder().decode(value);
			}
			reader.releaseLock();
			const from = text.indexOf("# OpenAI SDK (TypeScript)");
			const snippet = text.slice(text.indexOf("\n", from) + 1, text.indexOf("\n\n", from));
			writeFileSync(file, snippet);
			const pasted = await run(["bun", file], undefined, { cwd: ROOT });
			expect(pasted.code).toBe(0);
			expect(pasted.stdout).toContain("total_tokens");
		} finally {
			demo.kill();
			await demo.exited;
			rmSync(file, { force: true });
		}
	});
});
