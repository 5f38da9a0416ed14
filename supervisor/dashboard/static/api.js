// Talking to the control API: the token, JSON calls, and reading streamed responses.
// The token: from the URL fragment (never sent to the server), kept for this tab only.
const TOKEN_KEY = "corral-token:" + location.host;
export const token = (() => {
  const m = location.hash.match(/(?:^#|&)token=([A-Za-z0-9_-]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, m[1]);
    history.replaceState(null, "", location.pathname + location.search);  // off the URL bar
    return m[1];
  }
  return sessionStorage.getItem(TOKEN_KEY);
})();

// A new URL pasted into this tab (after `corral dashboard --rotate-token`) changes only the
// fragment, which reloads nothing by itself.
addEventListener("hashchange", () => { if (/token=/.test(location.hash)) location.reload(); });

export function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function call(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: headers(body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = null; }
  if (!res.ok) throw new HttpError(res.status, (data && data.error) || `HTTP ${res.status}`);
  return data;
}

// Complete records of a streamed response, split on `sep` ("\n\n": SSE frames, "\n": NDJSON).
export async function* records(res, sep) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf(sep)) >= 0) {
      yield buf.slice(0, i);
      buf = buf.slice(i + sep.length);
    }
  }
}

export function parseFrame(chunk) {
  let kind = "message", data = "";
  for (const line of chunk.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  return [kind, data ? JSON.parse(data) : null];
}
