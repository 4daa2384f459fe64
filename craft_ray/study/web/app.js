"use strict";
// The reader-study page: no framework, no build step. The server decides what comes next; this
// page only shows it, collects one answer at a time and sends it at once. Every request carries the
// reader's access token (Authorization header); images too, fetched here and shown from blob URLs.

const $ = (id) => document.getElementById(id);
const KEYS = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "none" };
const state = { reader: null, token: null, pair: null, shownAt: 0, busy: false, revising: false, last: null };

function show(section) {
  for (const id of ["login", "task", "done"]) $(id).hidden = id !== section;
}

function withToken(options) {
  const headers = Object.assign({}, (options || {}).headers, { Authorization: `Bearer ${state.token}` });
  return Object.assign({}, options, { headers });
}

async function api(path, options) {
  const response = await fetch(path, withToken(options));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  return { ok: response.ok, status: response.status, body };
}

function message(r) {
  const detail = r.body && r.body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return `request failed (HTTP ${r.status})`;
}

function readerPath(rest) {
  return `/api/readers/${encodeURIComponent(state.reader)}${rest}`;
}

function forget() {
  state.reader = null;
  state.token = null;
  localStorage.removeItem("reader");
  localStorage.removeItem("token");
}

async function login(reader, token) {
  state.reader = reader;
  state.token = token;
  const r = await api(readerPath("/progress"));
  if (!r.ok) {
    forget();
    $("login-error").textContent = message(r);
    show("login");
    return;
  }
  localStorage.setItem("reader", reader);
  localStorage.setItem("token", token);
  $("login-error").textContent = "";
  $("who").textContent = `reader ${reader}`;
  $("switch").hidden = false;
  render(r.body);
}

function render(progress) {
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  state.last = progress.last;
  state.revising = false;
  $("progress").textContent = `${progress.done} / ${progress.total} answered`;
  if (!progress.next) {
    state.pair = null;
    $("revise-done").hidden = !state.last;
    show("done");
    return;
  }
  showPair(progress.next);
}

function fillFindings(side, findings, ticked) {
  const box = $(`${side}-findings`);
  box.querySelectorAll("label, p").forEach((el) => el.remove());
  if (!findings.length) {
    const none = document.createElement("p");
    none.textContent = "no checklist for this label set";
    box.appendChild(none);
  }
  for (const f of findings) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = f.id;
    input.name = `${side}-wrong`;
    input.checked = ticked.includes(f.id);
    label.appendChild(input);
    label.appendChild(document.createTextNode(` ${f.text} (${f.label})`));
    box.appendChild(label);
  }
}

function ticked(side) {
  return Array.from(document.querySelectorAll(`input[name="${side}-wrong"]:checked`)).map((i) => i.value);
}

function markChoice(choice) {
  for (const c of ["left", "none", "right"]) $(`choose-${c}`).classList.toggle("chosen", c === choice);
  $("left-img").classList.toggle("chosen", choice === "left");
  $("right-img").classList.toggle("chosen", choice === "right");
}

async function showImage(id, path, pairId) {
  // an <img src> cannot send the token: fetch the PNG with it and show it from a blob URL
  const img = $(id);
  const response = await fetch(path, withToken());
  if (!response.ok) { $("task-error").textContent = `image: request failed (HTTP ${response.status})`; return; }
  const blob = await response.blob();
  if (!state.pair || state.pair.pair_id !== pairId) return;  // the reader has moved on meanwhile
  const url = URL.createObjectURL(blob);
  if (img.dataset.blob) URL.revokeObjectURL(img.dataset.blob);
  img.dataset.blob = url;
  img.src = url;
}

function showPair(pair) {
  state.pair = pair;
  $("task").dataset.pair = pair.pair_id;
  $("labels").textContent = pair.labels.join(", ");
  for (const id of ["left-img", "right-img"]) $(id).removeAttribute("src");
  showImage("left-img", pair.left, pair.pair_id);
  showImage("right-img", pair.right, pair.pair_id);
  fillFindings("left", pair.findings, pair.answer ? pair.answer.wrong_left : []);
  fillFindings("right", pair.findings, pair.answer ? pair.answer.wrong_right : []);
  markChoice(pair.answer ? pair.answer.choice : null);
  $("revising").hidden = !state.revising;
  $("revise").hidden = state.revising || !state.last;
  $("skip-revise").hidden = !state.revising;
  $("task-error").textContent = "";
  show("task");
  state.shownAt = performance.now();
}

function setBusy(busy) {
  state.busy = busy;
  document.querySelectorAll(".choices button").forEach((b) => { b.disabled = busy; });
}

async function submit(choice) {
  if (!state.pair || state.busy) return;
  setBusy(true);
  const body = {
    pair_id: state.pair.pair_id,
    choice,
    wrong_left: ticked("left"),
    wrong_right: ticked("right"),
    time_ms: Math.max(0, Math.round(performance.now() - state.shownAt)),
    change: state.revising,
  };
  try {
    const r = await api(readerPath("/answers"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (r.ok) render(r.body.progress);
    else $("task-error").textContent = message(r);
  } catch (e) {
    $("task-error").textContent = `could not reach the server: ${e}`;
  } finally {
    setBusy(false);
  }
}

async function revise() {
  if (!state.last) return;
  const r = await api(readerPath(`/pairs/${encodeURIComponent(state.last)}`));
  if (!r.ok) { $("task-error").textContent = message(r); return; }
  state.revising = true;
  showPair(r.body);
}

async function backToNext() {
  const r = await api(readerPath("/progress"));
  if (r.ok) render(r.body);
}

document.addEventListener("keydown", (event) => {
  if ($("task").hidden || event.target.tagName === "INPUT" && event.target.type !== "checkbox") return;
  const choice = KEYS[event.key];
  if (choice) {
    event.preventDefault();
    submit(choice);
  }
});
document.querySelectorAll(".choices button").forEach((b) => b.addEventListener("click", () => submit(b.dataset.choice)));
$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const reader = $("reader").value.trim();
  const token = $("token").value.trim();
  if (reader && token) login(reader, token);
});
$("switch").addEventListener("click", () => {
  forget();
  $("who").textContent = "";
  $("progress").textContent = "";
  $("switch").hidden = true;
  show("login");
});
$("revise").addEventListener("click", revise);
$("revise-done").addEventListener("click", revise);
$("skip-revise").addEventListener("click", backToNext);

// a reader's link: /#reader=<id>&token=<token> (a fragment never reaches a server or its logs);
// taken out of the address bar at once, so it is not left on screen or in the history
function fromLink() {
  const link = new URLSearchParams(location.hash.slice(1));
  if (!(link.get("reader") && link.get("token"))) return null;
  history.replaceState(null, "", location.pathname + location.search);
  return { reader: link.get("reader"), token: link.get("token") };
}

window.addEventListener("hashchange", () => {  // a link pasted into the open page
  const link = fromLink();
  if (link) login(link.reader, link.token);
});
const initial = fromLink() || { reader: localStorage.getItem("reader"), token: localStorage.getItem("token") };
if (initial.reader && initial.token) login(initial.reader, initial.token);
else {
  if (initial.reader) $("reader").value = initial.reader;
  show("login");
}
