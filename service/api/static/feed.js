// Data access for the dashboard: the API key (kept in this tab's sessionStorage), JSON reads,
// and Server-Sent Events read with fetch(): EventSource cannot send an Authorization header,
// so the `data:` / `id:` lines are parsed here, and a dropped feed reconnects with
// Last-Event-ID (the server resumes after it: nothing missed, nothing twice).

const KEY = "streamnorm.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(extra) {
  const out = { ...extra };
  const key = apiKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

export class HttpError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

async function failure(response) {
  let detail = response.statusText;
  try {
    detail = (await response.json()).detail || detail;
  } catch {
    // not JSON: keep the status text
  }
  return new HttpError(response.status, detail);
}

/** GET a JSON document of this server (with the key, if one is set). */
export async function getJSON(path, signal) {
  const response = await fetch(path, {
    headers: headers({ Accept: "application/json" }), signal, cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

const SILENCE_MS = 40_000; // the server says something at least every 15 s

/**
 * One Server-Sent Events feed: `onEvent(json, id)` per `data:` event, `onState(state, error)`
 * with "connecting" | "live" | "error". `lastId` is where it starts (the end of the history
 * a view read first; null: new events only) and then the id of the last event seen.
 */
export class Feed {
  constructor(path, { onEvent, onState = () => {}, lastId = null }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = lastId;
    this.stopped = false;
    this.life = new AbortController();
  }

  start() {
    this.loop();
    return this;
  }

  stop() {
    this.stopped = true;
    this.life.abort();
  }

  async loop() {
    let delay = 1000;
    while (!this.stopped) {
      const conn = new AbortController();
      const stopConn = () => conn.abort();
      this.life.signal.addEventListener("abort", stopConn, { once: true });
      this.onState("connecting");
      try {
        const extra = { Accept: "text/event-stream" };
        if (this.lastId !== null) extra["Last-Event-ID"] = this.lastId;
        const response = await fetch(this.path, {
          headers: headers(extra), signal: conn.signal, cache: "no-store",
        });
        if (!response.ok) throw await failure(response);
        this.onState("live");
        delay = 1000;
        await this.read(response.body, conn);
      } catch (error) {
        if (this.stopped) return;
        this.onState("error", error);
        if (error instanceof HttpError) delay = Math.max(delay, 5000);
      } finally {
        this.life.signal.removeEventListener("abort", stopConn);
      }
      await sleep(delay, this.life.signal);
      delay = Math.min(delay * 2, 15_000);
    }
  }

  async read(body, conn) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let heard = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - heard > SILENCE_MS) conn.abort(); // a silent, half-open connection
    }, 5000);
    let buffer = "";
    let data = [];
    let id = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        heard = Date.now();
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") { // the blank line ends an event
            if (id !== null) this.lastId = id;
            if (data.length) this.dispatch(data.join("\n"), this.lastId);
            data = [];
            id = null;
          } else if (!line.startsWith(":")) { // a line starting with ':' is a comment
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let text = colon < 0 ? "" : line.slice(colon + 1);
            if (text.startsWith(" ")) text = text.slice(1);
            if (field === "data") data.push(text);
            else if (field === "id") id = text;
          }
        }
      }
    } finally {
      clearInterval(watchdog);
      reader.cancel().catch(() => {});
    }
  }

  dispatch(text, id) {
    let event;
    try {
      event = JSON.parse(text);
    } catch {
      return; // not ours to show
    }
    this.onEvent(event, id);
  }
}
