/**
 * Builds the token counter: regenerates its Unicode table (wasm/src/unicode.ts)
 * and the built-in encodings' ranks (wasm/ranks/*.ranks), then compiles
 * wasm/src/counter.ts with AssemblyScript into wasm/counter.wasm. All three are
 * committed, so the gateway (and `bun run build`'s single binary) needs no
 * compiler.
 *
 *   bun wasm/build.ts           rebuild in place
 *   bun wasm/build.ts --check   rebuild in a temporary folder and fail unless every
 *                               committed file is byte for byte what the build gives
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BUILTIN, builtinRanks } from "./gen-ranks.ts";
import { unicodeSource } from "./gen-unicode.ts";

const here = (path: string) => new URL(path, import.meta.url).pathname;
const check = Bun.argv.includes("--check");

/** The compiler's options: fixed, so that a build is reproducible. */
const ASC_FLAGS = ["-O3", "--runtime", "stub", "--noAssert", "--converge"];

function compile(source: string, out: string): void {
	const asc = Bun.spawnSync(
		[
			process.execPath,
			here("../node_modules/assemblyscript/bin/asc.js"),
			source,
			"-o",
			out,
			...ASC_FLAGS,
		],
		{ stdout: "inherit", stderr: "inherit" },
	);
	if (asc.exitCode !== 0) throw new Error(`asc failed (exit ${asc.exitCode})`);
}

if (!check) {
	writeFileSync(here("./src/unicode.ts"), unicodeSource());
	for (const encoding of BUILTIN) {
		writeFileSync(here(`./ranks/${encoding}.ranks`), await builtinRanks(encoding));
	}
	compile(here("./src/counter.ts"), here("./counter.wasm"));
	console.log("wasm: built wasm/counter.wasm, wasm/src/unicode.ts, wasm/ranks/*.ranks");
} else {
	const dir = mkdtempSync(join(tmpdir(), "trl-wasm-"));
	const differs: string[] = [];
	try {
		const same = (committed: string, built: Uint8Array | string) => {
			const a = readFileSync(here(committed));
			const b = typeof built === "string" ? Buffer.from(built) : Buffer.from(built);
			if (!a.equals(b)) differs.push(`wasm/${committed.replace(/^\.\//, "")}`);
		};
		const unicode = unicodeSource();
		same("./src/unicode.ts", unicode);
		for (const encoding of BUILTIN) same(`./ranks/${encoding}.ranks`, await builtinRanks(encoding));
		// The committed Unicode table goes into the rebuild, so a table that differs
		// is reported once, as the table.
		const src = join(dir, "src");
		Bun.spawnSync(["cp", "-r", here("./src"), src]);
		writeFileSync(join(src, "unicode.ts"), unicode);
		compile(join(src, "counter.ts"), join(dir, "counter.wasm"));
		same("./counter.wasm", readFileSync(join(dir, "counter.wasm")));
	} finally {
		rmSync(dir, { recursive: true, force: true });
	}
	if (differs.length > 0) {
		console.error(
			`wasm: the build gives other bytes than the committed ${differs.join(", ")}: run bun wasm/build.ts and commit`,
		);
		process.exit(1);
	}
	console.log("wasm: the committed counter, Unicode table and ranks rebuild byte for byte");
}
