// clipzoo web page: text search, search by an uploaded image, classification, "more like this".
// Plain JS, no build step. URLs are relative so the page works behind a path prefix.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: null, info: null, thumbUrls: [] };

// ---------------------------------------------------------------- token
(function initToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem("clipzoo-token", fromUrl);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.toString());
  }
  state.token = sessionStorage.getItem("clipzoo-token");
})();

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
  const response = await fetch(path, { method: options.method || (body ? "POST" : "GET"), headers, body });
  if (response.status === 401) {
    $("token-form").hidden = false;
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

// ---------------------------------------------------------------- info
async function loadInfo() {
  try {
    const info = await api("info");
    state.info = info;
    $("info").textContent = `${info.items.toLocaleString()} items · ${info.model} · ` +
      (info.vocabulary_size ? `${info.vocabulary_size} labels` : "no server vocabulary");
    const select = $("partition");
    select.length = 1;
    for (const p of info.partitions) select.add(new Option(p, p));
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
}

async function setThumb(img, path) {
  if (!state.token) { img.src = path; return; }
  try {  // an <img> cannot send a header: fetch the thumbnail with the token, show it as a blob
    const r = await fetch(path, { headers: authHeaders() });
    if (!r.ok) return;
    const u = URL.createObjectURL(await r.blob());
    state.thumbUrls.push(u);
    img.src = u;
  } catch (_) { /* a missing thumbnail leaves the grey box */ }
}

async function setVideo(video, hit) {
  // a video row: the poster frame is its thumbnail; the file plays from the row's start (#t=START)
  const start = `#t=${hit.timestamp || 0}`;
  setPoster(video, hit.thumb);
  if (!state.token) { video.src = hit.video + start; return; }
  try {  // a <video> cannot send a header either: fetch the file with the token
    const r = await fetch(hit.video, { headers: authHeaders() });
    if (!r.ok) return;
    const u = URL.createObjectURL(await r.blob());
    state.thumbUrls.push(u);
    video.src = u + start;
  } catch (_) { /* a missing file leaves the poster */ }
}

async function setPoster(video, path) {
  const img = { set src(u) { video.poster = u; } };
  await setThumb(img, path);
}

function formatTime(seconds) {
  const s = Math.floor(seconds || 0);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function renderResults(data, label) {
  clearThumbs();
  const grid = $("results");
  grid.replaceChildren();
  $("status").textContent = `${data.hits.length} result${data.hits.length === 1 ? "" : "s"} for ${label} ` +
    `(${data.took_ms} ms)`;
  for (const hit of data.hits) {
    const isVideo = Boolean(hit.video);
    const card = document.createElement(isVideo ? "div" : "button");  // a <video>'s controls cannot sit in a button
    if (!isVideo) card.type = "button";
    card.className = isVideo ? "result video" : "result";
    card.dataset.id = hit.id;
    card.title = isVideo ? `Plays from ${formatTime(hit.timestamp)}` : "Search by this image";
    const img = document.createElement(isVideo ? "video" : "img");
    if (isVideo) {
      img.controls = true;
      img.preload = "none";
      img.muted = true;
      img.dataset.start = String(hit.timestamp || 0);
      setVideo(img, hit);
    } else {
      img.alt = hit.caption || hit.relpath || `item ${hit.id}`;
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
    caption.textContent = hit.caption || "";
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = [hit.partition, hit.relpath, isVideo ? `▶ ${formatTime(hit.timestamp)}` : ""]
      .filter(Boolean).join(" · ");
    meta.append(score, caption, where);
    card.append(img, meta);
    if (!isVideo) card.addEventListener("click", () => search({ id: hit.id }, `item ${hit.id} (${hit.relpath || ""})`));
    grid.append(card);
  }
}

function commonParams() {
  const params = { k: parseInt($("k").value, 10) || 24 };
  if ($("partition").value) params.partition = $("partition").value;
  return params;
}

async function search(query, label) {
  $("status").textContent = "searching…";
  try {
    const data = await api("search", { body: { ...query, ...commonParams() } });
    renderResults(data, label);
    showError(null);
  } catch (err) {
    $("status").textContent = "";
    showError(err);
  }
}

// ---------------------------------------------------------------- upload: classify + search by image
function labelsFromInput() {
  return $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
}

async function classify(file) {
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
  const data = await api("classify", { body: form });
  for (const { label, probability, rank, tie } of data.labels) {
    const li = document.createElement("li");
    li.className = tie ? "class tied" : "class";
    if (rank) li.value = rank; // labels that tie share their number (1, 1, 3): no arbitrary winner
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
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
    list.append(li);
  }
}

async function searchByImage(file) {
  const form = new FormData();
  form.append("image", file, file.name || "upload");
  const params = commonParams();
  for (const [key, value] of Object.entries(params)) form.append(key, String(value));
  $("status").textContent = "searching…";
  const data = await api("search", { body: form });
  renderResults(data, `the image ${file.name || ""}`.trim());
}

async function handleFile(file) {
  if (!file) return;
  const preview = $("preview");
  if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
  preview.dataset.url = URL.createObjectURL(file);
  preview.src = preview.dataset.url;
  $("upload").hidden = false;
  try {
    await Promise.all([classify(file), searchByImage(file)]);
    showError(null);
  } catch (err) {
    $("status").textContent = "";
    showError(err);
  }
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
  state.token = $("token").value.trim() || null;
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

loadInfo();
