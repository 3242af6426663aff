/**
 * A bounded map that forgets the least recently used half at a time: entries
 * go into a young generation; when it is full it becomes the old one and the
 * previous old one is dropped whole. A hit in the old generation moves the
 * entry back to the young one. No entry is ever deleted one by one, which in a
 * JavaScript Map leaves holes that make finding the oldest entry slower and
 * slower under a steady stream of new keys.
 */
export class GenerationalCache<K, V> {
	private young = new Map<K, V>();
	private old = new Map<K, V>();

	constructor(private readonly maxEntries: number) {}

	get(key: K): V | undefined {
		const hit = this.young.get(key);
		if (hit !== undefined) return hit;
		const aged = this.old.get(key);
		if (aged !== undefined) this.set(key, aged);
		return aged;
	}

	has(key: K): boolean {
		return this.young.has(key) || this.old.has(key);
	}

	set(key: K, value: V): void {
		if (this.young.size >= this.maxEntries / 2) {
			this.old = this.young;
			this.young = new Map();
		}
		this.young.set(key, value);
	}

	/** Entries held (at most `maxEntries`, counting a key in both generations twice). */
	get size(): number {
		return this.young.size + this.old.size;
	}
}
