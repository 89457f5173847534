// Unit tests of the browser client's logic, with node's built-in runner: `node --test tests/js/`.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it, mock } from "node:test";

import { CLOSE, PushClient, RecentIds, backoffDelay, chooseNode, tokenExpiry } from "../../services/collect/static/pushclient.js";

describe("backoffDelay", () => {
  it("doubles its range per attempt up to the cap", () => {
    const top = (attempt) => backoffDelay(attempt, { baseMs: 500, maxMs: 30000, random: () => 1 });
    assert.deepEqual([0, 1, 2, 3, 6, 7, 50].map(top), [500, 1000, 2000, 4000, 30000, 30000, 30000]);
  });

  it("is never zero, even when the random draw is zero", () => {
    for (let attempt = 0; attempt < 40; attempt++) {
      const delay = backoffDelay(attempt, { baseMs: 500, maxMs: 30000, random: () => 0 });
      assert.ok(delay >= 250, `attempt ${attempt} waits ${delay} ms`);
    }
  });

  it("spreads clients over the upper half of the range (jitter)", () => {
    const delays = [0, 0.25, 0.5, 0.99].map((r) => backoffDelay(3, { baseMs: 500, random: () => r }));
    assert.deepEqual(delays, [2000, 2500, 3000, 3980]);
  });
});

describe("chooseNode", () => {
  const nodes = [{ url: "ws://a/ws" }, { url: "ws://b/ws" }, { url: "ws://c/ws" }];

  it("picks between the two least loaded nodes", () => {
    assert.equal(chooseNode(nodes, new Map(), 0, () => 0), "ws://a/ws");
    assert.equal(chooseNode(nodes, new Map(), 0, () => 0.99), "ws://b/ws");
  });

  it("fails over: skips a node that failed recently while another is up", () => {
    const avoid = new Map([["ws://a/ws", 1000]]);
    assert.equal(chooseNode(nodes, avoid, 500, () => 0), "ws://b/ws");
  });

  it("tries a failed node again once its penalty has run out", () => {
    const avoid = new Map([["ws://a/ws", 1000]]);
    assert.equal(chooseNode(nodes, avoid, 1000, () => 0), "ws://a/ws");
  });

  it("takes the least loaded node when every node failed recently at the same time", () => {
    const avoid = new Map(nodes.map((n) => [n.url, 1000]));
    assert.equal(chooseNode(nodes, avoid, 0, () => 0.99), "ws://a/ws");
  });

  it("takes the node that failed longest ago when every node failed recently", () => {
    const avoid = new Map([["ws://a/ws", 3000], ["ws://b/ws", 1500], ["ws://c/ws", 2000]]);
    assert.equal(chooseNode(nodes, avoid, 0, () => 0), "ws://b/ws");
  });

  it("returns null for an empty directory", () => {
    assert.equal(chooseNode([], new Map(), 0), null);
  });
});

describe("RecentIds", () => {
  it("reports an id as seen the second time", () => {
    const recent = new RecentIds(10);
    assert.equal(recent.seen("m1"), false);
    assert.equal(recent.seen("m1"), true);
  });

  it("forgets the oldest ids beyond its capacity, keeping memory bounded", () => {
    const recent = new RecentIds(3);
    for (const id of ["m1", "m2", "m3", "m4"]) recent.seen(id);
    assert.equal(recent.ids.size, 3);
    assert.equal(recent.seen("m4"), true);
    assert.equal(recent.seen("m1"), false);
  });
});

/** A JWT-shaped token whose payload says it expires at `exp` (seconds). */
const jwt = (exp, sub = "alice") => ["e30", Buffer.from(JSON.stringify({ sub, exp })).toString("base64url"), "sig"].join(".");

describe("tokenExpiry", () => {
  it("reads a JWT's exp, in ms", () => {
    assert.equal(tokenExpiry(jwt(1_800_000_000, "ünï")), 1_800_000_000_000);
  });

  it("is null for a token it cannot read", () => {
    for (const token of ["opaque", "a.b.c", jwt("soon"), `e30.${Buffer.from("{}").toString("base64url")}.sig`]) assert.equal(tokenExpiry(token), null, token);
  });
});

/** A WebSocket stand-in the test drives by hand. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    FakeSocket.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code) {
    this.closedWith = code;
    this.readyState = 3;
  }
  accept(node) {
    this.readyState = 1;
    this.onopen?.();
    this.frame({ type: "welcome", user_id: "alice", node });
  }
  frame(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  drop(code) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
}

/** A window stand-in with a switchable navigator.onLine. */
class FakeWindow extends EventTarget {
  navigator = { onLine: true };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("PushClient", () => {
  let clock, win, tokens, client, events;

  beforeEach(() => {
    FakeSocket.all = [];
    clock = 1_000_000;
    mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
    win = new FakeWindow();
    tokens = 0;
    events = [];
    client = new PushClient({
      getToken: async () => `token-${++tokens}`,
      fetch: async () => ({ ok: true, json: async () => ({ nodes: [{ url: "ws://a/ws" }, { url: "ws://b/ws" }] }) }),
      WebSocket: FakeSocket,
      window: win,
      random: () => 0,
      now: () => clock,
    });
    for (const type of ["open", "message", "close", "error", "reconnect"]) client.addEventListener(type, (e) => events.push([type, e.detail]));
  });

  afterEach(() => {
    client.stop();
    mock.timers.reset();
  });

  const advance = async (ms) => {
    clock += ms;
    mock.timers.tick(ms);
    await settle();
  };

  const connected = async () => {
    client.start();
    await settle();
    const ws = FakeSocket.all.at(-1);
    ws.accept(ws.url.startsWith("ws://a") ? "a" : "b");
    return ws;
  };

  it("acks every message once the handlers ran, and emits a redelivered one only once", async () => {
    const ws = await connected();
    ws.frame({ type: "message", id: "m1", payload: "hi", ts: clock - 5 });
    ws.frame({ type: "message", id: "m1", payload: "hi", ts: clock - 5 });
    await settle();
    assert.deepEqual(events.filter(([t]) => t === "message").map(([, d]) => [d.id, d.latencyMs]), [["m1", 5]]);
    assert.deepEqual(ws.sent.filter((f) => f.type === "ack"), [{ type: "ack", ids: ["m1", "m1"] }]);
    assert.equal(client.duplicates, 1);
  });

  it("reconnects to the other node after a backoff delay when its node dies", async () => {
    const first = await connected();
    assert.equal(first.url, "ws://a/ws?bundle=1&token=token-1");
    first.drop(1006);
    const [, close] = events.at(-1);
    assert.equal(close.code, 1006);
    assert.ok(close.retryInMs >= 250, `retries after ${close.retryInMs} ms`);
    await advance(close.retryInMs - 1);
    assert.equal(FakeSocket.all.length, 1, "no reconnect before the delay");
    await advance(1);
    assert.equal(FakeSocket.all.at(-1).url, "ws://b/ws?bundle=1&token=token-1");
  });

  it("backs off further on every failed attempt instead of spinning", async () => {
    client.start();
    await settle();
    const delays = [];
    for (let i = 0; i < 5; i++) {
      FakeSocket.all.at(-1).drop(1006);
      delays.push(events.at(-1)[1].retryInMs);
      await advance(delays.at(-1));
    }
    assert.deepEqual(delays, [250, 500, 1000, 2000, 4000]);
  });

  it("asks for a fresh token when the node closes with 4001", async () => {
    const ws = await connected();
    ws.drop(CLOSE.TOKEN);
    await advance(events.at(-1)[1].retryInMs);
    assert.equal(FakeSocket.all.at(-1).url, "ws://a/ws?bundle=1&token=token-2");
  });

  it("drops a link that does not answer a ping, then reconnects", async () => {
    const ws = await connected();
    await advance(15000);
    assert.deepEqual(ws.sent.at(-1), { type: "ping" });
    await advance(10000);
    assert.equal(ws.closedWith, CLOSE.SILENT);
    assert.equal(events.at(-1)[1].code, CLOSE.SILENT);
    await advance(events.at(-1)[1].retryInMs);
    assert.equal(FakeSocket.all.length, 2);
  });

  it("gives up on a node that never completes the handshake and tries the other", async () => {
    client.start();
    await settle();
    await advance(10000);
    assert.equal(FakeSocket.all[0].closedWith, CLOSE.SILENT);
    await advance(events.at(-1)[1].retryInMs);
    assert.equal(FakeSocket.all.at(-1).url, "ws://b/ws?bundle=1&token=token-1");
  });

  it("does not retry after stop() while a failing token fetch was in flight", async () => {
    let fetches = 0;
    const failing = new PushClient({ getToken: async () => { fetches++; throw new Error("auth down"); }, WebSocket: FakeSocket });
    failing.start();
    failing.stop();
    await advance(120000);
    assert.equal(fetches, 1);
    assert.equal(FakeSocket.all.length, 0);
  });

  it("keeps a link that answers its pings", async () => {
    const ws = await connected();
    for (let i = 0; i < 3; i++) {
      await advance(15000);
      ws.frame({ type: "pong" });
    }
    assert.equal(ws.closedWith, undefined);
  });

  it("waits for the browser to come back online before reconnecting", async () => {
    const ws = await connected();
    win.navigator.onLine = false;
    win.dispatchEvent(new Event("offline"));
    ws.drop(1006);
    await advance(60000);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(client.state, "offline");
    win.navigator.onLine = true;
    win.dispatchEvent(new Event("online"));
    await advance(0);
    assert.equal(FakeSocket.all.length, 1, "online reconnects after a jittered delay, not at once");
    await advance(30000);
    assert.equal(FakeSocket.all.length, 2);
  });

  it("closes on pagehide and comes back on pageshow", async () => {
    const ws = await connected();
    win.dispatchEvent(new Event("pagehide"));
    assert.equal(ws.closedWith, CLOSE.NORMAL);
    await advance(60000);
    assert.equal(FakeSocket.all.length, 1);
    win.dispatchEvent(new Event("pageshow"));
    await advance(30000);
    assert.equal(FakeSocket.all.length, 2);
  });

  it("follows a draining node's advice: waits after_ms, closes normally, connects to the advised url", async () => {
    const ws = await connected();
    ws.frame({ type: "reconnect", after_ms: 3000, url: "ws://c/ws" });
    assert.deepEqual(events.at(-1), ["reconnect", { afterMs: 3000, url: "ws://c/ws" }]);
    await advance(2999);
    assert.equal(ws.closedWith, undefined, "still on the draining node until the advised time");
    assert.equal(FakeSocket.all.length, 1);
    await advance(1);
    assert.equal(ws.closedWith, CLOSE.NORMAL);
    assert.equal(FakeSocket.all.at(-1).url, "ws://c/ws?bundle=1&token=token-1");
  });

  it("does not count a move as a failure: the next failure backs off from the start", async () => {
    const ws = await connected();
    ws.frame({ type: "reconnect", after_ms: 0, url: "ws://b/ws" });
    await advance(0);
    const moved = FakeSocket.all.at(-1);
    assert.equal(moved.url, "ws://b/ws?bundle=1&token=token-1");
    moved.drop(1006);
    assert.equal(events.at(-1)[1].retryInMs, 250, "the first backoff step (random 0), not a grown one");
  });

  it("still waits for the advised time when the draining node closes with 1001 first", async () => {
    const ws = await connected();
    ws.frame({ type: "reconnect", after_ms: 3000, url: "ws://c/ws" });
    await advance(1000);
    ws.drop(CLOSE.GOING_AWAY);
    assert.deepEqual(events.at(-1), ["close", { code: CLOSE.GOING_AWAY, reason: "", retryInMs: 2000 }]);
    await advance(1999);
    assert.equal(FakeSocket.all.length, 1);
    await advance(1);
    assert.equal(FakeSocket.all.at(-1).url, "ws://c/ws?bundle=1&token=token-1");
  });

  it("without an advised url, picks another node from the directory than the draining one", async () => {
    const ws = await connected();
    assert.ok(ws.url.startsWith("ws://a/ws"));
    ws.frame({ type: "reconnect", after_ms: 500 });
    await advance(500);
    assert.equal(FakeSocket.all.at(-1).url, "ws://b/ws?bundle=1&token=token-1");
  });

  it("stops for good on stop(): no reconnect, no listeners left", async () => {
    const ws = await connected();
    client.stop();
    assert.equal(ws.closedWith, CLOSE.NORMAL);
    win.dispatchEvent(new Event("online"));
    win.dispatchEvent(new Event("pageshow"));
    await advance(120000);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(client.state, "stopped");
  });
});

describe("PushClient topics", () => {
  let client, events;

  beforeEach(() => {
    FakeSocket.all = [];
    mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
    events = [];
    client = new PushClient({
      getToken: async () => "token",
      fetch: async () => ({ ok: true, json: async () => ({ nodes: [{ url: "ws://a/ws" }] }) }),
      WebSocket: FakeSocket,
      window: null,
      random: () => 0,
      now: () => 1_000_000,
    });
    for (const type of ["message", "subscribed", "forbidden", "unsubscribed", "recovered", "gap", "join", "leave"]) {
      client.addEventListener(type, (e) => events.push([type, e.detail]));
    }
  });

  afterEach(() => {
    client.stop();
    mock.timers.reset();
  });

  const connect = async () => {
    client.start();
    await settle();
    const ws = FakeSocket.all.at(-1);
    ws.accept("a");
    return ws;
  };

  /** Drop the link and return the next one, welcomed. */
  const reconnect = async (ws) => {
    ws.drop(1006);
    mock.timers.tick(60_000);
    await settle();
    const next = FakeSocket.all.at(-1);
    next.accept("a");
    return next;
  };

  const topicMessage = (id, topic, offset, epoch = "e1") => ({ type: "message", id, topic, payload: id, ts: 1_000_000, offset, epoch });
  const broadcast = (id, offset, epoch = "e1") => ({ type: "message", id, broadcast: true, payload: id, ts: 1_000_000, offset, epoch });
  const delivered = () => events.filter(([t]) => t === "message").map(([, d]) => d.id);

  /** Connected and subscribed to news at offset 40 and the broadcast stream at 7, both in epoch e1. */
  const subscribedToNews = async () => {
    client.subscribe(["news"]);
    const ws = await connect();
    ws.frame({ type: "subscribed", topics: ["news", "*"], positions: { news: { offset: 40, epoch: "e1" }, "*": { offset: 7, epoch: "e1" } } });
    events.length = 0;
    return ws;
  };

  it("subscribes once connected, and again with every topic after a reconnect", async () => {
    client.subscribe(["news"]);
    const first = await connect();
    client.subscribe(["news", "room:1"]);
    assert.deepEqual(first.sent, [{ type: "subscribe", topics: ["news", "*"] }, { type: "subscribe", topics: ["room:1"] }]);
    const second = await reconnect(first);
    assert.deepEqual(second.sent, [{ type: "subscribe", topics: ["news", "room:1", "*"] }]);
  });

  it("subscribes to the broadcast stream alone when the page holds no topic, and reports no page topic granted", async () => {
    const ws = await connect();
    assert.deepEqual(ws.sent, [{ type: "subscribe", topics: ["*"] }]);
    ws.frame({ type: "subscribed", topics: ["*"], positions: { "*": { offset: 0, epoch: "e1" } } });
    assert.deepEqual(events, []);
  });

  it("unsubscribes on the open link and forgets the topic for later connections", async () => {
    client.subscribe(["news", "sports"]);
    const ws = await connect();
    client.unsubscribe(["sports", "never-subscribed"]);
    assert.deepEqual(ws.sent.at(-1), { type: "unsubscribe", topics: ["sports"] });
    assert.deepEqual(client.topics, ["news"]);
  });

  it("reports refused topics and stops asking for them", async () => {
    client.subscribe(["news", "vip:1"]);
    const ws = await connect();
    ws.frame({ type: "subscribed", topics: ["news"] });
    ws.frame({ type: "error", code: "forbidden", topics: ["vip:1"] });
    assert.deepEqual(events, [["subscribed", { topics: ["news"] }], ["forbidden", { topics: ["vip:1"] }]]);
    assert.deepEqual(client.topics, ["news"]);
  });

  it("emits topic and broadcast messages with their kind and does not ack them", async () => {
    const ws = await connect();
    ws.frame({ type: "message", id: "t1", topic: "news", payload: 1, ts: 1_000_000 });
    ws.frame({ type: "message", id: "b1", broadcast: true, payload: 2, ts: 1_000_000 });
    ws.frame({ type: "message", id: "u1", payload: 3, ts: 1_000_000 });
    await settle();
    assert.deepEqual(events.map(([, d]) => [d.id, d.topic, d.broadcast]), [["t1", "news", false], ["b1", null, true], ["u1", null, false]]);
    assert.deepEqual(ws.sent.filter((f) => f.type === "ack"), [{ type: "ack", ids: ["u1"] }]);
  });

  it("asks for bundles and handles each line of a bundle as a frame of its own, in order", async () => {
    const ws = await subscribedToNews();
    assert.match(ws.url, /[?&]bundle=1(&|$)/);
    ws.onmessage({ data: [topicMessage("t41", "news", 41), { type: "join", topic: "news", user_id: "bob" }, topicMessage("t42", "news", 42)]
      .map((f) => JSON.stringify(f)).join("\n") });
    await settle();
    assert.deepEqual(events.map(([t, d]) => [t, d.id ?? d.userId]), [["message", "t41"], ["join", "bob"], ["message", "t42"]]);
  });

  it("unsubscribes the topics the node drops (a refreshed token grants fewer) and stops asking for them", async () => {
    client.subscribe(["news", "vip:1"]);
    const ws = await connect();
    ws.frame({ type: "subscribed", topics: ["news", "vip:1", "*"], positions: { news: { offset: 1, epoch: "e1" }, "vip:1": { offset: 5, epoch: "e1" } } });
    ws.frame({ type: "unsubscribed", topics: ["vip:1"] });
    assert.deepEqual(events.at(-1), ["unsubscribed", { topics: ["vip:1"] }]);
    assert.deepEqual(client.topics, ["news"]);
    const next = await reconnect(ws);
    assert.deepEqual(next.sent, [{ type: "subscribe", topics: ["news", "*"], recover: { news: { offset: 1, epoch: "e1" } } }]);
  });

  it("keeps a topic unsubscribed and subscribed again before the node answered", async () => {
    client.subscribe(["news"]);
    const ws = await connect();
    client.unsubscribe(["news"]);
    client.subscribe(["news"]);
    ws.frame({ type: "unsubscribed", topics: ["news"] });
    ws.frame({ type: "subscribed", topics: ["news"], positions: { news: { offset: 3, epoch: "e1" } } });
    assert.deepEqual(client.topics, ["news"]);
  });

  it("remembers each topic's last position and the broadcast stream's, and recovers from them after a reconnect", async () => {
    const ws = await subscribedToNews();
    ws.frame(topicMessage("n41", "news", 41));
    ws.frame(topicMessage("n42", "news", 42));
    ws.frame(broadcast("b8", 8));
    await settle();
    assert.deepEqual(events.map(([, d]) => [d.id, d.topic, d.offset, d.epoch]), [["n41", "news", 41, "e1"], ["n42", "news", 42, "e1"], ["b8", null, 8, "e1"]]);
    const next = await reconnect(ws);
    assert.deepEqual(next.sent, [{ type: "subscribe", topics: ["news", "*"], recover: { news: { offset: 42, epoch: "e1" }, "*": { offset: 8, epoch: "e1" } } }]);
  });

  it("recovers after a drain too: the move's new link asks for what was missed", async () => {
    const ws = await subscribedToNews();
    ws.frame(topicMessage("n41", "news", 41));
    ws.frame({ type: "reconnect", after_ms: 100, url: "ws://b/ws" });
    mock.timers.tick(100); // the close at after_ms
    mock.timers.tick(100); // the move, timed by this suite's clock, which stands still
    await settle();
    const moved = FakeSocket.all.at(-1);
    assert.equal(moved.url, "ws://b/ws?bundle=1&token=token");
    moved.accept("b");
    assert.deepEqual(moved.sent, [{ type: "subscribe", topics: ["news", "*"], recover: { news: { offset: 41, epoch: "e1" }, "*": { offset: 7, epoch: "e1" } } }]);
  });

  it("emits recovered with the count that follows, then delivers the missed messages once and the live ones after", async () => {
    const next = await reconnect(await subscribedToNews());
    next.frame({ type: "subscribed", topics: ["news", "*"], positions: { news: { offset: 43, epoch: "e1" }, "*": { offset: 7, epoch: "e1" } },
                 recovered: { news: true, "*": true } });
    assert.deepEqual(events, [["subscribed", { topics: ["news"] }], ["recovered", { topic: "news", missed: 3 }], ["recovered", { topic: "*", missed: 0 }]]);
    for (const offset of [41, 42, 43, 42, 44]) next.frame(topicMessage(`n${offset}`, "news", offset)); // 42 again: a duplicate
    await settle();
    assert.deepEqual(delivered(), ["n41", "n42", "n43", "n44"]);
    assert.equal(client.duplicates, 1);
  });

  it("emits gap when the node cannot recover, and takes the node's position in its new epoch", async () => {
    const ws = await subscribedToNews();
    ws.frame(broadcast("b8", 8));
    const next = await reconnect(ws);
    next.frame({ type: "subscribed", topics: ["news", "*"], positions: { news: { offset: 2, epoch: "e2" }, "*": { offset: 8, epoch: "e1" } },
                 recovered: { news: false, "*": true } });
    assert.deepEqual(events.slice(1), [["subscribed", { topics: ["news"] }], ["gap", { topic: "news" }], ["recovered", { topic: "*", missed: 0 }]]);
    next.frame(topicMessage("old", "news", 2, "e2")); // at the position the node reported: not new
    next.frame(topicMessage("new", "news", 3, "e2"));
    await settle();
    assert.deepEqual(delivered(), ["b8", "new"]);
    const last = await reconnect(next);
    assert.deepEqual(last.sent[0].recover, { news: { offset: 3, epoch: "e2" }, "*": { offset: 8, epoch: "e1" } });
  });

  it("drops a topic message at or before the remembered offset of its epoch, and follows a new epoch", async () => {
    const ws = await subscribedToNews();
    ws.frame(topicMessage("a", "news", 41));
    ws.frame(topicMessage("a-again-by-another-id", "news", 41));
    ws.frame(topicMessage("older", "news", 39));
    ws.frame(topicMessage("fresh-epoch", "news", 1, "e2"));
    ws.frame(topicMessage("b", "news", 2, "e2"));
    ws.frame(broadcast("b7", 7)); // the broadcast stream's own offsets: 7 was its position
    ws.frame(broadcast("b8", 8));
    await settle();
    assert.deepEqual(delivered(), ["a", "fresh-epoch", "b", "b8"]);
    assert.equal(client.duplicates, 3);
  });

  it("emits join and leave with the topic and the user", async () => {
    const ws = await subscribedToNews();
    ws.frame({ type: "join", topic: "news", user_id: "bob" });
    ws.frame({ type: "leave", topic: "news", user_id: "bob" });
    assert.deepEqual(events, [["join", { topic: "news", userId: "bob" }], ["leave", { topic: "news", userId: "bob" }]]);
  });
});

describe("PushClient token refresh", () => {
  let clock, issued, refreshed, client;

  beforeEach(() => {
    FakeSocket.all = [];
    clock = 1_000_000_000;
    mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
    issued = 0;
    refreshed = 0;
  });

  afterEach(() => {
    client.stop();
    mock.timers.reset();
  });

  /** A client whose tokens hold 120 s; with `refresh`, the page gives a refreshToken callback of its own. */
  const started = async ({ refresh = false } = {}) => {
    client = new PushClient({
      getToken: async () => jwt(clock / 1000 + 120, `got-${++issued}`),
      ...(refresh && { refreshToken: async () => jwt(clock / 1000 + 120, `refreshed-${++refreshed}`) }),
      fetch: async () => ({ ok: true, json: async () => ({ nodes: [{ url: "ws://a/ws" }] }) }),
      WebSocket: FakeSocket,
      window: null,
      random: () => 0,
      now: () => clock,
    });
    client.start();
    await settle();
    const ws = FakeSocket.all.at(-1);
    ws.accept("a");
    return ws;
  };

  const subject = (token) => JSON.parse(Buffer.from(token.split(".")[1], "base64url")).sub;

  it("answers the node's expiring notice with a refresh frame carrying a token from refreshToken()", async () => {
    const ws = await started({ refresh: true });
    ws.frame({ type: "expiring", expires_in_ms: 60_000 });
    await settle();
    assert.equal(subject(ws.sent.at(-1).token), "refreshed-1");
    assert.equal(ws.sent.at(-1).type, "refresh");
    assert.equal(issued, 1, "getToken() only for the first token");
    ws.frame({ type: "refreshed", expires_at: clock / 1000 + 120 });
    assert.equal(ws.closedWith, undefined, "refreshed in place, no reconnect");
  });

  it("refreshes through getToken() when the page gives no refreshToken", async () => {
    const ws = await started();
    ws.frame({ type: "expiring", expires_in_ms: 60_000 });
    await settle();
    assert.deepEqual([ws.sent.at(-1).type, subject(ws.sent.at(-1).token)], ["refresh", "got-2"]);
  });

  it("gets a fresh token before reconnecting when the one it holds has expired, and not while it holds", async () => {
    const ws = await started({ refresh: true });
    ws.drop(1006);
    mock.timers.tick(60_000);
    await settle();
    const second = FakeSocket.all.at(-1);
    assert.equal(subject(decodeURIComponent(second.url.split("token=")[1])), "got-1", "still valid: reused");
    clock += 200_000;
    second.drop(1006);
    mock.timers.tick(60_000);
    await settle();
    assert.equal(subject(decodeURIComponent(FakeSocket.all.at(-1).url.split("token=")[1])), "refreshed-1");
  });
});
