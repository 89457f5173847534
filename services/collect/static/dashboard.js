/** dashboard.js: polls GET /v1/stats once a second and draws it; the arithmetic lives in dashmath.js. */
import { drawLines } from "/static/charts.js";
import { Series, histogramDelta, quantile, rate, successRatio } from "/static/dashmath.js";
import { clock, duration, h, setPill } from "/static/ui.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const HISTORY = 120; // seconds of history on the charts
const WINDOW = 60; // snapshots (about seconds) behind the latency percentiles

const colors = Object.fromEntries(
  ["--series-1", "--series-2", "--series-3"].map((v) => [v, getComputedStyle(document.documentElement).getPropertyValue(v).trim()]),
);
const series = Object.fromEntries(["accepted", "dispatched", "delivered", "p50", "p99"].map((k) => [k, new Series(HISTORY)]));
const recent = []; // the last WINDOW + 1 snapshots
let previous = null;

const count = (n) => (n == null ? "–" : Math.round(n).toLocaleString());
const perSecond = (r) => (r == null ? "–" : r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString());

function nodeRow(node, total) {
  const status = h("span", {}, "");
  setPill(status, node.up ? "up" : "not answering", node.up ? "good" : "bad");
  const share = total ? (100 * node.connections) / total : 0;
  return h("tr", { "data-node": node.id },
    h("td", { class: "node" }, h("b", {}, node.id), " ", status, h("div", { class: "hint mono hide-narrow" }, node.url)),
    h("td", { class: "num connections" }, count(node.connections)),
    h("td", { class: "bar-cell hide-narrow" }, h("div", { class: "meter" }, h("div", { style: `width: ${share.toFixed(1)}%` }))),
    h("td", { class: "num" }, count(node.users)),
    h("td", { class: "num hide-narrow" }, count(node.delivered)));
}

function topicRow(topic, largest) {
  return h("tr", { "data-topic": topic.topic },
    h("td", { class: "topic mono" }, topic.topic),
    h("td", { class: "num subscribers" }, count(topic.subscribers)),
    h("td", { class: "bar-cell hide-narrow" }, h("div", { class: "meter" }, h("div", { style: `width: ${((100 * topic.subscribers) / largest).toFixed(1)}%` }))),
    h("td", { class: "num nodes" }, count(topic.nodes)));
}

function tierRow([tier, t]) {
  const state = h("span", {}, "");
  setPill(state, t.shedding ? "shed (429)" : "accepted", t.shedding ? "bad" : "good");
  return h("tr", { "data-tier": tier },
    h("td", {}, h("b", {}, tier)),
    h("td", { class: "num backlog" }, count(t.backlog)),
    h("td", { class: "num" }, t.backlog ? duration(t.age_ms) : "–"),
    h("td", { class: "shedding" }, state));
}

function webhookRow(endpoint, earlier) {
  const success = successRatio(earlier, endpoint) ?? successRatio(null, endpoint);
  const state = h("span", {}, "");
  if (endpoint.disabled) setPill(state, "disabled", "bad");
  const error = endpoint.last_error
    ? [h("span", { class: "mono" }, endpoint.last_error), h("div", { class: "hint" }, clock(endpoint.last_error_at))]
    : ["–"];
  return h("tr", { "data-endpoint": endpoint.id },
    h("td", { class: "endpoint" }, h("b", { class: "mono" }, endpoint.id), " ", state,
      h("div", { class: "hint mono" }, `${endpoint.owner} → ${endpoint.origin}`)),
    h("td", { class: "num success" }, success == null ? "–" : `${(100 * success).toFixed(1)}%`),
    h("td", { class: "num queued" }, count(endpoint.queued)),
    h("td", { class: "num failures hide-narrow" }, count(endpoint.failures)),
    h("td", { class: "num dropped hide-narrow" }, count(endpoint.dropped)),
    h("td", { class: "last-error" }, ...error));
}

function webhookRows(snap, earlier) {
  if (snap.webhooks == null) return [h("tr", {}, h("td", { colspan: "6", class: "empty" }, "Endpoints unknown: MongoDB does not answer."))];
  if (!snap.webhooks.length) return [h("tr", {}, h("td", { colspan: "6", class: "empty" }, "No webhook endpoint is registered."))];
  const before = new Map((earlier?.webhooks ?? []).map((e) => [e.id, e]));
  return snap.webhooks.map((e) => webhookRow(e, before.get(e.id) ?? null));
}

function render(snap) {
  const up = snap.nodes.filter((n) => n.up);
  const connections = up.reduce((sum, n) => sum + n.connections, 0);
  $("nodes-up").textContent = `${up.length}/${snap.nodes.length}`;
  $("connections").textContent = count(connections);
  $("users-online").textContent = count(snap.users_online);
  $("pending").textContent = count(snap.pending);
  $("accepted").textContent = count(snap.messages.accepted);
  $("delivered").textContent = count(snap.messages.delivered);
  $("nodes").replaceChildren(...(snap.nodes.length
    ? snap.nodes.map((n) => nodeRow(n, connections))
    : [h("tr", {}, h("td", { colspan: "5", class: "empty" }, "No push node is alive."))]));
  $("tiers").replaceChildren(...Object.entries(snap.tiers).map(tierRow));
  $("topics").replaceChildren(...(snap.topics.length
    ? snap.topics.map((t) => topicRow(t, snap.topics[0].subscribers))
    : [h("tr", {}, h("td", { colspan: "4", class: "empty" }, "No topic has a subscriber."))]));

  const seconds = previous && (snap.ts - previous.ts) / 1000;
  for (const key of ["accepted", "dispatched", "delivered"]) {
    series[key].push(previous && rate(previous.messages[key], snap.messages[key], seconds));
  }
  $("rate-in").textContent = perSecond(series.accepted.last);
  $("rate-out").textContent = perSecond(series.delivered.last);

  recent.push(snap);
  if (recent.length > WINDOW + 1) recent.shift();
  $("webhooks").replaceChildren(...webhookRows(snap, recent.length > 1 ? recent[0] : null));
  const lastMinute = recent.length > 1 ? histogramDelta(recent[0].latency, snap.latency) : snap.latency;
  const [p50, p90, p99] = [0.5, 0.9, 0.99].map((q) => quantile(lastMinute, q));
  series.p50.push(p50 == null ? null : p50 * 1000);
  series.p99.push(p99 == null ? null : p99 * 1000);
  $("p50").textContent = p50 == null ? "–" : duration(p50 * 1000);
  $("p90").textContent = p90 == null ? "–" : duration(p90 * 1000);
  $("p99").textContent = p99 == null ? "–" : duration(p99 * 1000);
  previous = snap;
  draw();
  $("updated").textContent = `Updated ${clock(snap.ts)}`;
}

function draw() {
  drawLines($("chart-rates"), [
    { values: series.accepted.values, color: colors["--series-1"] },
    { values: series.dispatched.values, color: colors["--series-3"] },
    { values: series.delivered.values, color: colors["--series-2"] },
  ], { slots: HISTORY });
  drawLines($("chart-latency"), [
    { values: series.p50.values, color: colors["--series-1"] },
    { values: series.p99.values, color: colors["--series-3"] },
  ], { slots: HISTORY, unit: " ms" });
}

async function poll() {
  try {
    const answer = await fetch("/v1/stats", { cache: "no-store", signal: AbortSignal.timeout(3000) });
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.error?.message ?? `status ${answer.status}`);
    render(body);
    $("banner").classList.remove("shown");
  } catch (error) {
    $("banner").textContent = `Stats unavailable: ${error.message}. Retrying…`;
    $("banner").classList.add("shown");
  } finally {
    setTimeout(poll, POLL_MS); // after the answer, so a slow cluster is never asked twice at once
  }
}

window.addEventListener("resize", draw);
poll();
