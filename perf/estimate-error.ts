/**
 * Estimate error before and after: for chats of each workload sent to a model
 * of each family, how far the gateway's pre-flight prompt estimate is from the
 * model server's own count (the family's chat template rendered and counted
 * with its own tokenizer), with cl100k_base alone, with cl100k_base plus
 * self-calibration, and with the model's own tokenizer. Counting speed of each
 * tokenizer kind is measured by perf/tokens-bench.ts.
 *
 *   bun perf/estimate-error.ts [chats per workload, default 200]
 */

import { parseConfig } from "../src/config/loader.ts";
import type { ModelConfig } from "../src/config/schema.ts";
import { MemoryCalibration } from "../src/limits/calibration.ts";
import { Calibrator } from "../src/tokens/calibration.ts";
import { TokenCounters } from "../src/tokens/counter.ts";
import { chatPromptParts } from "../src/tokens/estimate.ts";
import {
	type ChatMessage,
	llama2ChatTokens,
	llama3ChatTokens,
	mistralChatTokens,
} from "../test/support/chat-templates.ts";
import { chats, type Workload } from "../test/support/chats.ts";
import { writeTokenizerFixtures } from "../test/support/tokenizer-fixtures.ts";

const COUNT = Number(process.argv[2] ?? 200);
const fx = await writeTokenizerFixtures();

const yaml = `token:
  rate-limit:
    models:
      cl100k:
        max-tokens-per-minute: 1000
      llama2:
        max-tokens-per-minute: 1000
        tokenizer: { kind: huggingface, path: ${fx.llama2Dir} }
      mistral:
        max-tokens-per-minute: 1000
        tokenizer: { kind: huggingface, path: ${fx.mistralJson}, chat-template: mistral }
      llama3:
        max-tokens-per-minute: 1000
        tokenizer: { kind: tiktoken-ranks, path: ${fx.llama3Ranks} }
vllm:
  services: { cl100k: "http://127.0.0.1:9", llama2: "http://127.0.0.1:9", mistral: "http://127.0.0.1:9", llama3: "http://127.0.0.1:9" }
`;
const models: ModelConfig[] = [...parseConfig(yaml, {}, "estimate-error").models.values()];
const counters = await TokenCounters.load(models);

const families: [string, (m: readonly ChatMessage[]) => number][] = [
	["llama2", llama2ChatTokens],
	["mistral", mistralChatTokens],
	["llama3", llama3ChatTokens],
];
const workloads: Workload[] = ["short", "english", "code", "korean", "mixed"];

const median = (xs: number[]) => {
	const s = [...xs].sort((a, b) => a - b);
	const mid = Math.floor(s.length / 2);
	return s.length === 0
		? Number.NaN
		: s.length % 2 === 1
			? (s[mid] ?? 0)
			: ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
};
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

/** Errors of a sequence of estimates; `calibrate` learns from each request after it. */
async function run(
	estimator: string,
	served: (m: readonly ChatMessage[]) => number,
	list: ChatMessage[][],
	calibrate: boolean,
) {
	const calibrator = new Calibrator(new MemoryCalibration());
	calibrator.configure([
		{
			id: estimator,
			calibration: { enabled: calibrate, ratio: undefined, direction: "both" },
			tokenizer: { key: estimator },
			template: counters.of(estimator).framing.template,
		},
	]);
	const { counter, framing } = counters.of(estimator);
	const errors: number[] = [];
	for (const messages of list) {
		const parts = chatPromptParts(counter, { model: estimator, messages }, framing);
		const est = calibrator.apply(estimator, parts).tokens;
		const actual = served(messages);
		errors.push(est / actual - 1);
		calibrator.observe(estimator, parts, actual);
		await calibrator.sync();
	}
	// The first request after which the median |error| of the next 20 stays below 5 %.
	let settledAt = -1;
	for (let i = 0; i + 20 <= errors.length; i++) {
		let ok = true;
		for (let j = i; j + 20 <= errors.length; j++) {
			if (median(errors.slice(j, j + 20).map(Math.abs)) >= 0.05) {
				ok = false;
				break;
			}
		}
		if (ok) {
			settledAt = i;
			break;
		}
	}
	return {
		bias: median(errors),
		mae: median(errors.map(Math.abs)),
		maeAfter50: median(errors.slice(50).map(Math.abs)),
		settledAt,
		ratio: calibrator.view(estimator)?.ratio ?? 1,
		template: calibrator.view(estimator)?.template ?? "openai",
	};
}

console.log(
	`# estimate error, ${COUNT} chats per workload (median; + means the estimate is high)\n`,
);
console.log(
	"| served model | workload | cl100k alone: median error | cl100k + calibration: median error after 50 | learned template, ratio | below 5 % from request | own tokenizer: median error | own + calibration after 50 |",
);
console.log("|---|---|---|---|---|---|---|---|");
for (const [family, served] of families) {
	for (const workload of workloads) {
		const list = chats(workload, COUNT, 7);
		const raw = await run("cl100k", served, list, false);
		const cal = await run("cl100k", served, list, true);
		const own = await run(family, served, list, false);
		const ownCal = await run(family, served, list, true);
		console.log(
			`| ${family} | ${workload} | ${pct(raw.bias)} (abs ${pct(raw.mae)}) | ${pct(cal.maeAfter50)} | ${cal.template} ${cal.ratio.toFixed(3)} | ${cal.settledAt < 0 ? "never" : cal.settledAt + 1} | ${pct(own.bias)} (abs ${pct(own.mae)}) | ${pct(ownCal.maeAfter50)} |`,
		);
	}
}
fx.remove();
