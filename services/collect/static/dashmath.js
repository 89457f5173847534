/**
 * dashmath.js: turning /v1/stats snapshots (cumulative totals) into what the dashboard plots.
 * Pure functions, free of the DOM, so node --test can check them.
 */

/** Per-second rate of a counter between two readings; a counter that went down (a node died or
 * restarted and took its count with it) counts as no traffic rather than negative traffic. */
export function rate(before, after, seconds) {
  if (before == null || after == null || !(seconds > 0)) return null;
  return Math.max(0, after - before) / seconds;
}

/** The latency histogram of what happened between two snapshots' histograms ({buckets, count}). */
export function histogramDelta(before, after) {
  const earlier = new Map(before.buckets);
  return {
    buckets: after.buckets.map(([le, n]) => [le, Math.max(0, n - (earlier.get(le) ?? 0))]),
    count: Math.max(0, after.count - before.count),
  };
}

/**
 * The q-quantile (0..1) of a histogram with cumulative buckets [[le, count], ...] (finite bounds,
 * ascending) and `count` observations in all, interpolating linearly inside the bucket as
 * Prometheus's histogram_quantile does. Beyond the last finite bound it answers that bound (the
 * histogram knows no more); null without observations.
 */
export function quantile({ buckets, count }, q) {
  if (!(count > 0) || !buckets.length) return null;
  const rank = q * count;
  let lower = 0;
  let below = 0;
  for (const [le, cumulative] of buckets) {
    const seen = Math.max(below, cumulative); // merged or clamped buckets may dip: keep them monotonic
    if (seen >= rank && seen > below) return lower + ((le - lower) * (rank - below)) / (seen - below);
    [lower, below] = [le, seen];
  }
  return buckets.at(-1)[0];
}

/** The last `capacity` values pushed: a chart's sliding window, bounded in memory. */
export class Series {
  constructor(capacity) {
    this.capacity = capacity;
    this.values = [];
  }

  push(value) {
    this.values.push(value);
    if (this.values.length > this.capacity) this.values.shift();
  }

  get last() {
    return this.values.at(-1) ?? null;
  }
}

/** The share of a webhook endpoint's attempts answered 2xx between two readings of its counts ({ok,
 * failed_attempts}; `before` null: since it was made); null when it made no attempt in between. */
export function successRatio(before, after) {
  const ok = after.ok - (before?.ok ?? 0);
  const tried = ok + after.failed_attempts - (before?.failed_attempts ?? 0);
  return tried > 0 ? ok / tried : null;
}
