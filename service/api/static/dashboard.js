// The dashboard's shell: the lists of races and models (refreshed every few seconds), the
// route in the URL's hash (#/race/NAME, #/model/NAME), the API key field, the theme, and the
// live indicator. The views themselves are in views.js.

import { esc, fmt } from "./chart.js";
import { HttpError, apiKey, getJSON, setApiKey } from "./feed.js";
import { ModelView, RaceView, normLabel } from "./views.js";

const $ = (id) => document.getElementById(id);
const LIST_EVERY_MS = 4000;

const app = {
  view: null,
  route: "",
  races: [],
  models: [],
  racesServed: true,
  feeds: new Map(), // feed → its state, for the indicator
};

// -- errors a person can act on ------------------------------------------------------------
function banner(text) {
  const el = $("banner");
  el.textContent = text || "";
  el.hidden = !text;
}

function explain(error) {
  if (error instanceof HttpError && (error.status === 401 || error.status === 403)) {
    banner(`The server refused the request (${error.status}: ${error.detail}). `
      + "Type a read key (STREAMNORM_READ_KEYS or STREAMNORM_API_KEYS) in the API key field.");
    return true;
  }
  return false;
}

// -- the live indicator ----------------------------------------------------------------------
const RANK = { live: 0, connecting: 1, error: 2 };

function feedState(feed, state, error) {
  if (state === null) app.feeds.delete(feed);
  else app.feeds.set(feed, state);
  if (error) explain(error);
  let worst = null;
  for (const s of app.feeds.values()) if (worst === null || RANK[s] > RANK[worst]) worst = s;
  const el = $("conn");
  el.dataset.state = worst || "idle";
  $("conn-text").textContent = { live: "live", connecting: "connecting…", error: "reconnecting…" }[worst] || "idle";
}

// -- the lists ---------------------------------------------------------------------------------
function setHTML(el, html) {
  if (el.dataset.html !== html) { el.innerHTML = html; el.dataset.html = html; }
}

function renderLists() {
  const races = app.races;
  const memberOf = new Map();
  for (const race of races) for (const m of race.members || []) memberOf.set(m.name, race.name);
  $("race-count").textContent = app.racesServed ? String(races.length) : "";
  $("races-empty").hidden = !app.racesServed || races.length > 0;
  setHTML($("races"), races.map((race) => {
    const href = `#/race/${encodeURIComponent(race.name)}`;
    const active = app.route === href ? " active" : "";
    const n = (race.members || []).length;
    const leader = race.leader ? `★ ${esc(race.leader)}` : "no leader yet";
    return `<li><a class="race${active}" href="${href}" data-name="${esc(race.name)}">`
      + `<div class="row"><span class="name">${esc(race.name)}</span><span class="n">${n} members</span></div>`
      + `<div class="meta">${esc(race.metric || "")} · ${leader}</div></a></li>`;
  }).join(""));
  const filter = $("filter");
  filter.hidden = app.models.length < 12;
  const needle = filter.hidden ? "" : filter.value.trim().toLowerCase();
  const shown = app.models.filter((m) => !needle || m.name.toLowerCase().includes(needle));
  $("model-count").textContent = String(app.models.length);
  $("models-empty").hidden = app.models.length > 0;
  setHTML($("models"), shown.map((m) => {
    const href = `#/model/${encodeURIComponent(m.name)}`;
    const active = app.route === href ? " active" : "";
    const race = memberOf.get(m.name);
    const meta = [normLabel(m.norm), `${m.cell} h${m.hidden_size}`, race ? `race ${race}` : ""]
      .filter(Boolean).join(" · ");
    return `<li><a class="model${active}" href="${href}" data-name="${esc(m.name)}">`
      + `<div class="row"><span class="name">${esc(m.name)}</span><span class="n" title="updates">${fmt(m.updates)}</span></div>`
      + `<div class="meta">${esc(meta)}</div></a></li>`;
  }).join(""));
}

async function refreshLists() {
  const [models, races] = await Promise.allSettled([getJSON("/models"), getJSON("/races")]);
  let refused = false;
  if (models.status === "fulfilled") {
    app.models = models.value.sort((a, b) => a.name.localeCompare(b.name));
  } else {
    refused = explain(models.reason);
  }
  if (races.status === "fulfilled") {
    app.racesServed = true;
    app.races = races.value.sort((a, b) => a.name.localeCompare(b.name));
  } else if (races.reason instanceof HttpError && races.reason.status === 404) {
    app.racesServed = false; // a server without races
    app.races = [];
  } else {
    refused = explain(races.reason) || refused;
  }
  if (!refused && models.status === "fulfilled") banner("");
  renderLists();
}

// -- routing -------------------------------------------------------------------------------------
function show(route) {
  app.route = route;
  if (app.view) app.view.stop();
  app.view = null;
  const [, kind, raw] = route.match(/^#\/(race|model)\/(.+)$/) || [];
  $("welcome").hidden = Boolean(kind);
  $("race-view").hidden = kind !== "race";
  $("model-view").hidden = kind !== "model";
  const hooks = { feedState, explain, open: (href) => { location.hash = href; } };
  if (kind === "race") app.view = new RaceView(decodeURIComponent(raw), hooks);
  if (kind === "model") app.view = new ModelView(decodeURIComponent(raw), hooks);
  if (app.view) app.view.start().catch((error) => explain(error) || banner(String(error.message || error)));
  renderLists();
}

// -- the key and the theme ---------------------------------------------------------------------
function setupKey() {
  const field = $("api-key");
  field.value = apiKey();
  $("key-form").addEventListener("submit", (event) => { event.preventDefault(); field.blur(); });
  field.addEventListener("change", () => {
    setApiKey(field.value.trim());
    banner("");
    refreshLists();
    show(location.hash); // restart the view's reads and feeds with the new key
  });
}

function setupTheme() {
  const root = document.documentElement;
  const saved = localStorage.getItem("streamnorm.theme");
  if (saved) root.dataset.theme = saved;
  $("theme").addEventListener("click", () => {
    const dark = root.dataset.theme
      ? root.dataset.theme === "dark"
      : !matchMedia("(prefers-color-scheme: light)").matches;
    root.dataset.theme = dark ? "light" : "dark";
    localStorage.setItem("streamnorm.theme", root.dataset.theme);
  });
}

setupTheme();
setupKey();
$("filter").addEventListener("input", renderLists);
window.addEventListener("hashchange", () => show(location.hash));
refreshLists().finally(() => setInterval(refreshLists, LIST_EVERY_MS));
show(location.hash);
