import { CHAT_TEMPLATES } from "../config/schema.ts";
import type { ChatCompletionBody, ChatMessageBody, CompletionBody } from "../openai.ts";
import type { TokenCounter } from "./counter.ts";
import { CHAT_FRAMINGS, type ChatFraming, roleFraming } from "./framing.ts";

/** Per tool call: the framing around name and arguments. */
const TOKENS_PER_TOOL_CALL = 3;

/**
 * A prompt's tokens in parts: what was counted with the model's tokenizer (the
 * messages' contents, names, tools), the chat template's framing for each
 * candidate template, and what was given as token ids (exact).
 */
export interface PromptParts {
	readonly content: number;
	/** Framing tokens the prompt would take with each of CHAT_TEMPLATES (same order). */
	readonly framings: readonly number[];
	/** Index in CHAT_TEMPLATES of the model's own template. */
	readonly configured: number;
	readonly exact: number;
}

/** The prompt's tokens without calibration: contents and the model's own framing, plus token ids. */
export function rawPromptTokens(parts: PromptParts): number {
	return parts.exact + parts.content + (parts.framings[parts.configured] ?? 0);
}

export interface Estimate {
	/** Prompt tokens as admitted (calibrated, or counted by the model server). */
	readonly promptTokens: number;
	/** The prompt as counted here, before calibration (token ids excluded). */
	readonly countedPromptTokens: number;
	/** Prompt tokens given as token ids (exact, never calibrated). */
	readonly exactPromptTokens: number;
	/** The calibration ratio applied to the counted part (1: none). */
	readonly ratio: number;
	/** The parts the estimate was made of (self-calibration learns from them). */
	readonly parts: PromptParts;
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

/** Framing tokens a chat takes with `framing`, role and name tokens included where it writes them. */
function framingTokens(
	counter: TokenCounter,
	body: ChatCompletionBody,
	framing: ChatFraming,
): number {
	let n = framing.perPrompt;
	for (const m of body.messages) {
		const name = typeof m.name === "string" ? counter.count(m.name) : undefined;
		n += messageFraming(framing, m.role, framing.countsRole ? counter.count(m.role) : 0, name);
	}
	return n;
}

/** One message's framing with `framing`, given its role's and name's token counts. */
function messageFraming(
	framing: ChatFraming,
	role: string,
	roleTokens: number,
	nameTokens: number | undefined,
): number {
	let n = roleFraming(framing, role);
	if (framing.countsRole) n += roleTokens;
	if (framing.perName !== undefined && nameTokens !== undefined) n += framing.perName + nameTokens;
	return n;
}

/** A chat's contents: message texts, tool calls and tool definitions. */
function chatContentTokens(counter: TokenCounter, body: ChatCompletionBody): number {
	let n = 0;
	for (const m of body.messages) {
		n += contentTokens(counter, m.content) + toolCallTokens(counter, m.tool_calls);
	}
	if (body.tools !== undefined && body.tools.length > 0)
		n += counter.count(JSON.stringify(body.tools));
	return n;
}

const TEMPLATE_INDEX = new Map(CHAT_TEMPLATES.map((t, i) => [t, i]));

const FRAMINGS = CHAT_TEMPLATES.map((t) => CHAT_FRAMINGS[t]);

/** A chat's prompt in parts, `framing` being the model's own template. */
export function chatPromptParts(
	counter: TokenCounter,
	body: ChatCompletionBody,
	framing: ChatFraming = CHAT_FRAMINGS.openai,
): PromptParts {
	// One pass over the messages for every template: role and name counted once each.
	const framings = FRAMINGS.map((f) => f.perPrompt);
	for (const m of body.messages) {
		const role = counter.count(m.role);
		const name = typeof m.name === "string" ? counter.count(m.name) : undefined;
		for (let i = 0; i < FRAMINGS.length; i++) {
			const f = FRAMINGS[i];
			if (f !== undefined) framings[i] = (framings[i] ?? 0) + messageFraming(f, m.role, role, name);
		}
	}
	return {
		content: chatContentTokens(counter, body),
		framings,
		configured: TEMPLATE_INDEX.get(framing.template) ?? 0,
		exact: 0,
	};
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
	return chatContentTokens(counter, body) + framingTokens(counter, body, framing);
}

const NO_FRAMING: readonly number[] = CHAT_TEMPLATES.map(() => 0);

/** A text completion's prompt in parts: texts counted, token ids taken as they are, no framing. */
export function completionPromptParts(counter: TokenCounter, body: CompletionBody): PromptParts {
	const prompt = body.prompt;
	let content = 0;
	let exact = 0;
	if (typeof prompt === "string") content = counter.count(prompt);
	else {
		for (const item of prompt) {
			if (typeof item === "string") content += counter.count(item);
			else if (typeof item === "number") exact += 1;
			else exact += item.length;
		}
	}
	return { content, framings: NO_FRAMING, configured: 0, exact };
}

/** Prompt tokens of a text completion: texts are counted, token ids taken as they are. */
export function completionPromptTokens(counter: TokenCounter, body: CompletionBody): number {
	return rawPromptTokens(completionPromptParts(counter, body));
}

/**
 * `count` times `ratio`, rounded up, ignoring floating-point dust: a ratio learned
 * as exactly 117/87 gives 117 for a count of 87, not 118.
 */
export function scaled(count: number, ratio: number): number {
	return Math.ceil(count * ratio - 1e-9);
}

/**
 * Combines a prompt (a count, or its parts) with the completion allowance of
 * the request. `applied` is the prompt as admitted when calibration or the
 * model server changed it.
 */
export function estimate(
	prompt: number | PromptParts,
	body: { max_tokens?: number | null; max_completion_tokens?: number | null; n?: number | null },
	defaultMaxTokens: number,
	prompts = 1,
	applied?: { readonly tokens: number; readonly ratio: number },
): Estimate {
	const parts: PromptParts =
		typeof prompt === "number"
			? { content: prompt, framings: NO_FRAMING, configured: 0, exact: 0 }
			: prompt;
	const raw = rawPromptTokens(parts);
	const promptTokens = applied?.tokens ?? raw;
	const asked = body.max_completion_tokens ?? body.max_tokens ?? undefined;
	const maxCompletionTokens = asked ?? defaultMaxTokens;
	// Every prompt of a batched text completion gets n choices of its own.
	const choices = (body.n ?? 1) * prompts;
	return {
		promptTokens,
		countedPromptTokens: raw - parts.exact,
		exactPromptTokens: parts.exact,
		ratio: applied?.ratio ?? 1,
		parts,
		maxCompletionTokens,
		choices,
		defaultedMaxTokens: asked === undefined,
		totalTokens: promptTokens + choices * maxCompletionTokens,
	};
}
