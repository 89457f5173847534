/** ui.js: the few DOM helpers both pages use. */

/** An element with attributes (class, data-*, ...) and children (strings become text, never HTML). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

/** "14:03:07" for a time in ms. */
export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

/** A duration for people: "4.2 ms", "180 ms", "3.5 s", "6 min". */
export function duration(ms) {
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

/** Set a status pill's text and tone ("", "good", "warn" or "bad"). */
export function setPill(pill, text, tone) {
  pill.textContent = text;
  pill.className = `pill ${tone}`.trim();
}

/** POST a JSON body and return the parsed answer, throwing with the server's message on failure. */
export async function postJson(url, body) {
  const answer = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new Error(data.error?.message ?? `${url} answered ${answer.status}`);
  return data;
}
