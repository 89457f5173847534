/** demo.js: the demo page, a thin shell around PushClient and collect's development routes. */
import { PushClient } from "/static/pushclient.js";
import { clock, duration, h, postJson, setPill } from "/static/ui.js";

const $ = (id) => document.getElementById(id);
const MAX_SHOWN = 200; // the feed keeps the newest messages only
const USER_PATTERN = "[A-Za-z0-9_.@\\-]{1,128}";
const TOPIC_PATTERN = "[A-Za-z0-9_.:@\\-]{1,128}";

let client = null;
let received = 0;
const wanted = new Set(); // the topics the page subscribes to, on every connection
let granted = new Set(); // the topics the current token's claim grants

function log(text) {
  $("log").prepend(h("li", {}, h("time", {}, clock(Date.now())), text));
  console.info(text); // the same line in the browser's console, where a test or a developer's tools can read it
}

/** A topic or broadcast message's label in the feed (null for a message to the user). */
function kindOf({ topic, broadcast }) {
  if (broadcast) return { kind: "broadcast", label: "broadcast" };
  if (topic != null) return { kind: "topic", label: `topic ${topic}` };
  return null;
}

function show(detail) {
  const { id, payload, latencyMs, offset } = detail;
  $("messages").querySelector(".empty")?.remove();
  const text = typeof payload === "object" && payload !== null && "text" in payload ? String(payload.text) : JSON.stringify(payload);
  const fanout = kindOf(detail);
  const item = h("li", { "data-id": id, ...(fanout && { class: fanout.kind }), ...(offset !== null && { "data-offset": offset }) },
    h("span", { class: "text" }, text),
    h("span", { class: "latency", title: "now − ts" }, duration(Math.max(0, latencyMs))),
    h("span", { class: "meta" },
      ...(fanout ? [h("span", { class: `tag ${fanout.kind}` }, fanout.label)] : []),
      ...(offset !== null ? [h("span", { class: "mono", title: "offset in its topic (broadcasts: in theirs)" }, `#${offset}`)] : []),
      h("span", { class: "mono" }, id), h("span", {}, `via ${client?.node ?? "?"}`), h("span", {}, clock(Date.now()))));
  $("messages").prepend(item);
  while ($("messages").children.length > MAX_SHOWN) $("messages").lastElementChild.remove();
  $("received").textContent = String(++received);
}

function chipOf(topic) {
  return [...$("topics").children].find((c) => c.dataset.topic === topic);
}

/** Show a topic's chip (created on first use) with its state ("asking", "subscribed", "refused", ...). */
function mark(topic, state, tone) {
  let chip = chipOf(topic);
  if (!chip) {
    const drop = h("button", { type: "button", class: "secondary", title: `unsubscribe from ${topic}` }, "×");
    drop.addEventListener("click", () => unsubscribe(topic));
    chip = h("li", { "data-topic": topic }, h("span", { class: "mono" }, topic), h("span", { class: "pill" }), h("span", { class: "recovery hint" }), drop);
    $("topics").append(chip);
  }
  setPill(chip.querySelector(".pill"), state, tone);
}

/** After a reconnect: whether the node sent what a topic ("*": the broadcasts) missed, or left a gap. */
function recovery(topic, text) {
  const chip = chipOf(topic);
  if (chip) chip.querySelector(".recovery").textContent = text;
  log(`${topic === "*" ? "broadcasts" : topic}: ${text}`);
}

function connect(userId) {
  client = new PushClient({
    getToken: async () => {
      const topics = [...wanted];
      const { token } = await postJson("/dev/tokens", { user_id: userId, ttl_seconds: 3600, topics });
      granted = new Set(topics);
      return token;
    },
  });
  client.addEventListener("open", ({ detail }) => {
    setPill($("status"), "connected", "good");
    $("node").replaceChildren("on node ", h("b", { id: "node-id" }, detail.node));
    log(`connected as ${detail.userId} to ${detail.node} (${detail.url})`);
  });
  client.addEventListener("message", ({ detail }) => show(detail));
  client.addEventListener("subscribed", ({ detail }) => {
    for (const topic of detail.topics) if (wanted.has(topic)) mark(topic, "subscribed", "good");
    log(`subscribed to ${detail.topics.join(", ")}`);
  });
  client.addEventListener("forbidden", ({ detail }) => {
    for (const topic of detail.topics) {
      wanted.delete(topic);
      mark(topic, "refused", "bad");
    }
    log(`refused: ${detail.topics.join(", ")}`);
  });
  client.addEventListener("recovered", ({ detail }) => recovery(detail.topic, `recovered ${detail.missed} missed message${detail.missed === 1 ? "" : "s"}`));
  client.addEventListener("gap", ({ detail }) => recovery(detail.topic, "gap: reload"));
  client.addEventListener("join", ({ detail }) => log(`${detail.userId} joined ${detail.topic}`));
  client.addEventListener("leave", ({ detail }) => log(`${detail.userId} left ${detail.topic}`));
  client.addEventListener("close", ({ detail }) => {
    $("duplicates").textContent = String(client.duplicates);
    $("node").textContent = "";
    for (const topic of wanted) mark(topic, "not subscribed", "");
    const lost = `link lost (${detail.code}${detail.reason ? `: ${detail.reason}` : ""})`;
    if (detail.retryInMs !== null) {
      setPill($("status"), "reconnecting", "warn");
      log(`${lost}, retrying in ${(detail.retryInMs / 1000).toFixed(1)} s`);
    } else if (client.state === "offline") {
      setPill($("status"), "offline", "warn");
      log(`${lost}, offline: reconnecting once the network is back`);
    } else {
      setPill($("status"), "disconnected", "");
      log(`closed (${detail.code})`);
    }
  });
  client.addEventListener("error", ({ detail }) => log(`error: ${detail.error.message}`));
  client.subscribe([...wanted]);
  client.start();
  setPill($("status"), "connecting", "warn");
  $("connect").textContent = "Disconnect";
  $("user").disabled = true;
}

function disconnect() {
  client.stop();
  client = null;
  $("connect").textContent = "Connect";
  $("user").disabled = false;
}

function subscribe(topic) {
  if (wanted.has(topic)) return;
  wanted.add(topic);
  mark(topic, client ? "asking" : "on connect", "warn");
  if (!client) return; // granted by the token and subscribed when the page connects
  if (granted.has(topic)) {
    client.subscribe([topic]);
  } else {
    log(`getting a token that grants ${topic}, then reconnecting`);
    disconnect();
    connect($("user").value.trim());
  }
}

function unsubscribe(topic) {
  wanted.delete(topic);
  client?.unsubscribe([topic]);
  chipOf(topic)?.remove();
}

$("connect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (client) disconnect();
  else connect($("user").value.trim());
});

$("topic-form").addEventListener("submit", (event) => {
  event.preventDefault();
  subscribe($("topic").value.trim());
});

$("user").addEventListener("input", () => {
  if ($("kind").value === "user") $("to").value = $("user").value;
});

$("kind").addEventListener("change", () => {
  const kind = $("kind").value;
  $("to").disabled = kind === "broadcast";
  $("to").pattern = kind === "topic" ? TOPIC_PATTERN : USER_PATTERN;
  $("to").value = kind === "topic" ? $("topic").value : kind === "user" ? $("user").value : "";
  $("to-label").textContent = { user: "To user", topic: "Topic", broadcast: "To every connected socket" }[kind];
});

/** The POST /v1/messages body the send form describes. */
function message(payload) {
  const kind = $("kind").value;
  const to = $("to").value.trim();
  if (kind === "topic") return { topic: to, payload };
  if (kind === "broadcast") return { broadcast: true, payload };
  return { user_id: to, payload };
}

$("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("send").disabled = true;
  try {
    const { id } = await postJson("/dev/messages", message({ text: $("text").value }));
    $("sent").textContent = `Accepted as ${id}.`;
  } catch (error) {
    $("sent").textContent = `Not sent: ${error.message}`;
  } finally {
    $("send").disabled = false;
  }
});

// Messages dropped as duplicates are counted by the client; keep the counter fresh.
setInterval(() => client && ($("duplicates").textContent = String(client.duplicates)), 1000);
