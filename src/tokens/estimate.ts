import type { ChatCompletionBody, ChatMessageBody, CompletionBody } from "../openai.ts";
import type { TokenCounter } from "./counter.ts";
import { CHAT_FRAMINGS, type ChatFraming, roleFraming } from "./framing.ts";

/** Per tool call: the framing around name and arguments. */
const TOKENS_PER_TOOL_CALL = 3;

/** A prompt's tokens: counted with the model's tokenizer, and given as token ids (exact). */
export interface PromptTokens {
	readonly counted: number;
	readonly exact: number;
}

export interface Estimate {
	/** Prompt tokens as admitted: the counted part times the calibration ratio, plus exact token ids. */
	readonly promptTokens: number;
	/** The part of the prompt counted with the tokenizer, before calibration. */
	readonly countedPromptTokens: number;
	/** Prompt tokens given as token ids (exact, never calibrated). */
	readonly exactPromptTokens: number;
	/** The calibration ratio applied to the counted part (1: none). */
	readonly ratio: number;
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

/**
 * The texts of a request that the estimate counts (message contents and text
 * parts, or the text prompts), for counting the long ones ahead.
 */
export function* promptTexts(body: ChatCompletionBody | CompletionBody): Iterable<string> {
	if ("messages" in body) {
		for (const m of body.messages) {
			const content = m.content;
			if (typeof content === "string") yield content;
			else if (content !== undefined && content !== null) {
				for (const part of content) if (typeof part.text === "string") yield part.text;
			}
		}
		return;
	}
	const prompt = body.prompt;
	if (typeof prompt === "string") yield prompt;
	else for (const item of prompt) if (typeof item === "string") yield item;
}

function toolCallTokens(counter: TokenCounter, calls: readonly unknown[] | undefined): number {
	if (calls === undefined) return 0;
	let n = 0;
	for (const call of calls) {
		n += TOKENS_PER_TOOL_CALL + counter.count(JSON.stringify(call) ?? "");
	}
	return n;
}

/**
 * Prompt tokens of a chat, including the chat template's framing (OpenAI's
 * unless another is given).
 */
export function chatPromptTokens(
	counter: TokenCounter,
	body: ChatCompletionBody,
	framing: ChatFraming = CHAT_FRAMINGS.openai,
): number {
	let n = framing.perPrompt;
	for (const m of body.messages) {
		n += roleFraming(framing, m.role) + contentTokens(counter, m.content);
		if (framing.countsRole) n += counter.count(m.role);
		if (framing.perName !== undefined && typeof m.name === "string")
			n += framing.perName + counter.count(m.name);
		n += toolCallTokens(counter, m.tool_calls);
	}
	if (body.tools !== undefined && body.tools.length > 0)
		n += counter.count(JSON.stringify(body.tools));
	return n;
}

/** A text completion's prompt: texts counted, token ids taken as they are. */
export function completionPromptParts(counter: TokenCounter, body: CompletionBody): PromptTokens {
	const prompt = body.prompt;
	if (typeof prompt === "string") return { counted: counter.count(prompt), exact: 0 };
	let counted = 0;
	let exact = 0;
	for (const item of prompt) {
		if (typeof item === "string") counted += counter.count(item);
		else if (typeof item === "number") exact += 1;
		else exact += item.length;
	}
	return { counted, exact };
}

/** Prompt tokens of a text completion: texts are counted, token ids taken as they are. */
export function completionPromptTokens(counter: TokenCounter, body: CompletionBody): number {
	const { counted, exact } = completionPromptParts(counter, body);
	return counted + exact;
}

/**
 * `count` times `ratio`, rounded up, ignoring floating-point dust: a ratio learned
 * as exactly 117/87 gives 117 for a count of 87, not 118.
 */
export function scaled(count: number, ratio: number): number {
	return Math.ceil(count * ratio - 1e-9);
}

/** The counted part of a prompt times the calibration ratio (rounded up), plus its exact part. */
export function calibratedPromptTokens(prompt: PromptTokens, ratio: number): number {
	return prompt.exact + (ratio === 1 ? prompt.counted : scaled(prompt.counted, ratio));
}

/**
 * Combines a prompt count with the completion allowance of the request. A
 * number is a counted prompt; `ratio` (self-calibration) scales its counted part.
 */
export function estimate(
	prompt: number | PromptTokens,
	body: { max_tokens?: number | null; max_completion_tokens?: number | null; n?: number | null },
	defaultMaxTokens: number,
	prompts = 1,
	ratio = 1,
): Estimate {
	const parts = typeof prompt === "number" ? { counted: prompt, exact: 0 } : prompt;
	const promptTokens = calibratedPromptTokens(parts, ratio);
	const asked = body.max_completion_tokens ?? body.max_tokens ?? undefined;
	const maxCompletionTokens = asked ?? defaultMaxTokens;
	// Every prompt of a batched text completion gets n choices of its own.
	const choices = (body.n ?? 1) * prompts;
	return {
		promptTokens,
		countedPromptTokens: parts.counted,
		exactPromptTokens: parts.exact,
		ratio,
		maxCompletionTokens,
		choices,
		defaultedMaxTokens: asked === undefined,
		totalTokens: promptTokens + choices * maxCompletionTokens,
	};
}
