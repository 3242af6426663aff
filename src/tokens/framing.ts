import type { ChatTemplateName } from "../config/schema.ts";

/**
 * What a chat template adds around the messages, in tokens of the model's own
 * tokenizer. The estimate is the messages' content counted with the model's
 * tokenizer plus these numbers; self-calibration absorbs what is left (a
 * template's default system prompt, a tokenizer of another family).
 */
export interface ChatFraming {
	readonly template: ChatTemplateName;
	/** Once per prompt: the BOS token and the priming of the reply. */
	readonly perPrompt: number;
	/** Framing per message by role (other roles count as `user`), the role's own name excluded. */
	readonly perRole: Readonly<Record<"system" | "user" | "assistant", number>>;
	/** Whether the role's name is written into the prompt (then it is counted with the tokenizer). */
	readonly countsRole: boolean;
	/** Per message with a `name`: the framing around it; undefined when the template drops names. */
	readonly perName: number | undefined;
}

/**
 * The numbers below were measured by rendering each template and counting it
 * with the family's own tokenizer (llama-tokenizer-js, mistral-tokenizer-js,
 * llama3-tokenizer-js): rendered tokens minus the tokens of the message
 * contents counted alone (src/tokens/framing.test.ts checks them).
 */
export const CHAT_FRAMINGS: Readonly<Record<ChatTemplateName, ChatFraming>> = {
	/**
	 * OpenAI's published counting for chat models (ChatML underneath): 3 per
	 * message plus the role, 1 more with a name, 3 to prime the reply.
	 */
	openai: {
		template: "openai",
		perPrompt: 3,
		perRole: { system: 3, user: 3, assistant: 3 },
		countsRole: true,
		perName: 1,
	},
	/**
	 * Llama 2 chat: `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>`.
	 * Every user turn opens with BOS (1) + `[INST]` (▁[ INST ], 3) and closes
	 * with ` [/INST]` (▁[ / INST ], 4): 8. An answer adds ` ` and `</s>`: 2. The
	 * system prompt's `<<SYS>>\n` (5) and `\n<</SYS>>\n\n` (7), plus one `▁` the
	 * content does not get after a newline: 13. Roles and names are not written.
	 */
	llama2: {
		template: "llama2",
		perPrompt: 0,
		perRole: { system: 13, user: 8, assistant: 2 },
		countsRole: false,
		perName: undefined,
	},
	/**
	 * Llama 3 instruct: `<|begin_of_text|>` once (1), per message
	 * `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`
	 * (4 + the role, one token for system/user/assistant), and the reply primed
	 * with `<|start_header_id|>assistant<|end_header_id|>\n\n` (4): 5 per prompt.
	 */
	llama3: {
		template: "llama3",
		perPrompt: 5,
		perRole: { system: 4, user: 4, assistant: 4 },
		countsRole: true,
		perName: undefined,
	},
	/**
	 * Mistral 7B instruct (v0.1/v0.2, SentencePiece): `<s>` once (1), per user
	 * turn `[INST] {user} [/INST]` (▁[ INST ] and ▁[ / INST ]: 7), an answer
	 * followed by `</s>` (1). A system prompt is put before the first user
	 * message with a blank line (`\n\n`: 2).
	 */
	mistral: {
		template: "mistral",
		perPrompt: 1,
		perRole: { system: 2, user: 7, assistant: 1 },
		countsRole: false,
		perName: undefined,
	},
	/**
	 * ChatML (Qwen and others): `<|im_start|>{role}\n{content}<|im_end|>\n` per
	 * message (4 + the role), `<|im_start|>assistant\n` to prime the reply (3).
	 */
	chatml: {
		template: "chatml",
		perPrompt: 3,
		perRole: { system: 4, user: 4, assistant: 4 },
		countsRole: true,
		perName: undefined,
	},
};

/** Framing of one message of `role`, without the role's own tokens. */
export function roleFraming(framing: ChatFraming, role: string): number {
	return role === "system" || role === "assistant" ? framing.perRole[role] : framing.perRole.user;
}
