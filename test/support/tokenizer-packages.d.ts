/** mistral-tokenizer-js ships no types: the parts the tests use. */
declare module "mistral-tokenizer-js" {
	interface MistralTokenizer {
		/** Token strings by id (SentencePiece pieces, `▁` for a space, `<0xNN>` byte tokens). */
		vocabById: string[];
		/** `"left right"` → merge priority (lower merges first). */
		merges: Map<string, number>;
		encode(prompt: string, addBosToken?: boolean, addPrecedingSpace?: boolean): number[];
	}
	const tokenizer: MistralTokenizer;
	export default tokenizer;
}
