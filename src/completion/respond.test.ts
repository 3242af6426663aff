import { describe, expect, it } from "bun:test";
import fc from "fast-check";
import { usageFrom } from "../upstream/sse.ts";
import { usageOfJson } from "./respond.ts";

/** The reference: the top-level usage of the parsed body. */
function reference(text: string) {
	try {
		const parsed: unknown = JSON.parse(text);
		return parsed !== null && typeof parsed === "object" && "usage" in parsed
			? usageFrom(parsed.usage)
			: undefined;
	} catch {
		return undefined;
	}
}

describe("usageOfJson", () => {
	it("reads vLLM's usage, also with fields after it", () => {
		const body = {
			id: "c1",
			choices: [{ index: 0, message: { role: "assistant", content: 'say "usage": {}' } }],
			usage: {
				prompt_tokens: 12,
				completion_tokens: 5,
				total_tokens: 17,
				prompt_tokens_details: null,
			},
			prompt_logprobs: null,
			kv_transfer_params: null,
		};
		expect(usageOfJson(JSON.stringify(body))).toEqual({ promptTokens: 12, completionTokens: 5 });
	});

	it("takes the top-level usage, never a nested one", () => {
		const nestedAfter =
			'{"usage":{"prompt_tokens":5,"completion_tokens":1},"kv_transfer_params":{"usage":{"prompt_tokens":999}}}';
		expect(usageOfJson(nestedAfter)).toEqual({ promptTokens: 5, completionTokens: 1 });
		expect(usageOfJson('{"nested":{"usage":{"prompt_tokens":42}}}')).toBeUndefined();
		expect(
			usageOfJson('{"usage":{"prompt_tokens":3,"completion_tokens":2}} trailing'),
		).toBeUndefined();
	});

	it("agrees with parsing the whole body, for any JSON object", () => {
		const usage = fc.record({
			prompt_tokens: fc.nat(),
			completion_tokens: fc.nat(),
		});
		const value = fc.oneof(fc.jsonValue({ maxDepth: 2 }), usage, fc.record({ usage }));
		const body = fc.dictionary(fc.constantFrom("usage", "id", "choices", "x", "kv"), value);
		fc.assert(
			fc.property(body, (b) => {
				const text = JSON.stringify(b);
				expect(usageOfJson(text)).toEqual(reference(text));
			}),
			{ numRuns: 3000 },
		);
	});
});
