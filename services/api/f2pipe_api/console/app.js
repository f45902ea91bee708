// The console's shell: sign-in, navigation and the hash router (#/fleet, #/controllers/<mac>,
// #/registry, #/templates, #/import, #/dead-letters, #/audit). Hash routes keep every page a
// static file: the api serves /console/ and nothing else.
import { render, useEffect, useState } from "./vendor/htm-preact.js";
import { ApiError, get, onSignedOut, request, session } from "./api.js";
import { Controller } from "./controller.js";
import { Fleet } from "./fleet.js";
import { Audit, DeadLetters } from "./logs.js";
import { Import, Registry, Templates } from "./registry.js";
import { can, html, Problem } from "./ui.js";

const PAGES = [
  ["fleet", "Fleet", "viewer"],
  ["registry", "Registry", "viewer"],
  ["templates", "Templates", "viewer"],
  ["import", "Import", "operator"],
  ["dead-letters", "Dead letters", "viewer"],
  ["audit", "Audit log", "admin"],
];

function useRoute() {
  const parse = () => (location.hash.replace(/^#\/?/, "") || "fleet").split("/").map(decodeURIComponent);
  const [route, setRoute] = useState(parse());
  useEffect(() => {
    const on = () => setRoute(parse());
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return route;
}

function SignIn({ onSignedIn }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const me = await request("GET", "/v1/me", { token: token.trim() });
      session.set(token.trim());
      onSignedIn(me);
    } catch (e) {
      setError(e instanceof ApiError && e.status === 401
        ? new ApiError(401, { detail: "That token is not valid (wrong, expired or revoked).", reason: e.reason })
        : e);
    } finally { setBusy(false); }
  }
  return html`<main id="main" class="signin">
    <h1>f2pipe console</h1>
    <form onSubmit=${submit} aria-describedby="signin-help">
      <label class="field"><span>API token</span>
        <input type="password" name="token" autocomplete="off" required value=${token}
               onInput=${(e) => setToken(e.target.value)} />
      </label>
      <p id="signin-help" class="hint">A token from <code>f2pipe api-token create</code> (with
        <code>make dev</code>: <code>.dev/api-admin-token</code>). It is kept in this tab only
        and forgotten when the tab closes.</p>
      <button type="submit" disabled=${busy}>Sign in</button>
      <${Problem} error=${error} />
    </form>
  </main>`;
}

function Page({ route, me }) {
  const [page, arg] = route;
  if (page === "controllers" && arg) return html`<${Controller} mac=${arg} me=${me} />`;
  if (page === "registry") return html`<${Registry} me=${me} />`;
  if (page === "templates") return html`<${Templates} me=${me} selected=${arg} />`;
  if (page === "import") return html`<${Import} me=${me} />`;
  if (page === "dead-letters") return html`<${DeadLetters} me=${me} />`;
  if (page === "audit") return html`<${Audit} me=${me} />`;
  return html`<${Fleet} me=${me} />`;
}

function Shell({ me, onSignOut }) {
  const route = useRoute();
  useEffect(() => {
    const label = PAGES.find(([id]) => id === route[0])?.[1] || (route[0] === "controllers" ? route[1] : "Fleet");
    document.title = `${label} · f2pipe console`;
  }, [route.join("/")]);
  return html`
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>Skip to content</a>
    <header class="top">
      <a class="brand" href="#/fleet">f2pipe</a>
      <nav aria-label="Pages"><ul>
        ${PAGES.filter(([, , role]) => can(me, role)).map(([id, label]) => html`
          <li><a href="#/${id}" aria-current=${route[0] === id ? "page" : undefined}>${label}</a></li>`)}
      </ul></nav>
      <div class="who"><span data-testid="who">${me.name} (${me.role})</span>
        <button type="button" class="secondary" onClick=${onSignOut}>Sign out</button></div>
    </header>
    <main id="main" tabindex="-1"><${Page} route=${route} me=${me} /></main>`;
}

function App() {
  const [me, setMe] = useState(null);
  const [checking, setChecking] = useState(Boolean(session.token));
  const [error, setError] = useState(null);
  useEffect(() => onSignedOut(() => setMe(null)), []);
  useEffect(() => {
    if (!session.token) return;
    get("/v1/me").then(setMe, setError).finally(() => setChecking(false));
  }, []);
  if (checking) return html`<main id="main"><p>Checking your token…</p></main>`;
  if (!me) return html`<div><${SignIn} onSignedIn=${setMe} />${error && error.status !== 401 ? html`<${Problem} error=${error} />` : ""}</div>`;
  const signOut = () => { session.clear(); setMe(null); location.hash = "#/fleet"; };
  return html`<${Shell} me=${me} onSignOut=${signOut} />`;
}

const root = document.getElementById("app");
root.textContent = ""; // the boot message: preact would render beside it
render(html`<${App} />`, root);
