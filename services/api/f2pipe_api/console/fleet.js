// The fleet: every controller with its connectivity, last message, message rate and dead
// letters of the last hour. The list comes from the api and is kept current by the live
// stream (connectivity transitions, every reading and event); a full refresh every 30 s.
import { useEffect, useMemo, useRef, useState } from "./vendor/htm-preact.js";
import { get, stream } from "./api.js";
import { ago, Badge, html, Problem, Table, useTick, options } from "./ui.js";

const PAGE = 1000;
const HOUR = 3600 * 1000;
// A transition streamed this long before a refresh began may not be in the api's answer yet
// (the sink writes it a moment after the stream shows it): the refresh keeps it.
const STREAM_GRACE_MS = 10000;

async function loadFleet(status, q) {
  const [page, activity, letters] = await Promise.all([
    get("/v1/controllers", { status, q, limit: PAGE }),
    get("/v1/activity"),
    get("/v1/dead-letters", { limit: 500 }).catch(() => ({ items: [], unavailable: true })),
  ]);
  const rates = Object.fromEntries(activity.items.map((a) => [a.mac, a]));
  const dead = {};
  const since = Date.now() - HOUR;
  for (const d of letters.items) {
    if (d.mac && Date.parse(d.failed_at) >= since) dead[d.mac] = (dead[d.mac] || 0) + 1;
  }
  return { page, rates, dead, lettersUnavailable: Boolean(letters.unavailable) };
}

function applyConnectivity(row, frame) {
  row.status = frame.data.status;
  if (frame.data.last_seen) row.last_seen = frame.data.last_seen;
}

export function Fleet({ me }) {
  const [status, setStatus] = useState("");
  const [q, setQ] = useState("");
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [live, setLive] = useState("connecting");
  const rows = useRef(new Map());
  // mac -> the last connectivity frame streamed and when it came: also for rows not loaded yet.
  const streamed = useRef(new Map());
  const [, bump] = useState(0);
  const now = useTick(2000);

  async function refresh() {
    try {
      const started = Date.now();
      const fresh = await loadFleet(status, q.trim());
      rows.current = new Map(fresh.page.items.map((c) => [c.mac, c]));
      for (const [mac, s] of streamed.current) {
        const row = rows.current.get(mac);
        if (row && s.at >= started - STREAM_GRACE_MS) applyConnectivity(row, s.frame);
      }
      setData(fresh);
      setError(null);
    } catch (e) { setError(e); }
  }
  useEffect(() => { refresh(); const t = setInterval(refresh, 30000); return () => clearInterval(t); }, [status, q]);
  useEffect(() => stream((event, frame) => {
    if (event === "connectivity") streamed.current.set(frame.mac, { frame, at: Date.now() });
    const row = rows.current.get(frame.mac);
    if (!row) return;
    if (event === "connectivity") {
      applyConnectivity(row, frame);
    } else if (event === "reading" || event === "event") {
      row.last_seen = frame.timestamp > (row.last_seen || "") ? frame.timestamp : row.last_seen;
    } else return;
    bump((n) => n + 1);
  }, { onState: setLive }), []);

  const shown = useMemo(() => [...rows.current.values()].filter((c) => !status || c.status === status),
                        [data, status, rows.current.size, now]);
  const counts = { online: 0, offline: 0, unknown: 0 };
  for (const c of rows.current.values()) counts[c.status] = (counts[c.status] || 0) + 1;

  return html`<section aria-labelledby="fleet-title">
    <h1 id="fleet-title">Fleet</h1>
    <p class="summary" aria-live="polite">
      <span data-testid="count-online">${counts.online} online</span>${" · "}
      <span>${counts.offline} offline</span>${" · "}<span>${counts.unknown} never heard</span>
      ${data ? ` · ${data.page.total} registered` : ""}${" · stream "}<span data-testid="live">${live}</span>
    </p>
    <form class="filters" role="search" onSubmit=${(e) => e.preventDefault()}>
      <label class="field"><span>Search MAC or name</span>
        <input type="search" value=${q} onInput=${(e) => setQ(e.target.value)} /></label>
      <label class="field"><span>Status</span>
        <select value=${status} onChange=${(e) => setStatus(e.target.value)}>
          ${options([["", "all"], "online", "offline", ["unknown", "never heard"]], status)}
        </select></label>
    </form>
    <${Problem} error=${error} />
    ${data && data.page.total > PAGE ? html`<p class="hint">Showing the first ${PAGE} of ${data.page.total}: search to narrow.</p>` : ""}
    ${data?.lettersUnavailable ? html`<p class="hint">Dead letters unavailable (Kafka not configured for the api).</p>` : ""}
    <${Table} caption="Controllers" testid="fleet"
      head=${["Controller", "Site", "Status", "Last seen", "Messages/min", "Dead letters (1 h)"]}
      empty=${data ? "No controller matches." : "Loading…"}
      rows=${shown.map((c) => html`<tr data-mac=${c.mac} data-status=${c.status}>
        <th scope="row"><a href="#/controllers/${c.mac}">${c.name}</a><br /><code>${c.mac}</code></th>
        <td>${c.site || "—"}</td>
        <td><${Badge} status=${c.status} /></td>
        <td title=${c.last_seen || ""}>${ago(c.last_seen, now)}</td>
        <td class="num">${(data?.rates[c.mac]?.messages_per_minute ?? 0).toFixed(1)}</td>
        <td class="num">${data?.dead[c.mac] || 0}</td>
      </tr>`)} />
  </section>`;
}
