// clipzoo web page: text search, search by an uploaded image, classification, "more like this".
// Plain JS, no build step. URLs are relative so the page works behind a path prefix.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: null, info: null, thumbUrls: [], thumbGen: 0, search: 0, searchAbort: null, classify: 0 };

// ---------------------------------------------------------------- text from the index, shown as it is
// Bidi controls, zero-width and other invisible characters in names and captions are shown as \uXXXX markers, so
// a name cannot pose as another ("invoice\u202Egpj.exe" drawn as "invoiceexe.jpg"). Captions and labels keep the
// joiners (U+200C, U+200D) and bidi marks (U+200E, U+200F, U+061C) that Persian, Indic scripts and emoji need.
const HIDDEN_IN_TEXT = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb\u{e0000}-\u{e007f}]/gu;
const HIDDEN_IN_NAME = /[\u0000-\u001f\u007f-\u009f\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\u{e0000}-\u{e007f}]/gu;

function codePoint(c) {
  const n = c.codePointAt(0);
  return n > 0xffff ? `\\u{${n.toString(16).toUpperCase()}}` : `\\u${n.toString(16).toUpperCase().padStart(4, "0")}`;
}
const shownText = (text) => String(text ?? "").replace(HIDDEN_IN_TEXT, codePoint);
const shownName = (name) => String(name ?? "").replace(HIDDEN_IN_NAME, codePoint);

// ---------------------------------------------------------------- token
// A token is visible ASCII (letters, digits, punctuation), as the server requires at start: a browser cannot send
// another character in a header (fetch throws before sending anything), so the page refuses it in one line.
const TOKEN = /^[\x21-\x7e]+$/;

function tokenProblem(token, where) {
  const bad = [...token].find((c) => !TOKEN.test(c));
  if (bad === undefined) return null;
  return `${where} holds ${codePoint(bad)}: a token is visible ASCII only (letters, digits, punctuation, no ` +
    "spaces); enter it again";
}

function askForToken(message) {
  $("token-form").hidden = false;
  if (message) showError(new Error(message));
}

function initToken() {
  // ?token= or #token= (a fragment never reaches the server or its log): taken once, then out of the address bar;
  // one that cannot be sent is refused (the problem is returned), and the tab's stored token, if any, stays
  const url = new URL(window.location.href);
  const hash = new URLSearchParams(url.hash.slice(1));
  const fromUrl = url.searchParams.get("token") ?? hash.get("token");
  let problem = null;
  if (fromUrl !== null) {
    url.searchParams.delete("token");
    if (hash.has("token")) { hash.delete("token"); url.hash = hash.toString(); }
    history.replaceState(null, "", url.toString());
    problem = tokenProblem(fromUrl, "the token in the link");
    if (!problem) sessionStorage.setItem("clipzoo-token", fromUrl);
  }
  const stored = sessionStorage.getItem("clipzoo-token");
  if (stored && tokenProblem(stored, "")) sessionStorage.removeItem("clipzoo-token");
  else state.token = stored;
  return problem;
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

// ---------------------------------------------------------------- requests
async function api(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  let body = options.body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const response = await fetch(path, { method: options.method || (body ? "POST" : "GET"), headers, body,
                                       signal: options.signal });
  if (response.status === 401) {
    askForToken();
    throw new Error("this server needs a token: enter it at the top right");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(data.detail || `${response.status} ${response.statusText}`);
  }
  return data;
}

function showError(err) {
  const box = $("error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = err.message || String(err);
  box.hidden = false;
}

// One search at a time: a new one aborts the one before, and only the newest may draw the results (a slow answer
// to an earlier search never replaces a later one's).
function startSearch() {
  if (state.searchAbort) state.searchAbort.abort();
  state.searchAbort = new AbortController();
  $("status").textContent = "searching…";
  const seq = ++state.search;
  return { signal: state.searchAbort.signal, current: () => seq === state.search };
}

// ---------------------------------------------------------------- info
async function loadInfo() {
  try {
    const info = await api("info");
    state.info = info;
    $("info").textContent = `${info.items.toLocaleString()} items · ${info.model} · ` +
      (info.vocabulary_size ? `${info.vocabulary_size} labels` : "no server vocabulary");
    const select = $("partition");
    select.length = 1;
    for (const p of info.partitions) select.add(new Option(shownName(p), p));
    select.hidden = info.partitions.length < 2;
    if (!info.vocabulary_size) $("labels").placeholder = "labels to classify over, comma-separated";
    showError(null);
  } catch (err) {
    $("info").textContent = "";
    showError(err);
  }
}

// ---------------------------------------------------------------- results
function clearThumbs() {
  for (const u of state.thumbUrls) URL.revokeObjectURL(u);
  state.thumbUrls = [];
  state.thumbGen += 1;
}

async function blobUrl(path) {
  // an <img> or <video> cannot send a header: the file is fetched with the token and shown as a blob
  const gen = state.thumbGen;
  const r = await fetch(path, { headers: authHeaders() });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${r.statusText}`);
  const u = URL.createObjectURL(await r.blob());
  if (gen !== state.thumbGen) { URL.revokeObjectURL(u); return null; }  // the results it was for are gone
  state.thumbUrls.push(u);
  return u;
}

async function setThumb(img, path) {
  if (!state.token) { img.src = path; return; }
  try {
    const u = await blobUrl(path);
    if (u) img.src = u;
  } catch (_) { /* a missing thumbnail leaves the grey box */ }
}

function setVideo(video, hit) {
  // a video row: the poster frame is its thumbnail; the file plays from the row's start (#t=START)
  const start = `#t=${hit.timestamp || 0}`;
  setPoster(video, hit.thumb);
  if (!state.token) { video.controls = true; video.src = hit.video + start; return null; }
  // with a token the file is fetched (with the header) only when asked to play, not with every result
  const button = document.createElement("button");
  button.type = "button";
  button.className = "play";
  button.textContent = "▶ Play";
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "loading…";
    try {
      const u = await blobUrl(hit.video);
      if (!u) return;
      video.src = u + start;
      video.controls = true;
      button.remove();
      await video.play();
    } catch (err) {
      button.textContent = "▶ Play";
      button.disabled = false;
      if (err.name !== "AbortError") showError(err);
    }
  });
  return button;
}

async function setPoster(video, path) {
  const img = { set src(u) { video.poster = u; } };
  await setThumb(img, path);
}

function formatTime(seconds) {
  const s = Math.floor(seconds || 0);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function resultCard(hit) {
  const isVideo = Boolean(hit.video);
  const card = document.createElement(isVideo ? "div" : "button");  // a <video>'s controls cannot sit in a button
  if (!isVideo) card.type = "button";
  card.className = isVideo ? "result video" : "result";
  card.dataset.id = hit.id;
  card.title = isVideo ? `Plays from ${formatTime(hit.timestamp)}` : "Search by this image";
  const img = document.createElement(isVideo ? "video" : "img");
  let play = null;
  if (isVideo) {
    img.preload = "none";
    img.muted = true;
    img.dataset.start = String(hit.timestamp || 0);
    play = setVideo(img, hit);
  } else {
    img.alt = shownText(hit.caption) || shownName(hit.relpath) || `item ${hit.id}`;
    img.loading = "lazy";
    setThumb(img, hit.thumb);
  }
  const meta = document.createElement("span");
  meta.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  const caption = document.createElement("span");
  caption.className = "caption";
  caption.textContent = shownText(hit.caption);
  caption.title = caption.textContent;  // the card shows a few lines; the whole caption on hover
  const where = document.createElement("span");
  where.className = "where";
  where.textContent = [shownName(hit.partition), shownName(hit.relpath), isVideo ? `▶ ${formatTime(hit.timestamp)}` : ""]
    .filter(Boolean).join(" · ");
  where.title = where.textContent;
  meta.append(score, caption, where);
  card.append(img, ...(play ? [play] : []), meta);
  if (!isVideo) {
    card.addEventListener("click", () => search({ id: hit.id }, `item ${hit.id} (${shownName(hit.relpath)})`));
  }
  return card;
}

function renderResults(data, label) {
  clearThumbs();
  $("status").textContent = `${data.hits.length} result${data.hits.length === 1 ? "" : "s"} for ${label} ` +
    `(${data.took_ms} ms)`;
  $("results").replaceChildren(...data.hits.map(resultCard));
}

function commonParams() {
  const params = { k: parseInt($("k").value, 10) || 24 };
  if ($("partition").value) params.partition = $("partition").value;
  return params;
}

async function runSearch(body, label) {
  const run = startSearch();
  try {
    const data = await api("search", { body, signal: run.signal });
    if (!run.current()) return;
    renderResults(data, label);
    showError(null);
  } catch (err) {
    if (!run.current()) return;  // aborted by a newer search, or answered after it: that one speaks
    $("status").textContent = "";
    showError(err);
  }
}

function search(query, label) {
  return runSearch({ ...query, ...commonParams() }, label);
}

// ---------------------------------------------------------------- upload: classify + search by image
function labelsFromInput() {
  return $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
}

function classRow({ label, probability, rank, tie }) {
  const li = document.createElement("li");
  li.className = tie ? "class tied" : "class";
  if (rank) li.value = rank; // labels that tie share their number (1, 1, 3): no arbitrary winner
  const name = document.createElement("span");
  name.className = "label";
  name.textContent = shownText(label);
  const pct = document.createElement("span");
  pct.className = "prob muted";
  pct.textContent = ` ${(probability * 100).toFixed(1)}%`;
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.style.width = `${Math.max(2, probability * 120)}px`;
  li.append(name, pct, bar);
  if (tie) {
    const badge = document.createElement("span");
    badge.className = "tie";
    badge.textContent = "tie";
    badge.title = "the same probability as another label: the model cannot tell them apart";
    li.append(badge);
  }
  return li;
}

async function classify(file) {
  const seq = ++state.classify;  // only the newest upload's classification is shown
  const list = $("classes");
  list.replaceChildren();
  const labels = labelsFromInput();
  if (!labels.length && state.info && !state.info.vocabulary_size) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "enter labels above to classify (the server has no vocabulary)";
    list.append(li);
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name || "upload");
  if (labels.length) form.append("labels", JSON.stringify(labels));
  form.append("k", "5");
  try {
    const data = await api("classify", { body: form });
    if (seq === state.classify) list.replaceChildren(...data.labels.map(classRow));
  } catch (err) {
    if (seq === state.classify) showError(err);
  }
}

function searchByImage(file) {
  const form = new FormData();
  form.append("image", file, file.name || "upload");
  for (const [key, value] of Object.entries(commonParams())) form.append(key, String(value));
  return runSearch(form, `the image ${shownName(file.name)}`.trim());
}

async function handleFile(file) {
  if (!file) return;
  const preview = $("preview");
  if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
  preview.dataset.url = URL.createObjectURL(file);
  preview.src = preview.dataset.url;
  $("upload").hidden = false;
  await Promise.all([classify(file), searchByImage(file)]);
}

// ---------------------------------------------------------------- wiring
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("query").value.trim();
  if (text) search({ text }, `“${text}”`);
});
$("partition").addEventListener("change", () => $("search-form").requestSubmit());
$("file").addEventListener("change", (event) => handleFile(event.target.files[0]));
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  const problem = token ? tokenProblem(token, "the token") : null;
  if (problem) { askForToken(problem); return; }  // the form stays: the token was never stored or sent
  state.token = token || null;
  if (state.token) sessionStorage.setItem("clipzoo-token", state.token);
  else sessionStorage.removeItem("clipzoo-token");
  $("token-form").hidden = true;
  loadInfo();
});
const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (e) => handleFile(e.dataTransfer.files[0]));
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) handleFile(item.getAsFile());
});

const linkProblem = initToken();  // a token that cannot be sent is never used: the page asks for it again
loadInfo().then(() => { if (linkProblem) askForToken(linkProblem); });
