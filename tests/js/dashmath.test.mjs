// Unit tests of the dashboard's arithmetic, with node's built-in runner: `node --test tests/js/`.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Series, histogramDelta, quantile, rate, successRatio } from "../../services/collect/static/dashmath.js";

describe("rate", () => {
  it("is the counter's increase per second", () => {
    assert.equal(rate(10, 40, 2), 15);
  });

  it("counts a counter that went down (a node died) as zero, not negative", () => {
    assert.equal(rate(40, 10, 1), 0);
  });

  it("is unknown when a reading is missing", () => {
    assert.equal(rate(null, 10, 1), null);
    assert.equal(rate(1, 10, 0), null);
  });
});

describe("quantile", () => {
  const histogram = { buckets: [[0.01, 50], [0.1, 90], [1, 100]], count: 100 };

  it("interpolates inside the bucket holding the rank", () => {
    assert.equal(quantile(histogram, 0.5), 0.01);
    assert.ok(Math.abs(quantile(histogram, 0.7) - 0.055) < 1e-12);
    assert.ok(Math.abs(quantile(histogram, 0.25) - 0.005) < 1e-12);
  });

  it("answers the last finite bound for ranks beyond it", () => {
    assert.equal(quantile({ buckets: [[0.01, 1]], count: 5 }, 0.99), 0.01);
  });

  it("is unknown without observations", () => {
    assert.equal(quantile({ buckets: [[0.01, 0]], count: 0 }, 0.5), null);
  });
});

describe("histogramDelta", () => {
  it("keeps only what happened between two snapshots", () => {
    const before = { buckets: [[0.01, 5], [0.1, 8]], count: 9 };
    const after = { buckets: [[0.01, 6], [0.1, 12]], count: 14 };
    assert.deepEqual(histogramDelta(before, after), { buckets: [[0.01, 1], [0.1, 4]], count: 5 });
  });

  it("never goes negative when a node's histogram disappears", () => {
    const before = { buckets: [[0.01, 5]], count: 5 };
    const after = { buckets: [[0.01, 2]], count: 2 };
    assert.deepEqual(histogramDelta(before, after), { buckets: [[0.01, 0]], count: 0 });
  });
});

describe("Series", () => {
  it("keeps only the last values up to its capacity", () => {
    const series = new Series(3);
    [1, 2, 3, 4].forEach((v) => series.push(v));
    assert.deepEqual(series.values, [2, 3, 4]);
    assert.equal(series.last, 4);
  });
});

describe("successRatio", () => {
  it("is the share of the attempts between two readings answered 2xx", () => {
    assert.equal(successRatio({ ok: 10, failed_attempts: 90 }, { ok: 40, failed_attempts: 100 }), 0.75);
  });

  it("counts from zero without an earlier reading", () => {
    assert.equal(successRatio(null, { ok: 1, failed_attempts: 3 }), 0.25);
  });

  it("is unknown when no attempt was made in between", () => {
    assert.equal(successRatio({ ok: 5, failed_attempts: 1 }, { ok: 5, failed_attempts: 1 }), null);
  });
});
