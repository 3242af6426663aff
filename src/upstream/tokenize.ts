/**
 * Exact prompt counts from the model server: vLLM's `/tokenize` applies the
 * model's own chat template and tokenizer, and answers `{count, max_model_len,
 * tokens}`. One extra round trip, so the gateway asks only for long prompts.
 */

export interface TokenizeRequest {
	/** The replica to ask (its base URL). */
	readonly url: string;
	/** The model name the server serves. */
	readonly model: string;
	/** A chat's messages (and tools), or a completion's single text prompt. */
	readonly body:
		| { readonly messages: readonly unknown[]; readonly tools?: readonly unknown[] }
		| { readonly prompt: string };
	readonly timeoutMs: number;
	readonly requestId: string;
}

/** The server's count, or undefined when it did not give one in time (the estimate stands). */
export async function countWithServer(req: TokenizeRequest): Promise<number | undefined> {
	const payload =
		"messages" in req.body
			? {
					model: req.model,
					messages: req.body.messages,
					...(req.body.tools === undefined ? {} : { tools: req.body.tools }),
					add_generation_prompt: true,
				}
			: { model: req.model, prompt: req.body.prompt };
	try {
		const res = await fetch(`${req.url}/tokenize`, {
			method: "POST",
			headers: { "content-type": "application/json", "x-request-id": req.requestId },
			body: JSON.stringify(payload),
			signal: AbortSignal.timeout(req.timeoutMs),
		});
		if (!res.ok) {
			await res.body?.cancel().catch(() => {});
			return undefined;
		}
		const json: unknown = await res.json();
		if (json === null || typeof json !== "object" || !("count" in json)) return undefined;
		const count = json.count;
		return typeof count === "number" && Number.isInteger(count) && count >= 0 ? count : undefined;
	} catch {
		return undefined;
	}
}
