/** demo.js: the demo page, a thin shell around PushClient and collect's development routes. */
import { PushClient } from "/static/pushclient.js";
import { clock, duration, h, postJson, setPill } from "/static/ui.js";

const $ = (id) => document.getElementById(id);
const MAX_SHOWN = 200; // the feed keeps the newest messages only

let client = null;
let received = 0;

function log(text) {
  $("log").prepend(h("li", {}, h("time", {}, clock(Date.now())), text));
}

function show({ id, payload, latencyMs }) {
  $("messages").querySelector(".empty")?.remove();
  const text = typeof payload === "object" && payload !== null && "text" in payload ? String(payload.text) : JSON.stringify(payload);
  const item = h("li", { "data-id": id },
    h("span", { class: "text" }, text),
    h("span", { class: "latency", title: "now − ts" }, duration(Math.max(0, latencyMs))),
    h("span", { class: "meta" }, h("span", { class: "mono" }, id), h("span", {}, `via ${client?.node ?? "?"}`), h("span", {}, clock(Date.now()))));
  $("messages").prepend(item);
  while ($("messages").children.length > MAX_SHOWN) $("messages").lastElementChild.remove();
  $("received").textContent = String(++received);
}

function connect(userId) {
  client = new PushClient({ getToken: async () => (await postJson("/dev/tokens", { user_id: userId, ttl_seconds: 3600 })).token });
  client.addEventListener("open", ({ detail }) => {
    setPill($("status"), "connected", "good");
    $("node").replaceChildren("on node ", h("b", { id: "node-id" }, detail.node));
    log(`connected as ${detail.userId} to ${detail.node} (${detail.url})`);
  });
  client.addEventListener("message", ({ detail }) => show(detail));
  client.addEventListener("close", ({ detail }) => {
    $("duplicates").textContent = String(client.duplicates);
    $("node").textContent = "";
    if (detail.retryInMs === null) {
      setPill($("status"), "disconnected", "");
      log(`closed (${detail.code})`);
    } else {
      setPill($("status"), "reconnecting", "warn");
      log(`link lost (${detail.code}${detail.reason ? `: ${detail.reason}` : ""}), retrying in ${(detail.retryInMs / 1000).toFixed(1)} s`);
    }
  });
  client.addEventListener("error", ({ detail }) => log(`error: ${detail.error.message}`));
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

$("connect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (client) disconnect();
  else connect($("user").value.trim());
});

$("user").addEventListener("input", () => {
  $("to").value = $("user").value;
});

$("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("send").disabled = true;
  try {
    const { id } = await postJson("/dev/messages", { user_id: $("to").value.trim(), payload: { text: $("text").value } });
    $("sent").textContent = `Accepted as ${id}.`;
  } catch (error) {
    $("sent").textContent = `Not sent: ${error.message}`;
  } finally {
    $("send").disabled = false;
  }
});

// Messages dropped as duplicates are counted by the client; keep the counter fresh.
setInterval(() => client && ($("duplicates").textContent = String(client.duplicates)), 1000);
