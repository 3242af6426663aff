import { describe, expect, it } from "bun:test";
import { readdirSync } from "node:fs";

/**
 * Static checks of the k6 scripts in perf/k6. They import k6's own modules,
 * which exist only inside k6, so they are read as text, not imported.
 */

const DIR = `${import.meta.dir}/../perf/k6`;
const EXPECTED = ["load.ts", "rate-limit.ts", "smoke.ts", "streaming.ts", "stress.ts"];

const scripts = readdirSync(DIR)
	.filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts") && f !== "lib.ts")
	.sort();
const read = (file: string) => Bun.file(`${DIR}/${file}`).text();

/** The balanced `{...}` that starts at `open` (braces inside strings are balanced here too). */
function braced(text: string, open: number): string {
	let depth = 0;
	for (let i = open; i < text.length; i++) {
		if (text[i] === "{") depth++;
		else if (text[i] === "}" && --depth === 0) return text.slice(open, i + 1);
	}
	throw new Error("unbalanced braces");
}

/** The object literal of `export const options`. */
function optionsLiteral(text: string): string {
	const m = /export const options(?:\s*:\s*Options)?\s*=\s*\{/.exec(text);
	if (m === null) throw new Error("no `export const options = {`");
	return braced(text, m.index + m[0].length - 1);
}

/** The `thresholds: {...}` object inside the options, without its braces. */
function thresholdsBody(options: string): string {
	const at = options.indexOf("thresholds:");
	if (at < 0) return "";
	return braced(options, options.indexOf("{", at)).slice(1, -1);
}

describe("k6 scripts", () => {
	it("are all there", () => {
		expect(scripts).toEqual(EXPECTED);
	});

	for (const file of EXPECTED) {
		describe(file, () => {
			it("exports options with non-empty thresholds", async () => {
				const body = thresholdsBody(optionsLiteral(await read(file)));
				// At least one `name: [...]` entry (or a spread of computed ones next to it).
				expect(body).toMatch(/(?:^|[\s,{])(?:"[^"]+"|[A-Za-z_]\w*)\s*:\s*\[/);
			});

			it("exports a default function", async () => {
				expect(await read(file)).toMatch(/export default function\s*\(/);
			});

			it("reads BASE_URL through lib.ts", async () => {
				const text = await read(file);
				expect(text).not.toMatch(/__ENV\s*(?:\.\s*BASE_URL|\[\s*["']BASE_URL)/);
				const lib = /import\s*\{([^}]*)\}\s*from\s*"\.\/lib\.ts"/.exec(text);
				expect(lib).not.toBeNull();
				// Every request goes through url() / postChat(), which prefix BASE_URL;
				// a literal http:// URL would bypass it.
				expect(lib?.[1]).toMatch(/\b(?:url|postChat|BASE_URL)\b/);
				expect(text).not.toMatch(/["'`]https?:\/\//);
			});

			it("imports only k6 modules and ./lib.ts", async () => {
				const text = await read(file);
				const specifiers = [...text.matchAll(/\bfrom\s+"([^"]+)"/g)].map((m) => m[1]);
				expect(specifiers.length).toBeGreaterThan(0);
				for (const s of specifiers) expect(s).toMatch(/^(?:k6(?:\/[a-z-]+)*|\.\/lib\.ts)$/);
			});
		});
	}

	it("lib.ts reads BASE_URL from __ENV with the documented default", async () => {
		const lib = await read("lib.ts");
		expect(lib).toContain('export const BASE_URL = env("BASE_URL", "http://localhost:8080")');
		expect(lib).toMatch(/__ENV\[name\]/);
		expect(lib).toContain('env("API_KEY", "")');
		expect(lib).toContain('env("MODEL", "llama2-7b")');
	});

	it("the README documents every script", async () => {
		const readme = await Bun.file(`${import.meta.dir}/../README.md`).text();
		const at = readme.indexOf("## Load testing with k6");
		expect(at).toBeGreaterThan(0);
		const section = readme.slice(at);
		for (const file of EXPECTED) expect(section).toContain(`perf/k6/${file}`);
	});
});
