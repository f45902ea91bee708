// The api client: the bearer token lives in this tab's sessionStorage only (gone when the tab
// closes; never in a URL, a cookie or localStorage), and every request carries it in the
// Authorization header. Refusals are RFC 9457 problems: ApiError keeps status and reason.

const KEY = "f2pipe.token";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.reason = problem.reason || "http_" + status;
    this.problem = problem;
  }
}

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set(token) { sessionStorage.setItem(KEY, token); },
  clear() { sessionStorage.removeItem(KEY); },
};

const listeners = new Set();
export function onSignedOut(fn) { listeners.add(fn); return () => listeners.delete(fn); }

function headers(extra = {}) {
  const h = { Accept: "application/json, application/problem+json", ...extra };
  if (session.token) h.Authorization = `Bearer ${session.token}`;
  return h;
}

async function problemOf(response) {
  try { return await response.json(); } catch { return { title: response.statusText }; }
}

export async function request(method, path, { body, query, raw, contentType, token } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) url.searchParams.append(k, String(one));
  }
  const extra = {};
  let payload;
  if (raw !== undefined) { payload = raw; extra["Content-Type"] = contentType || "text/plain"; }
  else if (body !== undefined) { payload = JSON.stringify(body); extra["Content-Type"] = "application/json"; }
  const h = headers(extra);
  if (token) h.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { method, headers: h, body: payload, cache: "no-store",
                                       credentials: "omit", redirect: "error" });
  if (response.status === 401 && !token) {
    session.clear();
    listeners.forEach((fn) => fn());
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path, query) => request("GET", path, { query });
export const post = (path, body, query) => request("POST", path, { body, query });

// The live stream (SSE over fetch, so the token travels in a header, not the URL). Calls
// onFrame(event, data) for each frame; reconnects after a drop; returns a stop function.
export function stream(onFrame, { macs = null, onState = () => {} } = {}) {
  let stopped = false;
  let controller = null;
  async function run() {
    let delay = 1000;
    while (!stopped) {
      controller = new AbortController();
      try {
        const url = new URL("/v1/stream", location.origin);
        for (const mac of macs || []) url.searchParams.append("mac", mac);
        const response = await fetch(url, { headers: headers({ Accept: "text/event-stream" }),
                                             signal: controller.signal, credentials: "omit" });
        if (response.status === 401) { session.clear(); listeners.forEach((fn) => fn()); return; }
        if (!response.ok) throw new ApiError(response.status, await problemOf(response));
        onState("live");
        delay = 1000;
        await readFrames(response.body, onFrame);
      } catch (error) {
        if (stopped) return;
        onState("reconnecting");
      }
      if (stopped) return;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }
  run();
  return () => { stopped = true; controller?.abort(); };
}

async function readFrames(body, onFrame) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (!data.length) continue;
      try { onFrame(event, JSON.parse(data.join("\n"))); } catch { /* one bad frame: skip it */ }
    }
  }
}
