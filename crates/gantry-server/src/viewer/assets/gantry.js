// Gantry viewer: plain JavaScript, no build step.
// Sign-in token, cancel/retry, live statuses and durations, and step logs (pages from the
// JSON API, live tail over SSE resumed with Last-Event-ID, ANSI colours, permalinks, search).
(function () {
  "use strict";

  // ---- token --------------------------------------------------------------------------
  const TOKEN_KEY = "gantry.token";
  const token = () => localStorage.getItem(TOKEN_KEY) || "";
  function setToken(t) {
    if (t) {
      localStorage.setItem(TOKEN_KEY, t);
      document.cookie = "gantry_token=" + encodeURIComponent(t) + "; path=/; SameSite=Strict";
    } else {
      localStorage.removeItem(TOKEN_KEY);
      document.cookie = "gantry_token=; path=/; max-age=0; SameSite=Strict";
    }
    refreshAuth();
  }
  function refreshAuth() {
    const has = !!token();
    document.querySelectorAll(".auth-only").forEach((el) => { el.hidden = !has; });
    const signIn = document.getElementById("sign-in");
    const signOut = document.getElementById("sign-out");
    if (signIn) signIn.hidden = has;
    if (signOut) signOut.hidden = !has;
  }
  function notice(message) {
    const el = document.getElementById("notice");
    if (!el) return;
    el.textContent = message;
    el.hidden = !message;
  }

  // ---- cancel / retry ------------------------------------------------------------------
  async function act(button) {
    button.disabled = true;
    try {
      const r = await fetch(button.dataset.action, {
        method: "POST",
        headers: { Authorization: "Bearer " + token() },
      });
      if (r.ok) {
        location.reload();
        return;
      }
      const body = await r.json().catch(() => ({}));
      notice((body && body.error) || r.status + " " + r.statusText);
    } catch (e) {
      notice("The server did not answer: " + e);
    }
    button.disabled = false;
  }

  // ---- ANSI colours --------------------------------------------------------------------
  const PALETTE = ["#484f58", "#ff7b72", "#3fb950", "#d29922", "#58a6ff", "#bc8cff", "#39c5cf", "#b1bac4",
    "#6e7681", "#ffa198", "#56d364", "#e3b341", "#79c0ff", "#d2a8ff", "#56d4dd", "#f0f6fc"];
  function color256(n) {
    if (n < 16) return PALETTE[n];
    if (n >= 232) { const g = 8 + (n - 232) * 10; return "rgb(" + g + "," + g + "," + g + ")"; }
    n -= 16;
    const c = (v) => (v === 0 ? 0 : 55 + v * 40);
    return "rgb(" + c(Math.floor(n / 36)) + "," + c(Math.floor(n / 6) % 6) + "," + c(n % 6) + ")";
  }
  function applySgr(st, params) {
    const codes = params === "" ? [0] : params.split(/[;:]/).map((x) => (x === "" ? 0 : parseInt(x, 10)));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { st.fg = st.bg = null; st.bold = st.dim = st.italic = st.underline = false; }
      else if (c === 1) st.bold = true;
      else if (c === 2) st.dim = true;
      else if (c === 3) st.italic = true;
      else if (c === 4) st.underline = true;
      else if (c === 22) st.bold = st.dim = false;
      else if (c === 23) st.italic = false;
      else if (c === 24) st.underline = false;
      else if (c >= 30 && c <= 37) st.fg = c - 30;
      else if (c === 39) st.fg = null;
      else if (c >= 40 && c <= 47) st.bg = c - 40;
      else if (c === 49) st.bg = null;
      else if (c >= 90 && c <= 97) st.fg = c - 90 + 8;
      else if (c >= 100 && c <= 107) st.bg = c - 100 + 8;
      else if (c === 38 || c === 48) {
        let value = null;
        if (codes[i + 1] === 5) { value = color256(codes[i + 2] || 0); i += 2; }
        else if (codes[i + 1] === 2) { value = "rgb(" + (codes[i + 2] || 0) + "," + (codes[i + 3] || 0) + "," + (codes[i + 4] || 0) + ")"; i += 4; }
        if (c === 38) st.fg = value; else st.bg = value;
      }
    }
  }
  function styled(text, st) {
    if (st.fg === null && st.bg === null && !st.bold && !st.dim && !st.italic && !st.underline) {
      return document.createTextNode(text);
    }
    const span = document.createElement("span");
    span.textContent = text;
    if (typeof st.fg === "number") span.classList.add("ansi-fg-" + st.fg);
    else if (st.fg) span.style.color = st.fg;
    if (typeof st.bg === "number") span.style.background = PALETTE[st.bg];
    else if (st.bg) span.style.background = st.bg;
    if (st.bold) span.classList.add("ansi-bold");
    if (st.dim) span.classList.add("ansi-dim");
    if (st.italic) span.classList.add("ansi-italic");
    if (st.underline) span.classList.add("ansi-underline");
    return span;
  }
  // Text with escape sequences → DOM nodes. Only colours and styles (SGR) are kept; other
  // sequences (cursor moves, titles) are dropped. A carriage return shows what a terminal
  // would: the text after the last one.
  const ESCAPES = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]/g;
  function renderAnsi(text) {
    const cr = text.replace(/\r+$/, "").lastIndexOf("\r");
    if (cr >= 0) text = text.slice(cr + 1);
    const frag = document.createDocumentFragment();
    const st = { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
    let last = 0;
    let m;
    ESCAPES.lastIndex = 0;
    while ((m = ESCAPES.exec(text)) !== null) {
      if (m.index > last) frag.appendChild(styled(text.slice(last, m.index), st));
      if (m[2] === "m") applySgr(st, m[1]);
      last = ESCAPES.lastIndex;
    }
    if (last < text.length) frag.appendChild(styled(text.slice(last), st));
    return frag;
  }

  // ---- step logs -----------------------------------------------------------------------
  const PAGE = 1000;
  const steps = document.getElementById("steps");

  function lineHref(step, n) {
    const p = new URLSearchParams(location.search);
    p.set("step", step);
    if (steps && steps.dataset.attempt) p.set("attempt", steps.dataset.attempt);
    return "?" + p.toString() + "#L" + n;
  }

  // What a line opens or closes: kept the same as `marker` in viewer/log.rs.
  const PLAIN = /\x1b\[[0-9;:?]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]/g;
  function marker(text) {
    const t = text.replace(PLAIN, "").trim();
    if (t.startsWith("::group::")) return { group: t.slice(9).trim() };
    if (t === "::endgroup::") return { end: true };
    return null;
  }
  function two(n, w) { return String(n).padStart(w || 2, "0"); }
  function clock(at) {
    const d = new Date(at);
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds()) + "." + two(d.getMilliseconds(), 3);
  }
  const TIMES_KEY = "gantry.times";

  class StepLog {
    constructor(details) {
      this.d = details;
      this.step = details.dataset.step;
      this.url = details.dataset.log;
      this.box = details.querySelector(".log");
      this.followBox = details.querySelector(".follow-toggle");
      this.results = details.querySelector(".search-results");
      this.es = null;
      this.first = 1;
      this.next = 1;
      this.generation = 0;
      this.group = null; // the open section's body, while lines go into one
    }

    lineNode(l, tag, text) {
      const row = document.createElement(tag || "div");
      row.className = "ln " + l.stream + (tag === "summary" ? " group-head" : "");
      row.id = "L" + l.number;
      row.dataset.n = l.number;
      const num = document.createElement("a");
      num.className = "num";
      num.href = lineHref(this.step, l.number);
      num.textContent = l.number;
      num.addEventListener("click", (e) => {
        e.preventDefault();
        history.replaceState(null, "", num.href);
        this.highlight(l.number);
      });
      const ts = document.createElement("span");
      ts.className = "ts";
      ts.textContent = clock(l.at);
      const txt = document.createElement("span");
      txt.className = "txt";
      txt.appendChild(text === undefined ? renderAnsi(l.text) : document.createTextNode(text));
      row.append(num, ts, txt);
      return row;
    }

    // Lines go into the box, or into the section a `::group::` line opened until its
    // `::endgroup::`; sections start closed, as on the server's first page.
    append(lines) {
      const tail = this.box.querySelector(":scope > .tail");
      for (const l of lines) {
        if (l.number !== this.next) continue; // never a duplicate, never out of order
        this.next = l.number + 1;
        const m = marker(l.text);
        if (m && m.group !== undefined) {
          const d = document.createElement("details");
          d.className = "group";
          d.appendChild(this.lineNode(l, "summary", m.group));
          const body = document.createElement("div");
          body.className = "group-body";
          d.appendChild(body);
          this.box.insertBefore(d, tail);
          this.group = body;
        } else if (m && m.end && this.group) {
          this.group.appendChild(this.lineNode(l));
          this.group = null;
        } else if (this.group) {
          this.group.appendChild(this.lineNode(l));
        } else {
          this.box.insertBefore(this.lineNode(l), tail);
        }
      }
      if (this.followBox && this.followBox.checked) this.box.scrollTop = this.box.scrollHeight;
    }

    status(text) {
      let tail = this.box.querySelector(":scope > .tail");
      if (!tail) {
        tail = document.createElement("div");
        tail.className = "tail";
        this.box.appendChild(tail);
      }
      tail.textContent = "";
      if (text) {
        const s = document.createElement("div");
        s.className = "status-line";
        s.textContent = text;
        tail.appendChild(s);
      }
      return tail;
    }

    async getJSON(url) {
      const r = await fetch(url, { headers: token() ? { Authorization: "Bearer " + token() } : {} });
      if (!r.ok) throw new Error(r.status + " " + r.statusText);
      return r.json();
    }

    // Loads a window of the log (the tail, or around `target`) and follows it while it grows.
    async open(target) {
      this.close();
      const gen = ++this.generation;
      this.box.textContent = "";
      this.status("Loading…");
      const url = target ? this.url + "?from=" + Math.max(1, target - 200) + "&limit=" + PAGE : this.url + "?tail=" + PAGE;
      let page;
      try { page = await this.getJSON(url); } catch (e) { this.status("Cannot load the log: " + e.message); return; }
      if (gen !== this.generation) return;
      this.box.textContent = "";
      this.group = null;
      this.first = page.from;
      this.next = page.from;
      if (page.from > 1) this.earlierButton();
      this.status("");
      this.append(page.lines);
      if (target) this.highlight(target);
      if (!page.complete) this.follow();
      else this.ended(page.total);
    }

    earlierButton() {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "more earlier";
      b.textContent = "Show earlier lines";
      b.addEventListener("click", async () => {
        const from = Math.max(1, this.first - PAGE);
        const page = await this.getJSON(this.url + "?from=" + from + "&limit=" + (this.first - from));
        const frag = document.createDocumentFragment();
        for (const l of page.lines) frag.appendChild(this.lineNode(l));
        b.after(frag);
        this.first = from;
        if (from === 1) b.remove();
      });
      this.box.prepend(b);
    }

    ended(total) {
      if (this.next <= total) {
        const tail = this.status("");
        const b = document.createElement("button");
        b.type = "button";
        b.className = "more later";
        b.textContent = "Show more lines";
        b.addEventListener("click", async () => {
          const page = await this.getJSON(this.url + "?from=" + this.next + "&limit=" + PAGE);
          this.append(page.lines);
          this.ended(page.total);
        });
        tail.appendChild(b);
      } else {
        this.status(total === 0 ? "No output." : "End of log (" + total + (total === 1 ? " line)." : " lines)."));
      }
    }

    follow() {
      // EventSource reconnects by itself and sends Last-Event-ID: the server resumes after it.
      const es = new EventSource(this.url + "/follow?from=" + this.next);
      this.es = es;
      // One event carries a run of lines (a JSON array); its id is the last line's number.
      es.addEventListener("lines", (e) => this.append(JSON.parse(e.data)));
      es.addEventListener("end", () => {
        es.close();
        if (this.es === es) this.es = null;
        this.ended(this.next - 1);
      });
      es.addEventListener("open", () => this.status(""));
      es.addEventListener("error", () => {
        if (es.readyState !== EventSource.CLOSED) this.status("Reconnecting…");
      });
    }

    close() {
      this.generation++;
      if (this.es) { this.es.close(); this.es = null; }
    }

    async highlight(n) {
      this.box.querySelectorAll(".ln.target").forEach((el) => el.classList.remove("target"));
      let row = document.getElementById("L" + n);
      if (!row && (n < this.first || n >= this.next)) {
        await this.open(n);
        return;
      }
      if (row) {
        for (let g = row.closest("details.group"); g; g = g.parentElement.closest("details.group")) g.open = true;
        row.classList.add("target");
        this.box.scrollTop = row.offsetTop - this.box.offsetTop - this.box.clientHeight / 3;
        if (this.followBox) this.followBox.checked = false;
      }
    }

    async search(q) {
      this.results.textContent = "";
      this.results.hidden = false;
      let found;
      try {
        found = await this.getJSON(this.url + "/search?q=" + encodeURIComponent(q) + "&limit=200");
      } catch (e) { this.results.textContent = "Search failed: " + e.message; return; }
      if (found.matches.length === 0) { this.results.textContent = "No line contains “" + q + "”."; return; }
      for (const l of found.matches) {
        const a = document.createElement("a");
        a.href = lineHref(this.step, l.number);
        a.textContent = l.number + ": " + l.text.replace(/\x1b\[[0-9;:?]*[@-~]/g, "");
        a.addEventListener("click", (e) => {
          e.preventDefault();
          history.replaceState(null, "", a.href);
          this.highlight(l.number);
        });
        this.results.appendChild(a);
      }
    }
  }

  function setupSteps() {
    if (!steps) return;
    const logs = new Map();
    const all = Array.from(steps.querySelectorAll("details.step"));
    for (const d of all) {
      const log = new StepLog(d);
      logs.set(d, log);
      d.querySelector("form.search").addEventListener("submit", (e) => {
        e.preventDefault();
        const q = new FormData(e.target).get("q");
        if (q) log.search(q);
      });
      d.addEventListener("toggle", () => {
        if (d.open) {
          // One open step at a time: line anchors (#L120) belong to it.
          for (const other of all) if (other !== d && other.open) other.open = false;
          const p = new URLSearchParams(location.search);
          if (p.get("step") !== d.dataset.step) {
            p.set("step", d.dataset.step);
            history.replaceState(null, "", "?" + p.toString());
          }
          const m = location.hash.match(/^#L(\d+)$/);
          log.open(m ? parseInt(m[1], 10) : 0);
        } else {
          log.close();
          d.querySelector(".log").textContent = "";
        }
      });
    }
    const wanted = new URLSearchParams(location.search).get("step") || steps.dataset.selected;
    const first = all.find((d) => d.dataset.step === wanted);
    if (first && first.open) {
      // Open in the page already, with its last lines: load it again coloured, and follow it.
      const m = location.hash.match(/^#L(\d+)$/);
      logs.get(first).open(m ? parseInt(m[1], 10) : 0);
    } else if (first) {
      first.open = true;
    }
    for (const d of all) if (d !== first && d.open) d.open = false;
    // Per-line times, on or off for every log, remembered.
    const showTimes = (on) => {
      steps.querySelectorAll(".log").forEach((b) => b.classList.toggle("times", on));
      steps.querySelectorAll(".times-toggle").forEach((t) => { t.checked = on; });
    };
    steps.querySelectorAll(".times-toggle").forEach((t) => t.addEventListener("change", () => {
      localStorage.setItem(TIMES_KEY, t.checked ? "1" : "");
      showTimes(t.checked);
    }));
    showTimes(!!localStorage.getItem(TIMES_KEY));
    window.addEventListener("hashchange", () => {
      const open = all.find((d) => d.open);
      const m = location.hash.match(/^#L(\d+)$/);
      if (open && m) logs.get(open).highlight(parseInt(m[1], 10));
    });
    steps.gantryLogs = logs;
  }

  // ---- statuses and durations ----------------------------------------------------------
  // Kept the same as human_ms in viewer/html.rs.
  function human(ms) {
    const secs = Math.floor(ms / 1000);
    const h = Math.floor(secs / 3600), m = Math.floor(secs / 60) % 60, s = secs % 60;
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + s + "s";
    if (ms < 1000) return ms + "ms";
    if (ms < 10000) return (Math.floor(ms / 100) / 10).toFixed(1) + "s";
    return s + "s";
  }
  // Kept the same as ago in viewer/html.rs.
  function ago(t) {
    const secs = Math.floor((Date.now() - t) / 1000);
    if (secs < 5) return "just now";
    if (secs < 60) return secs + "s ago";
    if (secs < 3600) return Math.floor(secs / 60) + " min ago";
    if (secs < 86400) return Math.floor(secs / 3600) + " h ago";
    if (secs < 172800) return "1 day ago";
    return Math.floor(secs / 86400) + " days ago";
  }
  function tick() {
    document.querySelectorAll(".dur[data-started]").forEach((el) => {
      if (!el.dataset.started) return;
      const end = el.dataset.finished ? Date.parse(el.dataset.finished) : Date.now();
      el.textContent = human(Math.max(0, end - Date.parse(el.dataset.started)));
    });
    document.querySelectorAll("time[datetime]").forEach((t) => {
      t.textContent = ago(Date.parse(t.getAttribute("datetime")));
    });
  }
  // Kept the same as icon in viewer/html.rs.
  const ICONS = { success: "✔", failure: "✘", error: "⚠", cancelled: "⊘", skipped: "○", running: "●", queued: "◷", pending: "◷" };
  function setStatus(of, state) {
    document.querySelectorAll('[data-status-of="' + of + '"]').forEach((el) => {
      if (el.tagName.toLowerCase() === "a") {
        el.setAttribute("class", "node s-" + state);
        const t = el.querySelector("text.state");
        if (t) t.textContent = state;
      } else {
        el.className = (el.classList.contains("mark") ? "badge mark s-" : "badge s-") + state;
        el.title = state;
        const icon = el.querySelector(".icon");
        const label = el.querySelector(".label");
        if (icon) icon.textContent = ICONS[state] || "";
        if (label) label.textContent = state;
      }
    });
  }
  // How a failed step failed: kept the same as outcome_text in viewer/mod.rs.
  function outcomeText(s) {
    if (s.status !== "failure" && s.status !== "error") return "";
    const parts = [];
    if (s.exit_code !== null && s.exit_code !== undefined) parts.push("exit code " + s.exit_code);
    if (s.reason) parts.push(s.reason);
    return parts.join(" · ");
  }
  // A step's outcome and summary as they change: text only (textContent), never markup.
  function setOutcome(of, jobId, s) {
    const outcome = outcomeText(s);
    document.querySelectorAll('[data-outcome-of="' + of + '"]').forEach((el) => {
      el.textContent = outcome;
      el.hidden = !outcome;
    });
    const summary = s.summary || "";
    let shown = document.querySelectorAll('[data-summary-of="' + of + '"]');
    const list = document.querySelector('dl.summaries[data-summaries-of="' + jobId + '"]');
    if (shown.length === 0 && summary && list) {
      // The run page lists only the steps that said something: add this one in step order.
      const entry = document.createElement("div");
      entry.dataset.step = s.index;
      const dt = document.createElement("dt");
      dt.textContent = s.name;
      const dd = document.createElement("dd");
      dd.dataset.summaryOf = of;
      entry.append(dt, dd);
      const after = Array.from(list.children).find((e) => Number(e.dataset.step) > s.index);
      list.insertBefore(entry, after || null);
      shown = [dd];
    }
    shown.forEach((el) => {
      el.textContent = summary;
      if (el.tagName.toLowerCase() === "dd") el.parentElement.hidden = !summary;
      else el.hidden = !summary;
    });
    if (list) list.hidden = !Array.from(list.children).some((e) => !e.hidden);
  }
  function setTimes(of, started, finished) {
    document.querySelectorAll('[data-duration-of="' + of + '"]').forEach((el) => {
      el.dataset.started = started || "";
      el.dataset.finished = finished || "";
    });
  }
  async function poll(head) {
    const runId = head.dataset.run;
    try {
      const r = await fetch("/api/v1/runs/" + runId, { headers: token() ? { Authorization: "Bearer " + token() } : {} });
      if (r.ok) {
        const run = await r.json();
        setStatus(runId, run.status);
        setTimes(runId, run.started_at, run.finished_at);
        const latest = new Map();
        for (const job of run.jobs || []) {
          const seen = latest.get(job.id);
          if (!seen || seen.attempt < job.attempt) latest.set(job.id, job);
        }
        for (const job of run.jobs || []) {
          setStatus(job.id, job.status);
          setTimes(job.id, job.started_at, job.finished_at);
          // The attempt this page shows: the job page's own, else the latest.
          const shown = steps && steps.dataset.job === job.id
            ? String(job.attempt) === steps.dataset.attempt
            : latest.get(job.id) === job;
          for (const s of job.steps) {
            setStatus(job.id + ":" + s.index, s.status);
            setTimes(job.id + ":" + s.index, s.started_at, s.finished_at);
            if (shown) setOutcome(job.id + ":" + s.index, job.id, s);
            if (steps && steps.dataset.job === job.id && String(job.attempt) === steps.dataset.attempt) {
              const d = document.getElementById("step-" + s.index);
              if (d && d.dataset.state !== s.status) {
                d.dataset.state = s.status;
                // Follow the job from step to step while nothing else is open.
                if (s.status === "running" && !steps.querySelector("details.step[open]")) d.open = true;
              }
            }
          }
        }
        if (["success", "failure", "cancelled", "error", "skipped"].includes(run.status)) {
          head.dataset.final = "true";
          document.querySelectorAll('button[data-action$="/cancel"]').forEach((b) => b.remove());
          return;
        }
      }
    } catch (e) { /* try again */ }
    setTimeout(() => poll(head), 2000);
  }

  // ---- start ---------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("sign-in")?.addEventListener("click", () => {
      const t = prompt("API token (GANTRY_API_TOKEN):");
      if (t) { setToken(t.trim()); location.reload(); }
    });
    document.getElementById("sign-out")?.addEventListener("click", () => setToken(""));
    document.addEventListener("click", (e) => {
      const b = e.target.closest("button[data-action]");
      if (b) act(b);
    });
    document.querySelectorAll("time[datetime]").forEach((t) => {
      t.title = new Date(t.getAttribute("datetime")).toLocaleString();
    });
    tick();
    refreshAuth();
    setupSteps();
    setInterval(tick, 1000);
    const head = document.querySelector(".run-head[data-final=false]");
    if (head) setTimeout(() => poll(head), 2000);
  });

  window.gantry = { setToken, renderAnsi };
})();
