/**
 * pushclient.js: the browser client of the push cluster, as one dependency-free ES module.
 *
 *   import { PushClient } from "/static/pushclient.js";
 *   const client = new PushClient({ getToken: async () => (await myBackend.pushToken()).token });
 *   client.addEventListener("message", (e) => show(e.detail.payload));
 *   client.start();
 *
 * What it takes care of, so pages do not have to:
 * - picks a push node from the directory (GET /v1/nodes, least loaded first) and, after losing one,
 *   avoids it for a while, so it fails over to another node while the dead one's card still lingers;
 * - reconnects with exponential backoff and jitter, never at zero delay, and not at all while the
 *   browser is offline or the page is hidden in the back/forward cache;
 * - sends application-level pings and treats a link that stays silent as dead;
 * - acknowledges every message and drops redelivered duplicates by id, in bounded memory;
 * - asks getToken() again when the node closes with 4001 (token missing, bad or expired), and refreshes its token
 *   in place when the node says it is expiring (refreshToken(), getToken() unless the page gives one), or before
 *   reconnecting when it has expired;
 * - follows a draining node's advice ({"type": "reconnect", after_ms, url}): waits after_ms, then moves to
 *   url (or a node from the directory, not the draining one), without counting it as a failure;
 * - keeps the page's topic subscriptions (subscribe / unsubscribe) and makes them again on every
 *   new connection; topic and broadcast messages are not acked: each carries its position in its topic
 *   (offset and epoch; broadcasts in the stream "*"), the client remembers the last one and resubscribes
 *   with it, so the node sends what it missed (a "recovered" event) or says it cannot (a "gap" event);
 * - asks for bundles (?bundle=1): a busy topic's frames may come several to a websocket frame,
 *   newline-separated (at most one such frame per the node's BUNDLE_MS), each handled as if it came alone.
 *
 * The pure pieces (backoffDelay, chooseNode, RecentIds, tokenExpiry) are exported for unit tests; the module
 * touches no browser global at import time, so node --test can load it.
 */

/** Close codes the push nodes use (and one of ours). */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // the node is shutting down
  UNAVAILABLE: 1013, // the node cannot reach a dependency
  TOKEN: 4001, // token missing, bad or expired
  GARBAGE: 4002, // the node did not understand a frame we sent
  SILENT: 4000, // ours: no answer to a ping in time
});

const MAX_ACK_IDS = 1000;
const BROADCAST = "*"; // the stream broadcasts are numbered in: subscribed on every connection, never a page's topic

/**
 * Delay before reconnect attempt `attempt` (0 for the first): the cap doubles per attempt up to
 * `maxMs`, and the delay is drawn from the upper half of it ("equal jitter"): never zero, even if
 * `random()` returns 0, and spread out so that a crowd of clients does not come back in step.
 */
export function backoffDelay(attempt, { baseMs = 500, maxMs = 30000, random = Math.random } = {}) {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(cap / 2 + (random() * cap) / 2);
}

/**
 * The websocket URL to try next. `nodes` is the directory (least loaded first), `avoidUntil` maps a
 * URL to the time (ms) until which it should not be tried because a connection to it just failed.
 * Picks at random between the two least loaded usable nodes, because every client reading the same
 * directory at once would otherwise pile onto one node; if every node failed recently, takes the
 * one that failed longest ago (the least loaded of those), so that a node which failed once is tried
 * again rather than the same dead one over and over. Null when the directory is empty.
 */
export function chooseNode(nodes, avoidUntil, now, random = Math.random) {
  if (!nodes.length) return null;
  const until = (n) => avoidUntil.get(n.url) ?? 0;
  const usable = nodes.filter((n) => !(until(n) > now));
  if (!usable.length) return nodes.reduce((best, n) => (until(n) < until(best) ? n : best)).url;
  return usable[Math.floor(random() * Math.min(2, usable.length))].url;
}

/**
 * When a token expires (ms since epoch), read from its JWT payload's `exp`; null when it is not a JWT with one.
 * Only to avoid reconnecting with an expired token: the node checks the token, the page's clock may be off.
 */
export function tokenExpiry(token) {
  try {
    const { exp } = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return Number.isFinite(exp) ? exp * 1000 : null;
  } catch {
    return null;
  }
}

/** The ids of the most recent `capacity` messages: enough to catch redeliveries, bounded in memory. */
export class RecentIds {
  constructor(capacity = 1000) {
    this.capacity = capacity;
    this.ids = new Set(); // a Set iterates in insertion order: the first entry is the oldest
  }

  /** True if `id` was seen before; otherwise remember it, forgetting the oldest beyond capacity. */
  seen(id) {
    if (this.ids.has(id)) return true;
    this.ids.add(id);
    if (this.ids.size > this.capacity) this.ids.delete(this.ids.values().next().value);
    return false;
  }
}

/**
 * A connection to the cluster that stays up. Events (all CustomEvent, details below):
 * - "open"    {node, userId, url}            the node has routed us: messages can arrive;
 * - "message" {id, payload, ts, latencyMs, topic, broadcast, offset, epoch}   a new message (duplicates are not
 *                                            re-emitted); topic / broadcast are set on topic and broadcast messages,
 *                                            offset / epoch on those the node numbered;
 * - "subscribed" {topics}                    the node granted these topics;
 * - "forbidden"  {topics}                    the node refused these topics (the token does not grant them);
 * - "unsubscribed" {topics}                  the node dropped these topics (asked, or a refreshed token no longer grants them);
 * - "recovered" {topic, missed}              resubscribed: the `missed` messages of topic ("*": broadcasts) follow;
 * - "gap"     {topic}                        resubscribed, but what topic missed is gone: the page must reload its state;
 * - "join" / "leave" {topic, userId}         a user's first socket subscribed to topic / their last one left it;
 * - "reconnect" {afterMs, url}               the node is draining: we move to url (null: the directory) in afterMs;
 * - "close"   {code, reason, retryInMs}      the link closed; retryInMs is null when not retrying;
 * - "error"   {error}                        getting a token or the directory failed, or a socket error.
 */
export class PushClient extends EventTarget {
  #o;
  #ws = null;
  #url = null;
  #token = null;
  #running = false;
  #attempt = 0;
  #welcomedAt = null;
  #retryTimer = null;
  #pingTimer = null;
  #silenceTimer = null;
  #acks = [];
  #avoid = new Map();
  #recent;
  #listening = false;
  #resumeOnShow = false;
  #topics = new Set();
  #positions = new Map(); // topic (BROADCAST for broadcasts) -> {offset, epoch} of the last message seen
  #expiresAt = Infinity; // when #token expires (ms), as far as it says
  #advice = null; // {url, at}: where and when a draining node told us to move
  #moveTimer = null;

  /**
   * @param {object} options
   * @param {() => Promise<string>} options.getToken  called for the first token and after close 4001
   * @param {() => Promise<string>} [options.refreshToken]  called for a token replacing one that expires (getToken by default)
   * @param {string} [options.directoryUrl]  where to read live nodes ("/v1/nodes" on collect)
   * @param {number} [options.pingIntervalMs]  how often to ping an idle link
   * @param {number} [options.pongTimeoutMs]  how long a ping, the handshake or the directory may take before giving up
   * @param {number} [options.baseDelayMs] [options.maxDelayMs]  reconnect backoff bounds
   * @param {number} [options.avoidMs]  how long a node that failed is not tried again if another is up
   * @param {number} [options.stableMs]  a link up this long resets the backoff
   * @param {number} [options.dedupCapacity]  how many recent message ids are remembered
   * The rest (WebSocket, fetch, window, random, now) are injectable for tests.
   */
  constructor(options) {
    super();
    this.#o = {
      directoryUrl: "/v1/nodes",
      pingIntervalMs: 15000,
      pongTimeoutMs: 10000,
      baseDelayMs: 500,
      maxDelayMs: 30000,
      avoidMs: 30000,
      stableMs: 5000,
      dedupCapacity: 1000,
      WebSocket: globalThis.WebSocket,
      fetch: (...args) => globalThis.fetch(...args),
      window: globalThis.window ?? null,
      random: Math.random,
      now: () => Date.now(),
      ...options,
    };
    if (typeof this.#o.getToken !== "function") throw new TypeError("PushClient needs a getToken() function");
    this.#o.refreshToken ??= this.#o.getToken;
    this.#recent = new RecentIds(this.#o.dedupCapacity);
    this.duplicates = 0;
    this.state = "idle"; // idle | connecting | open | waiting | offline | stopped
    this.node = null;
  }

  /** Start connecting (and keep connected) until stop(). */
  start() {
    if (this.#running) return;
    this.#running = true;
    this.#listen(true);
    this.#connect();
  }

  /** Close for good: no reconnect, no timers, no window listeners left behind. */
  stop() {
    this.#running = false;
    this.#listen(false);
    this.#halt(CLOSE.NORMAL, "client stopped");
    this.state = "stopped";
  }

  /** Receive messages of these topics, now if connected and again after every reconnect. */
  subscribe(topics) {
    const fresh = topics.filter((t) => !this.#topics.has(t));
    for (const t of fresh) this.#topics.add(t);
    if (fresh.length && this.state === "open") this.#send({ type: "subscribe", topics: fresh });
  }

  /** Stop receiving messages of these topics (and forget their positions). */
  unsubscribe(topics) {
    const gone = this.#forget(topics);
    if (gone.length && this.state === "open") this.#send({ type: "unsubscribe", topics: gone });
  }

  /** The topics this client asks for on every connection. */
  get topics() {
    return [...this.#topics];
  }

  #send(frame) {
    if (this.#ws?.readyState === 1) this.#ws.send(JSON.stringify(frame));
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #offline() {
    return this.#o.window?.navigator?.onLine === false;
  }

  /** Connect to `advised` (a draining node's advice) or else to a node picked from the directory. */
  async #connect(advised = null) {
    this.#retryTimer = null;
    if (!this.#running || this.#ws) return;
    if (this.#offline()) {
      this.state = "offline"; // the "online" event resumes
      return;
    }
    this.state = "connecting";
    let url;
    try {
      // expiring before the handshake could end: the node would close 4001 at once
      if (this.#token !== null && this.#expiresAt <= this.#o.now() + this.#o.pongTimeoutMs) this.#useToken(await this.#o.refreshToken());
      if (this.#token === null) this.#useToken(await this.#o.getToken());
      url = advised ?? (await this.#pick());
    } catch (error) {
      this.#emit("error", { error });
      return this.#retry(null, String(error.message ?? error));
    }
    if (!this.#running || this.#ws) return; // stopped, or paused and resumed, while we waited
    this.#open(url);
  }

  #useToken(token) {
    this.#token = token;
    this.#expiresAt = tokenExpiry(token) ?? Infinity;
  }

  /** The node said the token expires soon: replace it on the open link. */
  async #refresh() {
    try {
      this.#useToken(await this.#o.refreshToken());
    } catch (error) {
      return this.#emit("error", { error }); // the node closes 4001 at expiry and getToken() takes over
    }
    this.#send({ type: "refresh", token: this.#token });
  }

  async #pick() {
    const signal = AbortSignal.timeout(this.#o.pongTimeoutMs);
    const answer = await this.#o.fetch(this.#o.directoryUrl, { cache: "no-store", signal });
    if (!answer.ok) throw new Error(`node directory answered ${answer.status}`);
    const url = chooseNode((await answer.json()).nodes, this.#avoid, this.#o.now(), this.#o.random);
    if (!url) throw new Error("no push node is up");
    return url;
  }

  #open(url) {
    this.#url = url;
    const ws = new this.#o.WebSocket(`${url}?bundle=1&token=${encodeURIComponent(this.#token)}`);
    this.#ws = ws;
    // A node that never completes the handshake (say, a black-holed address) is given up like a silent one.
    this.#silenceTimer = setTimeout(() => this.#halt(CLOSE.SILENT, "no welcome from the node", true), this.#o.pongTimeoutMs);
    ws.onopen = () => this.#startHeartbeat();
    ws.onmessage = (event) => this.#receive(event.data);
    ws.onerror = () => this.#emit("error", { error: new Error(`websocket error on ${url}`) });
    ws.onclose = (event) => this.#closed(event.code, event.reason);
  }

  /** One websocket frame: a frame of the protocol, or a bundle of them, one per line. */
  #receive(data) {
    this.#heard();
    for (const line of String(data).split("\n")) this.#handle(line);
  }

  #handle(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return; // nodes only send JSON; ignore anything else rather than drop the link
    }
    if (frame.type === "welcome") {
      this.#welcomedAt = this.#o.now();
      this.node = frame.node;
      this.state = "open";
      this.#resubscribe();
      this.#emit("open", { node: frame.node, userId: frame.user_id, url: this.#url });
    } else if (frame.type === "message") {
      const stream = frame.broadcast === true ? BROADCAST : frame.topic;
      if (this.#seen(stream, frame) || this.#recent.seen(frame.id)) this.duplicates += 1;
      else this.#emit("message", { id: frame.id, payload: frame.payload, ts: frame.ts, latencyMs: this.#o.now() - frame.ts,
                                   topic: frame.topic ?? null, broadcast: frame.broadcast === true,
                                   offset: frame.offset ?? null, epoch: frame.epoch ?? null });
      if (stream === undefined) this.#ack(frame.id); // duplicates too: the node redelivered because it has not seen our ack
    } else if (frame.type === "subscribed") {
      this.#subscribed(frame);
    } else if (frame.type === "unsubscribed") {
      this.#forget(frame.topics);
      this.#emit("unsubscribed", { topics: frame.topics });
    } else if (frame.type === "join" || frame.type === "leave") {
      this.#emit(frame.type, { topic: frame.topic, userId: frame.user_id });
    } else if (frame.type === "expiring") {
      this.#refresh();
    } else if (frame.type === "reconnect") {
      const afterMs = Math.max(0, Number(frame.after_ms) || 0);
      this.#advice = { url: typeof frame.url === "string" ? frame.url : null, at: this.#o.now() + afterMs };
      clearTimeout(this.#moveTimer);
      this.#moveTimer = setTimeout(() => this.#halt(CLOSE.NORMAL, "moving to another node", true), afterMs);
      this.#emit("reconnect", { afterMs, url: this.#advice.url });
    } else if (frame.type === "error" && frame.code === "forbidden") {
      this.#forget(frame.topics ?? []); // asking again on reconnect would be refused again
      this.#emit("forbidden", { topics: frame.topics });
    }
  }

  /** Subscribe a new connection to every topic and the broadcast stream, asking to recover from the positions held. */
  #resubscribe() {
    const topics = [...this.#topics, BROADCAST];
    const recover = Object.fromEntries(topics.filter((t) => this.#positions.has(t)).map((t) => [t, this.#positions.get(t)]));
    this.#send({ type: "subscribe", topics, ...(Object.keys(recover).length && { recover }) });
  }

  /**
   * The node granted topics, with their positions. A recovered topic keeps its position: the messages it missed
   * follow and move it. Any other takes the node's (a gap: the new epoch, or past what history no longer holds).
   */
  #subscribed({ topics, positions = {}, recovered = {} }) {
    const granted = topics.filter((t) => t !== BROADCAST);
    // answers come in the order asked: a topic unsubscribed and subscribed again is dropped, then granted again
    for (const t of granted) this.#topics.add(t);
    if (granted.length) this.#emit("subscribed", { topics: granted });
    for (const [topic, position] of Object.entries(positions)) {
      const from = this.#positions.get(topic);
      if (recovered[topic] === true && from) {
        this.#emit("recovered", { topic, missed: position.offset - from.offset });
      } else {
        this.#seen(topic, position);
        if (recovered[topic] === false) this.#emit("gap", { topic });
      }
    }
  }

  /** Stop holding topics and their positions; returns the topics that were held. */
  #forget(topics) {
    for (const t of topics) this.#positions.delete(t);
    return topics.filter((t) => this.#topics.delete(t));
  }

  /**
   * True if a numbered message (or position) of `stream` was seen already: at or before the remembered position in
   * the same epoch. Otherwise it becomes the remembered position; another epoch replaces it (its history was lost).
   */
  #seen(stream, { offset, epoch }) {
    if (stream === undefined || offset === undefined) return false;
    const last = this.#positions.get(stream);
    if (last?.epoch === epoch && offset <= last.offset) return true;
    this.#positions.set(stream, { offset, epoch });
    return false;
  }

  /** Queue an ack; acks arriving in one burst go out as one frame, after the handlers ran. */
  #ack(id) {
    this.#acks.push(id);
    if (this.#acks.length === 1) queueMicrotask(() => this.#flushAcks());
  }

  #flushAcks() {
    const ids = this.#acks;
    this.#acks = [];
    if (this.#ws?.readyState !== 1) return; // unacked messages are redelivered and dropped as duplicates
    for (let i = 0; i < ids.length; i += MAX_ACK_IDS) {
      this.#ws.send(JSON.stringify({ type: "ack", ids: ids.slice(i, i + MAX_ACK_IDS) }));
    }
  }

  #startHeartbeat() {
    clearInterval(this.#pingTimer);
    this.#pingTimer = setInterval(() => this.#probe(), this.#o.pingIntervalMs);
  }

  /** Ping, and declare the link dead unless something arrives within pongTimeoutMs. */
  #probe() {
    if (this.#ws?.readyState !== 1 || this.#silenceTimer) return;
    this.#ws.send('{"type":"ping"}');
    this.#silenceTimer = setTimeout(() => this.#halt(CLOSE.SILENT, "no answer to ping", true), this.#o.pongTimeoutMs);
  }

  #heard() {
    clearTimeout(this.#silenceTimer);
    this.#silenceTimer = null;
  }

  /** Drop the current socket now (a dead link may take minutes to report its close), optionally retrying. */
  #halt(code, reason, retry = false) {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    const ws = this.#ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing: nothing more to do
    }
    this.#closed(code, reason, retry);
  }

  #closed(code, reason, retry = true) {
    clearInterval(this.#pingTimer);
    clearTimeout(this.#moveTimer);
    this.#moveTimer = null;
    this.#heard();
    this.#ws = null;
    this.node = null;
    const stable = this.#welcomedAt !== null && this.#o.now() - this.#welcomedAt >= this.#o.stableMs;
    this.#welcomedAt = null;
    if (stable) this.#attempt = 0;
    const advice = this.#advice;
    this.#advice = null;
    if (advice && retry && this.#running) return this.#move(advice, code, reason);
    if (code === CLOSE.TOKEN) this.#token = null;
    else if (code !== CLOSE.NORMAL && code !== CLOSE.GARBAGE) this.#avoid.set(this.#url, this.#o.now() + this.#o.avoidMs);
    if (retry && this.#running) return this.#retry(code, reason);
    this.state = "idle";
    this.#emit("close", { code, reason, retryInMs: null });
  }

  /** Leave a draining node as it advised: at the time it gave (also if it closed us first), for its url or the
   * directory (where the node is avoided); not a failure, so the backoff does not grow. */
  #move({ url, at }, code, reason) {
    this.#avoid.set(this.#url, this.#o.now() + this.#o.avoidMs);
    const delay = Math.max(0, at - this.#o.now());
    this.state = "waiting";
    this.#emit("close", { code, reason, retryInMs: delay });
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#connect(url), delay);
  }

  /** Schedule the next attempt after a backoff delay (never zero), unless offline. */
  #retry(code, reason) {
    if (!this.#running) return; // stopped while a token or the directory was being fetched
    this.#pruneAvoided();
    if (this.#offline()) {
      this.state = "offline";
      if (code !== null) this.#emit("close", { code, reason, retryInMs: null });
      return;
    }
    const delay = backoffDelay(this.#attempt++, { baseMs: this.#o.baseDelayMs, maxMs: this.#o.maxDelayMs, random: this.#o.random });
    this.state = "waiting";
    if (code !== null) this.#emit("close", { code, reason, retryInMs: delay });
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #pruneAvoided() {
    const now = this.#o.now();
    for (const [url, until] of this.#avoid) if (until <= now) this.#avoid.delete(url);
  }

  // Browser lifecycle: no reconnecting while offline or while the page sits in the back/forward cache.
  #onOffline = () => {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (!this.#ws) this.state = "offline";
  };

  #onOnline = () => {
    if (!this.#running) return;
    if (this.#ws) this.#probe(); // the network changed under the socket: check it is still alive
    else if (!this.#retryTimer) this.#retry(null, "");
  };

  #onPageHide = () => {
    if (!this.#running) return;
    this.#running = false;
    this.#halt(CLOSE.NORMAL, "page hidden");
    this.#resumeOnShow = true;
  };

  #onPageShow = () => {
    if (!this.#resumeOnShow) return;
    this.#resumeOnShow = false;
    this.#running = true;
    this.#retry(null, "");
  };

  #listen(on) {
    const win = this.#o.window;
    if (!win || on === this.#listening) return;
    this.#listening = on;
    const method = on ? "addEventListener" : "removeEventListener";
    win[method]("offline", this.#onOffline);
    win[method]("online", this.#onOnline);
    win[method]("pagehide", this.#onPageHide);
    win[method]("pageshow", this.#onPageShow);
  }
}
