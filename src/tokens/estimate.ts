import type { ChatCompletionBody, ChatMessageBody, CompletionBody } from "../openai.ts";
import type { TokenCounter } from "./counter.ts";

/**
 * Chat-template overhead, following OpenAI's published counting for chat
 * models: every message costs 3 tokens of framing plus its role (and 1 more
 * when it carries a name), and the reply is primed with 3.
 */
const TOKENS_PER_MESSAGE = 3;
const TOKENS_PER_NAME = 1;
const REPLY_PRIMING = 3;
/** Per tool call: the framing around name and arguments. */
const TOKENS_PER_TOOL_CALL = 3;

export interface Estimate {
	readonly promptTokens: number;
	/** Completion allowance per choice. */
	readonly maxCompletionTokens: number;
	readonly choices: number;
	/** Whether the allowance came from the model's default (then it is sent upstream). */
	readonly defaultedMaxTokens: boolean;
	/** Tokens reserved before the call: prompt + choices × allowance. */
	readonly totalTokens: number;
}

function contentTokens(counter: TokenCounter, content: ChatMessageBody["content"]): number {
	if (content === undefined || content === null) return 0;
	if (typeof content === "string") return counter.count(content);
	let n = 0;
	for (const part of content) if (typeof part.text === "string") n += counter.count(part.text);
	return n;
}

function toolCallTokens(counter: TokenCounter, calls: readonly unknown[] | undefined): number {
	if (calls === undefined) return 0;
	let n = 0;
	for (const call of calls) {
		n += TOKENS_PER_TOOL_CALL + counter.count(JSON.stringify(call) ?? "");
	}
	return n;
}

/** Prompt tokens of a chat, including the template's per-message framing. */
export function chatPromptTokens(counter: TokenCounter, body: ChatCompletionBody): number {
	let n = REPLY_PRIMING;
	for (const m of body.messages) {
		n += TOKENS_PER_MESSAGE + counter.count(m.role) + contentTokens(counter, m.content);
		if (typeof m.name === "string") n += TOKENS_PER_NAME + counter.count(m.name);
		n += toolCallTokens(counter, m.tool_calls);
	}
	if (body.tools !== undefined && body.tools.length > 0)
		n += counter.count(JSON.stringify(body.tools));
	return n;
}

/** Prompt tokens of a text completion: texts are counted, token ids taken as they are. */
export function completionPromptTokens(counter: TokenCounter, body: CompletionBody): number {
	const prompt = body.prompt;
	if (typeof prompt === "string") return counter.count(prompt);
	let n = 0;
	for (const item of prompt) {
		if (typeof item === "string") n += counter.count(item);
		else if (typeof item === "number") n += 1;
		else n += item.length;
	}
	return n;
}

/** Combines a prompt count with the completion allowance of the request. */
export function estimate(
	promptTokens: number,
	body: { max_tokens?: number | null; max_completion_tokens?: number | null; n?: number | null },
	defaultMaxTokens: number,
	prompts = 1,
): Estimate {
	const asked = body.max_completion_tokens ?? body.max_tokens ?? undefined;
	const maxCompletionTokens = asked ?? defaultMaxTokens;
	// Every prompt of a batched text completion gets n choices of its own.
	const choices = (body.n ?? 1) * prompts;
	return {
		promptTokens,
		maxCompletionTokens,
		choices,
		defaultedMaxTokens: asked === undefined,
		totalTokens: promptTokens + choices * maxCompletionTokens,
	};
}
