/**
 * Chats drawn from the corpus, the same for a given seed: a system prompt
 * sometimes, one to four turns, each message a few sentences or lines of one
 * workload's texts.
 */
import type { ChatMessage } from "./chat-templates.ts";
import { ENGLISH, JSON_TEXT, KOREAN, TYPESCRIPT } from "./corpus.ts";

export type Workload = "short" | "english" | "code" | "korean" | "mixed";

const sentences = (text: string) =>
	text
		.split(/(?<=[.!?])\s+|\n+/)
		.map((s) => s.trim())
		.filter((s) => s.length > 0);

const POOLS: Readonly<Record<Exclude<Workload, "mixed" | "short">, readonly string[]>> = {
	english: sentences(ENGLISH),
	code: [...TYPESCRIPT.split("\n").filter((l) => l.trim() !== ""), ...sentences(ENGLISH)],
	korean: KOREAN.split("\n").filter((l) => l.trim() !== ""),
};
const MIXED = [...POOLS.english, ...POOLS.code, ...POOLS.korean, ...JSON_TEXT.split("\n")];

/** Short chats: a one-line system prompt at most, and questions and answers of a sentence. */
const SYSTEM = [
	"You are a helpful assistant.",
	"You are a concise assistant. Answer briefly.",
	"You are an expert software engineer who explains things clearly and with examples.",
];
const QUESTIONS = [
	"What is the capital of France?",
	"Explain how a rate limiter works.",
	"Write a haiku about tokens.",
	"How do I reverse a list in Python?",
	"Summarise the plot of Hamlet in two sentences.",
	"What's the difference between TCP and UDP?",
	"Give me three tips for writing clean code.",
	"Why is the sky blue?",
	"Translate 'good morning' into Korean.",
	"What does GCRA stand for?",
];
const ANSWERS = [
	"Paris is the capital of France.",
	"A rate limiter counts requests or tokens per window and refuses when the budget is spent.",
	"Tokens flow like rain, budgets fill and drain again, the gateway keeps count.",
	"Use list.reverse() or slicing with [::-1].",
	"Sure, here is a short answer with some detail about the topic you asked for.",
];

function shortChats(count: number, next: () => number): ChatMessage[][] {
	const pick = (xs: readonly string[]) => xs[Math.floor(next() * xs.length)] ?? "";
	const out: ChatMessage[][] = [];
	for (let c = 0; c < count; c++) {
		const messages: ChatMessage[] = [];
		if (next() < 0.5) messages.push({ role: "system", content: pick(SYSTEM) });
		const turns = 1 + Math.floor(next() * 3);
		for (let t = 0; t < turns; t++) {
			if (t > 0) messages.push({ role: "assistant", content: pick(ANSWERS) });
			messages.push({ role: "user", content: pick(QUESTIONS) });
		}
		out.push(messages);
	}
	return out;
}

/** A small deterministic generator (mulberry32). */
export function random(seed: number): () => number {
	let a = seed >>> 0;
	return () => {
		a = (a + 0x6d2b79f5) >>> 0;
		let t = a;
		t = Math.imul(t ^ (t >>> 15), t | 1);
		t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
		return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
	};
}

/** `count` chats of one workload. */
export function chats(workload: Workload, count: number, seed = 1): ChatMessage[][] {
	const next = random(seed);
	if (workload === "short") return shortChats(count, next);
	const pool = workload === "mixed" ? MIXED : POOLS[workload];
	const pick = (n: number) => {
		const lines: string[] = [];
		for (let i = 0; i < n; i++) lines.push(pool[Math.floor(next() * pool.length)] ?? "");
		return lines.join(workload === "english" ? " " : "\n");
	};
	const out: ChatMessage[][] = [];
	for (let c = 0; c < count; c++) {
		const messages: ChatMessage[] = [];
		if (next() < 0.5) messages.push({ role: "system", content: pick(1 + Math.floor(next() * 2)) });
		const turns = 1 + Math.floor(next() * 4);
		for (let t = 0; t < turns; t++) {
			if (t > 0) messages.push({ role: "assistant", content: pick(1 + Math.floor(next() * 3)) });
			messages.push({ role: "user", content: pick(1 + Math.floor(next() * 5)) });
		}
		out.push(messages);
	}
	return out;
}
