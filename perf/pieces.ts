/** Splits a text into chat-message-sized pieces (paragraphs joined up to ~1,500 chars). */
export function pieces(text: string, max = 1500, separator: RegExp = /\n\n+/): string[] {
	const out: string[] = [];
	let cur = "";
	for (const para of text.split(separator)) {
		if (cur.length + para.length > max && cur.length > 0) {
			out.push(cur);
			cur = "";
		}
		cur += (cur.length > 0 ? "\n\n" : "") + para;
	}
	if (cur.length > 0) out.push(cur);
	return out;
}
