// Portico's dashboard: one page, no framework, no build step. Live data arrives as `tick`
// events on /dashboard/events (EventSource reconnects by itself, sending Last-Event-ID);
// everything else is fetched from /dashboard/api/*. All text goes in through textContent.
"use strict";

const state = { tick: null, view: "overview", filter: { service: "", state: "" },
  filtered: null, detail: null, capacity: null, capacityAt: 0 };

const FINAL = new Set(["SUCCESS", "FAILURE", "REVOKED", "EXPIRED"]);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function num(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits === undefined ? 1 : digits);
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 10 ? value.toFixed(2) + " ms" : Math.round(value) + " ms";
}

function secs(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1) return Math.round(value * 1000) + " ms";
  if (value < 120) return value.toFixed(1) + " s";
  if (value < 7200) return Math.round(value / 60) + " min";
  return Math.round(value / 3600) + " h";
}

function td(text, cls) { return el("td", { class: cls, text: text }); }
function stateCell(text) { return el("td", {}, el("span", { class: "state state-" + text, text })); }

// ---- views -------------------------------------------------------------------------------

function showView(name) {
  const views = ["overview", "jobs", "workers", "managed", "capacity"];
  if (!views.includes(name)) name = "overview";
  state.view = name;
  for (const view of views) {
    document.getElementById("view-" + view).hidden = view !== name;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === name);
  }
  render();
}

function render() {
  const tick = state.tick;
  if (!tick) return;
  if (state.view === "overview") renderOverview(tick.overview);
  if (state.view === "jobs") renderJobs(tick);
  if (state.view === "workers") renderWorkers(tick.workers);
  if (state.view === "managed") renderManaged(tick.manager);
  if (state.view === "capacity") loadCapacity(false);
}

function sparkline(values) {
  const width = 120, height = 24;
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values.map((v, i) => (i * step).toFixed(1) + "," +
    (height - (v / max) * (height - 2) - 1).toFixed(1)).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  line.setAttribute("class", "spark");
  svg.append(line);
  return svg;
}

function renderOverview(overview) {
  document.getElementById("about").textContent =
    `Portico ${overview.version} · up ${secs(overview.uptime_seconds)} · ` +
    `${overview.pages} open dashboard(s)`;
  const rows = overview.services.map((s) => el("tr", {},
    td(s.service), td(s.route || ""), td(num(s.requests_per_second), "num"),
    td((s.error_rate * 100).toFixed(1) + " %", "num"), td(ms(s.p50_ms), "num"),
    td(ms(s.p99_ms), "num"), el("td", { class: "hide-narrow" }, sparkline(s.per_second))));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "no requests yet" })));
  fill(document.querySelector("#requests tbody"), rows);
  fill(document.querySelector("#listeners tbody"), overview.listeners.map((l) => el("tr", {},
    td(l.addr), td(l.tls ? "yes" : "no"), td(l.services.join(", ")))));
  document.getElementById("token-label").hidden = !overview.cancel_needs_token;
}

function renderJobs(tick) {
  const services = tick.jobs;
  fill(document.querySelector("#job-services tbody"), services.map((s) => el("tr", {},
    td(s.service), td(s.queue_depth, "num"), td(s.workers_busy, "num"),
    td(s.workers_idle, "num"), td(s.workers_lost, "num"), td(s.workers_needed, "num"),
    td(num(s.arrival_rate, 2), "num"), td(num(s.completion_rate, 2), "num"),
    td(secs(s.wait_seconds_mean), "num"))));
  const select = document.querySelector("#job-filter select[name=service]");
  const known = new Set([...select.options].map((o) => o.value));
  for (const s of services) {
    if (!known.has(s.service)) select.append(el("option", { text: s.service, value: s.service }));
  }
  document.getElementById("token-label").hidden = !tick.overview.cancel_needs_token;
  const filtering = state.filter.service || state.filter.state;
  if (filtering) {
    loadFiltered();
  } else {
    renderJobRows(tick.recent);
  }
  if (state.detail && !FINAL.has(state.detail.state)) loadDetail(state.detail.uuid);
}

async function loadFiltered() {
  const query = new URLSearchParams({ limit: "50" });
  if (state.filter.service) query.set("service", state.filter.service);
  if (state.filter.state) query.set("state", state.filter.state);
  try {
    const answer = await fetch("/dashboard/api/tasks?" + query);
    if (!answer.ok) return;
    const tasks = Object.values(await answer.json());
    tasks.sort((a, b) => b.received - a.received);
    renderJobRows(tasks);
  } catch (error) {
    console.warn("listing jobs", error);
  }
}

function renderJobRows(rows) {
  const seen = new Set();
  const sorted = rows.filter((r) => !seen.has(r.uuid) && seen.add(r.uuid))
    .sort((a, b) => b.received - a.received);
  const trs = sorted.map((job) => {
    const waited = job.started ? job.started - job.received : null;
    const ran = job.runtime !== null ? job.runtime : (job.started ? Date.now() / 1000 - job.started : null);
    const progress = el("progress", { max: 100 });
    progress.value = job.progress === null ? (job.state === "SUCCESS" ? 100 : 0) : job.progress;
    const cancel = FINAL.has(job.state) ? "" :
      el("button", { class: "danger", text: "Cancel", "data-cancel": job.uuid,
        onclick: (event) => { event.stopPropagation(); cancelJob(job.uuid); } });
    return el("tr", { class: "clickable", "data-id": job.uuid, "data-state": job.state,
      onclick: () => loadDetail(job.uuid) },
      el("td", { title: job.uuid, text: job.uuid.slice(0, 8) }), td(job.name),
      stateCell(job.state), el("td", {}, progress, " ", job.progress === null ? "" : job.progress + "%"),
      td(job.attempts, "num"), td(job.worker || "–", "hide-narrow"),
      td(secs(waited), "num hide-narrow"), td(secs(ran), "num"), el("td", {}, cancel));
  });
  if (trs.length === 0) trs.push(el("tr", {}, el("td", { colspan: 9, class: "muted", text: "no jobs" })));
  fill(document.querySelector("#jobs tbody"), trs);
}

async function loadDetail(id) {
  try {
    const answer = await fetch("/dashboard/api/task/info/" + encodeURIComponent(id));
    if (!answer.ok) return;
    state.detail = await answer.json();
    renderDetail(state.detail);
  } catch (error) {
    console.warn("job detail", error);
  }
}

function pre(value) {
  return el("pre", { text: typeof value === "string" ? value : JSON.stringify(value, null, 2) });
}

function renderDetail(job) {
  const box = document.getElementById("job-detail");
  box.hidden = false;
  box.replaceChildren(
    el("h3", { text: `Job ${job.uuid}` }),
    el("p", {}, el("span", { class: "state state-" + job.state, text: job.state }),
      ` · ${job.name} · attempt ${job.attempts} · worker ${job.worker || "–"}`),
    el("h3", { text: "Meta" }), pre(job.meta),
    job.exception ? el("h3", { class: "error", text: "Error" }) : el("h3", { text: "Result" }),
    job.exception ? pre((job.exc_type ? job.exc_type + ": " : "") + job.exception) : pre(job.result),
    el("h3", { text: "Log (tail)" }), pre(job.log || ""),
    el("button", { text: "Close", onclick: () => { state.detail = null; box.hidden = true; } }));
}

async function cancelJob(id) {
  const token = document.querySelector("#job-filter input[name=token]").value.trim();
  const headers = token ? { Authorization: "Bearer " + token } : {};
  try {
    const answer = await fetch("/dashboard/api/task/revoke/" + encodeURIComponent(id),
      { method: "POST", headers });
    if (!answer.ok) {
      const problem = await answer.json().catch(() => ({}));
      alert("Cancel refused: " + (problem.error || answer.status));
    }
  } catch (error) {
    console.warn("cancel", error);
  }
}

function renderWorkers(workers) {
  const rows = workers.map((w) => el("tr", { "data-worker": w.name },
    td(w.name), td(w.kind + (w.remote ? " (remote)" : "")), td(w.services.join(", ")),
    stateCell(w.status), td(w.heartbeat_seconds === null ? "–" : secs(w.heartbeat_seconds) + " ago"),
    td(w.active.map((id) => id.slice(0, 8)).join(" ") || "–"), td(w.processed, "num")));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "no worker has taken a job yet" })));
  fill(document.querySelector("#workers tbody"), rows);
}

function renderManaged(manager) {
  const box = document.getElementById("managed-services");
  const registry = document.getElementById("registry-state");
  if (!manager) {
    registry.textContent = "This process runs no service manager.";
    box.replaceChildren();
    return;
  }
  registry.textContent = manager.reachable ? "Registry reachable." : "Registry unreachable: showing the last view.";
  box.replaceChildren(...manager.services.map((s) => {
    const rows = s.instances.map((i) => el("tr", { "data-instance": i.id },
      td(i.id.slice(0, 12)), td(i.agent), td(i.addr), stateCell(i.state),
      td(i.latency_ms === undefined || i.latency_ms === null ? "–" : ms(i.latency_ms), "num"),
      td(i.in_flight === undefined || i.in_flight === null ? "–" : i.in_flight, "num"),
      td(i.ejections === undefined || i.ejections === null ? "–" : i.ejections, "num"),
      td(secs(i.age_seconds), "num")));
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "no instance (started on the first request)" })));
    const allocations = (s.allocations || []).map((a) => el("li", {
      text: `${a.reason} · ${a.outcome} · ${secs(a.seconds)} · ${secs(a.ago_seconds)} ago` }));
    return el("div", { class: "card", "data-service": s.name },
      el("h3", { text: `${s.name} ` }, el("small", { text: `min ${s.min} · max ${s.max}` })),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["Instance", "Agent", "Address", "State", "Latency",
          "In flight", "Ejections", "Age"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...rows))),
      allocations.length ? el("div", {}, el("h3", { text: "Recent allocations" }), el("ul", {}, ...allocations)) : null);
  }));
  fill(document.querySelector("#agents tbody"), manager.agents.map((a) => el("tr", {},
    td(a.id), td(a.advertise), el("td", {}, el("progress", { max: a.max_instances || 1, value: a.instances }),
      ` ${a.instances}/${a.max_instances}`), td(secs(a.age_seconds), "num"))));
}

// ---- capacity charts ---------------------------------------------------------------------

async function loadCapacity(force) {
  if (!force && Date.now() - state.capacityAt < 10000 && state.capacity) return;
  state.capacityAt = Date.now();
  try {
    const answer = await fetch("/dashboard/api/capacity");
    if (!answer.ok) return;
    state.capacity = await answer.json();
    renderCapacity(state.capacity);
  } catch (error) {
    console.warn("capacity", error);
  }
}

function chart(title, points, a, b, labels) {
  const width = 320, height = 140, pad = 28;
  const values = points.flatMap((p) => [p[a], b ? p[b] : 0]).map((v) => v || 0);
  const max = Math.max(1, ...values);
  const t0 = points.length ? points[0].at : 0;
  const t1 = points.length ? points[points.length - 1].at : 1;
  const span = Math.max(1, t1 - t0);
  const x = (t) => pad + ((t - t0) / span) * (width - pad - 6);
  const y = (v) => height - 18 - ((v || 0) / max) * (height - 30);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  add("line", { x1: pad, y1: height - 18, x2: width - 6, y2: height - 18, class: "axis" });
  add("line", { x1: pad, y1: 8, x2: pad, y2: height - 18, class: "axis" });
  add("text", { x: 2, y: 14, class: "axis-text" }, Number(max.toPrecision(2)));
  add("text", { x: 2, y: height - 20, class: "axis-text" }, "0");
  add("text", { x: pad, y: height - 4, class: "axis-text" }, points.length ? "-" + secs(t1 - t0) : "");
  add("text", { x: width - 30, y: height - 4, class: "axis-text" }, "now");
  const line = (key, cls) => add("polyline", { class: cls,
    points: points.map((p) => x(p.at).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" ") });
  line(a, "line-a");
  if (b) line(b, "line-b");
  return el("div", { class: "chart" }, el("div", { class: "title", text: title }), svg,
    el("div", { class: "legend" }, el("span", { class: "key-a", text: "— " + labels[0] }),
      b ? el("span", { class: "key-b", text: "- - " + labels[1] }) : null));
}

function renderCapacity(capacity) {
  const box = document.getElementById("charts");
  const names = Object.keys(capacity.history);
  if (names.length === 0) {
    box.replaceChildren(el("p", { class: "muted", text: "No job service, or no point yet (one every 10 s)." }));
    return;
  }
  box.replaceChildren(...names.map((name) => {
    const points = capacity.history[name];
    return el("div", { "data-service": name }, el("h3", { text: name }), el("div", { class: "charts" },
      chart("Queue depth", points, "queue_depth", null, ["jobs waiting"]),
      chart("Arrival and completion rate (/s)", points, "arrival_rate", "completion_rate", ["arrivals", "completions"]),
      chart("Mean wait (s)", points, "wait_seconds_mean", null, ["wait"]),
      chart("Workers needed vs present", points, "workers_needed", "workers_present", ["needed", "present"])));
  }));
}

// ---- live stream -------------------------------------------------------------------------

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/dashboard/events");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting"; live.className = "live off"; });
  source.addEventListener("tick", (event) => {
    state.tick = JSON.parse(event.data);
    render();
  });
}

document.getElementById("job-filter").addEventListener("change", (event) => {
  const form = event.currentTarget;
  state.filter.service = form.elements.service.value;
  state.filter.state = form.elements.state.value;
  render();
});
document.getElementById("job-filter").addEventListener("submit", (event) => event.preventDefault());
window.addEventListener("hashchange", () => showView(location.hash.slice(1)));
showView(location.hash.slice(1) || "overview");
connect();
