/**
 * Texts of the kinds callers send: English prose, Korean with code (as in the
 * operators' own runbooks), TypeScript and JSON. Used to check that token
 * counters count as the reference tokenizers do, and to measure estimate error.
 */

export const ENGLISH = `The gateway stands in front of the model servers and spends every caller's token budget per model: tokens per minute, per hour and per day, and concurrent requests. Before a request reaches vLLM, the gateway estimates how many tokens it will cost, reserves that much from each window, and forwards it. When the response ends, the reservation is settled to what the model server reports it actually used, and the difference is refunded. A caller who spends the budget gets 429 Too Many Requests with a Retry-After header that says when enough tokens will be back.

Operators change limits without restarting anything; the change is in force on every replica within a second. If Redis goes away, the failure policy decides: keep serving with local limits, refuse everything, or let requests through unlimited.`;

export const KOREAN = `## 토큰 기반 속도 제한

이 게이트웨이는 vLLM 모델 서버 앞에서 사용자별, 모델별 토큰 사용량을 제한합니다. 분당, 시간당, 일일 토큰 한도와 동시 요청 수를 관리하며, 여러 복제본이 Redis를 통해 같은 예산을 공유합니다.

### 설정 예시

\`\`\`yaml
token:
  rate-limit:
    models:
      llama2-7b:
        max-tokens-per-minute: 2000   # 분당 최대 토큰
        max-tokens-per-hour: 20000    # 시간당 최대 토큰
        max-concurrent-requests: 10   # 동시 요청 제한
\`\`\`

요청이 한도를 넘으면 HTTP 429 응답과 함께 \`Retry-After\` 헤더가 반환됩니다. 문제가 생기면 \`redis-cli ping\`으로 Redis 연결을 확인하고, \`/actuator/prometheus\`에서 \`token_rate_limit_exceeded_total\` 지표를 살펴보세요.`;

export const TYPESCRIPT = `import { Elysia, t } from "elysia";

/** Remaining tokens of one window, never below zero. */
export function remaining(limit: number, used: number): number {
	return Math.max(0, limit - used);
}

export class Budget {
	private readonly windows = new Map<string, { limit: number; used: number }>();

	spend(window: string, tokens: number): boolean {
		const w = this.windows.get(window) ?? { limit: 2_000, used: 0 };
		if (w.used + tokens > w.limit) return false;
		w.used += tokens;
		this.windows.set(window, w);
		return true;
	}
}

const app = new Elysia().post("/v1/chat/completions", ({ body }) => body, {
	body: t.Object({ model: t.String(), messages: t.Array(t.Unknown()) }),
});
export default app;
`;

export const JSON_TEXT = JSON.stringify(
	{
		model: "llama2-7b",
		usage: { prompt_tokens: 57, completion_tokens: 128, total_tokens: 185 },
		choices: [
			{
				index: 0,
				message: { role: "assistant", content: "안녕하세요! How can I help?" },
				finish_reason: "stop",
			},
		],
		limits: { "max-tokens-per-minute": 2000, "max-tokens-per-day": 200000, ratio: 1.23 },
	},
	null,
	2,
);

export const CORPUS: Readonly<Record<string, string>> = {
	english: ENGLISH,
	korean: KOREAN,
	typescript: TYPESCRIPT,
	json: JSON_TEXT,
};

/** Paragraphs and lines of every text: many small texts of every kind. */
export function corpusPieces(): string[] {
	const out: string[] = [];
	for (const text of Object.values(CORPUS)) {
		for (const para of text.split(/\n\n+/)) if (para.trim() !== "") out.push(para);
		for (const line of text.split("\n")) if (line.trim() !== "") out.push(line);
	}
	return out;
}
