import { run } from "./run.ts";

/**
 * Metric names a PromQL expression reads: what is left once strings, label
 * matchers, ranges, grouping clauses, numbers, keywords and function calls are
 * taken out. Enough for the expressions of our rules and dashboard.
 */
export function promqlMetricNames(expr: string): Set<string> {
	let s = expr
		.replace(/"(?:[^"\\]|\\.)*"/g, '""')
		.replace(/\{[^}]*\}/g, " ")
		.replace(/\[[^\]]*\]/g, " ")
		.replace(/\$\w+/g, " ")
		.replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
	// Durations (offset 5m), then numbers.
	s = s.replace(/(?<![\w:])(?:\d+(?:ms|[smhdwy]))+(?![\w:])/g, " ");
	s = s.replace(/(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w:])/gi, " ");
	const keywords = new Set(["and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"]);
	const names = new Set<string>();
	for (const m of s.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?/g)) {
		const [whole, call] = m;
		if (call !== undefined) continue;
		const name = whole.trim();
		if (!keywords.has(name.toLowerCase())) names.add(name);
	}
	return names;
}

/**
 * The series names an exposition text (Prometheus text format) can be queried
 * by: every `# TYPE`d metric, with `_bucket`, `_sum` and `_count` for histograms
 * and `_sum`, `_count` for summaries.
 */
export function exportedSeriesNames(exposition: string): Set<string> {
	const names = new Set<string>();
	for (const m of exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
		const [, name = "", type] = m;
		names.add(name);
		if (type === "histogram") for (const s of ["_bucket", "_sum", "_count"]) names.add(name + s);
		if (type === "summary") for (const s of ["_sum", "_count"]) names.add(name + s);
	}
	return names;
}

/** Runs promtool with `args` (and `stdin`); its exit code and output. */
export async function promtool(
	args: string[],
	stdin?: string,
): Promise<{ code: number; output: string }> {
	const { code, stdout, stderr } = await run(["promtool", ...args], stdin);
	return { code, output: stdout + stderr };
}
