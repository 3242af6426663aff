import { Histogram, type HistogramConfiguration } from "prom-client";

/** What one observation costs on the request path: a few additions, no label hashing. */
export interface Observer {
	observe(value: number): void;
}

interface Series {
	readonly labels: Record<string, string>;
	/** Observations per bucket (not cumulative); the last slot is above every bound. */
	readonly counts: Float64Array;
	sum: number;
	count: number;
}

function zero(s: Series): void {
	s.counts.fill(0);
	s.sum = 0;
	s.count = 0;
}

/** A value as prom-client's exposition writes it. */
interface ExportedValue {
	labels: Record<string, string | number>;
	sharedLabels: Record<string, string>;
	value: number;
	metricName: string;
	exemplar: null | undefined;
}

/**
 * A prom-client Histogram whose series can be bound once to their label values:
 * observing a bound series is array arithmetic instead of prom-client's label
 * hashing on every call. Bound series are written out with the others when the
 * registry is scraped, in prom-client's own format.
 */
export class BoundHistogram<T extends string> extends Histogram<T> {
	private readonly bounds: readonly number[];
	private readonly series = new Map<string, Series>();
	private readonly metricName: string;
	private readonly labelNames: readonly string[];

	constructor(config: HistogramConfiguration<T> & { buckets: number[] }) {
		super(config);
		this.metricName = config.name;
		this.labelNames = config.labelNames ?? [];
		this.bounds = [...config.buckets].sort((a, b) => a - b);
	}

	/** The series of these label values, for observing on the request path. */
	bind(labels: Record<T, string>): Observer {
		const key = JSON.stringify(labels);
		let s = this.series.get(key);
		if (s === undefined) {
			s = {
				labels: { ...labels },
				counts: new Float64Array(this.bounds.length + 1),
				sum: 0,
				count: 0,
			};
			this.series.set(key, s);
		}
		const series = s;
		const bounds = this.bounds;
		return {
			observe(value: number): void {
				if (!Number.isFinite(value)) return;
				series.sum += value;
				series.count++;
				let i = 0;
				while (i < bounds.length && value > (bounds[i] ?? Number.POSITIVE_INFINITY)) i++;
				series.counts[i] = (series.counts[i] ?? 0) + 1;
			},
		};
	}

	/**
	 * Zeroes every series in place: observers bound before keep counting into
	 * the same series, and a series with no observations is not written out.
	 */
	override reset(): void {
		super.reset();
		// The base constructor resets before this class has set its fields.
		if (this.series === undefined) return;
		for (const s of this.series.values()) zero(s);
	}

	/** Removes the series of these label values (zeroed in place, as `reset`). */
	override remove(...args: [Partial<Record<T, string | number>>] | string[]): void {
		const [first] = args;
		const wanted: Record<string, string> = {};
		if (typeof first === "object") {
			super.remove(first);
			for (const [k, v] of Object.entries(first)) wanted[k] = String(v);
		} else {
			const values = args.filter((a): a is string => typeof a === "string");
			super.remove(...values);
			this.labelNames.forEach((name, i) => {
				const v = values[i];
				if (v !== undefined) wanted[name] = v;
			});
		}
		for (const series of this.series.values()) {
			const same = Object.entries(wanted).every(([k, v]) => series.labels[k] === v);
			if (same && Object.keys(series.labels).length === Object.keys(wanted).length) zero(series);
		}
	}

	/** prom-client's exposition: its own series, then the bound ones. */
	async getForPromString(): Promise<{ values: ExportedValue[] }> {
		const proto: unknown = Object.getPrototypeOf(BoundHistogram.prototype);
		const base =
			proto !== null &&
			typeof proto === "object" &&
			"getForPromString" in proto &&
			typeof proto.getForPromString === "function"
				? ((await proto.getForPromString.call(this)) as { values: ExportedValue[] })
				: { values: [] };
		const name = this.metricName;
		const values = [...base.values];
		for (const s of this.series.values()) {
			if (s.count === 0) continue;
			let acc = 0;
			for (let i = 0; i < this.bounds.length; i++) {
				acc += s.counts[i] ?? 0;
				values.push({
					labels: { le: this.bounds[i] ?? 0 },
					sharedLabels: s.labels,
					value: acc,
					metricName: `${name}_bucket`,
					exemplar: null,
				});
			}
			values.push(
				{
					labels: { le: "+Inf" },
					sharedLabels: s.labels,
					value: s.count,
					metricName: `${name}_bucket`,
					exemplar: null,
				},
				{
					labels: {},
					sharedLabels: s.labels,
					value: s.sum,
					metricName: `${name}_sum`,
					exemplar: undefined,
				},
				{
					labels: {},
					sharedLabels: s.labels,
					value: s.count,
					metricName: `${name}_count`,
					exemplar: undefined,
				},
			);
		}
		return { ...base, values };
	}
}

/**
 * Increments summed locally and handed to a prom-client counter or gauge when
 * the registry is scraped (its `collect`), so the request path adds numbers
 * instead of hashing labels.
 */
export class Tally {
	private pending = 0;
	/** Whether the series has been published (a gauge back at zero still shows its series). */
	private published = false;
	private touched = false;

	constructor(private readonly target: { inc(value: number): void }) {}

	inc(value = 1): void {
		this.pending += value;
		this.touched = true;
	}

	dec(value = 1): void {
		this.pending -= value;
		this.touched = true;
	}

	/** Hands what was added since the last scrape to the counter or gauge. */
	flush(): void {
		if (!this.touched || (this.pending === 0 && this.published)) return;
		this.published = true;
		const n = this.pending;
		this.pending = 0;
		this.target.inc(n);
	}
}
