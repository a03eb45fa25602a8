// docqa web page: plain browser JavaScript, no build step. Text from the server is only ever set
// with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// The session's XSRF token (the server puts it in the page): every state-changing request sends it.
const XSRF = () => document.querySelector('meta[name="docqa-xsrf"]')?.content || "";

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.method && options.method !== "GET") headers["X-XSRF-Token"] = XSRF();
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function setStatus(node, text, isError = false) {
  node.textContent = text;
  node.classList.toggle("error", isError);
}

// --- index info and documents -------------------------------------------------------------
const getJSON = async (path) => (await api(path)).json();
const fileUrl = (documentId) => `/api/documents/${documentId}/file`;
const VIEWABLE = new Set(["pdf", "image"]); // shown by the browser itself; anything else is downloaded
const FINISHED = new Set(["failed", "cancelled"]);

function showInfo(info) {
  const model = info.model ? info.model.split("/").slice(-2).join("/") : "no model yet";
  const text = `${info.documents} documents, ${info.pages} pages · ${model}`;
  if ($("index-info").textContent !== text) $("index-info").textContent = text; // aria-live: only real changes
  if (info.limits) {
    $("ask-k").max = String(info.limits.max_k);
    $("ask-pages").max = String(info.limits.max_pages);
  }
}

async function refreshInfo() {
  try {
    showInfo(await getJSON("/api/info"));
  } catch (error) {
    $("index-info").textContent = `Cannot reach the index: ${error.message}`;
  }
}

// Links to a document's original file: open it (a PDF at `page`) in a new tab, or download it.
function sourceLinks({ document_id, kind, name, page }) {
  if (document_id == null) return el("div", { class: "links" });
  const links = [];
  if (VIEWABLE.has(kind)) {
    const where = kind === "pdf" && page ? `#page=${page}` : "";
    links.push(el("a", { class: "open", href: fileUrl(document_id) + where, target: "_blank", rel: "noopener",
                         "aria-label": `Open ${name}${where ? ` at page ${page}` : ""} (new tab)`,
                         text: where ? `Open page ${page}` : "Open" }));
  }
  links.push(el("a", { class: "download", href: `${fileUrl(document_id)}?download=true`, download: "",
                       "aria-label": `Download ${name}`, text: VIEWABLE.has(kind) ? "Download" : "Download original" }));
  return el("div", { class: "links" }, links);
}

function pendingState(job) {
  if (job.status === "ingesting" && job.pages_total) return `ingesting ${job.pages_done}/${job.pages_total} pages`;
  if (FINISHED.has(job.status)) return `${job.status}: ${job.error || "no reason given"}`;
  return job.status;
}

async function refreshDocuments() {
  const list = $("documents");
  try {
    const { documents, pending = [] } = await getJSON("/api/documents");
    const waiting = pending.map((job) => el("li", { class: job.status, "data-job-id": job.id, "data-status": job.status }, [
      el("span", { class: "name", text: job.name }),
      el("span", { class: "status", text: pendingState(job) }),
      el("button", { class: "secondary", type: "button", "aria-label": `${FINISHED.has(job.status) ? "Dismiss" : "Cancel"} ${job.name}`,
                     text: FINISHED.has(job.status) ? "Dismiss" : "Cancel", onclick: () => forgetJob(job) }),
    ]));
    const indexed = documents.map((doc) => el("li", { class: "indexed", "data-document-id": doc.id, "data-status": doc.status }, [
      el("span", { class: "name", title: doc.path, text: doc.name }),
      el("span", { class: "pages", text: `${doc.pages} page${doc.pages === 1 ? "" : "s"}` }),
      el("span", { class: "status", text: doc.status }),
      sourceLinks({ document_id: doc.id, kind: doc.kind, name: doc.name }),
      el("button", { class: "danger", type: "button", "aria-label": `Delete ${doc.name}`, text: "Delete",
                     onclick: () => deleteDocument(doc) }),
    ]));
    list.replaceChildren(...waiting, ...indexed);
    setStatus($("docs-status"), documents.length || pending.length ? "" : "No documents yet: add some above.");
  } catch (error) {
    setStatus($("docs-status"), error.message, true);
  }
}

async function deleteDocument(doc) {
  if (!window.confirm(`Remove ${doc.name} from the index?`)) return;
  try {
    await api(`/api/documents/${doc.id}`, { method: "DELETE" });
    setStatus($("docs-status"), `Removed ${doc.name}.`);
  } catch (error) {
    setStatus($("docs-status"), error.message, true);
  }
  refreshDocuments();
  refreshInfo();
}

async function forgetJob(job) {
  try {
    await api(`/api/jobs/${job.id}`, { method: "DELETE" });
  } catch (error) {
    setStatus($("docs-status"), error.message, true);
  }
  refreshDocuments();
}

// New documents without a reload: while the tab is visible, ask every few seconds what the index
// holds ("generation" changes with every committed change; before servers had it, the counts) and
// how the uploads stand; redraw the list when either changed.
const POLL_MS = 3000;
let lastSeen = null;

async function watchIndex() {
  if (document.hidden) return;
  try {
    const [info, { jobs }] = await Promise.all([getJSON("/api/info"), getJSON("/api/jobs")]);
    showInfo(info);
    const seen = JSON.stringify([info.generation ?? [info.documents, info.pages],
                                 jobs.map((job) => [job.id, job.state, job.pages_done])]);
    if (lastSeen !== null && seen !== lastSeen) refreshDocuments();
    lastSeen = seen;
  } catch (error) {
    $("index-info").textContent = `Cannot reach the index: ${error.message}`;
  }
}

// --- page cards (search results and citations) --------------------------------------------
function pageCard({ page_id, document_id, kind, name, page, score, cited, box }, query, { heatmap = false } = {}) {
  const image = el("img", { src: `/api/pages/${page_id}/image?edge=400`, alt: `${name}, page ${page}`, loading: "lazy" });
  const thumb = el("button", { class: "thumb", type: "button", "aria-label": `Open ${name}, page ${page}` }, [image]);
  if (box) thumb.append(boxNode(box));
  thumb.addEventListener("click", () => openViewer({ page_id, document_id, kind, name, page, box }, image.src));
  const meta = el("div", { class: "meta" }, [
    el("div", { text: name }),
    el("div", { class: "score", text: `page ${page}${score == null ? "" : ` · score ${score.toFixed(2)}`}${cited ? " · cited" : ""}` }),
  ]);
  const card = el("li", { class: `card${cited ? " cited" : ""}`, "data-page-id": page_id },
                  [thumb, meta, sourceLinks({ document_id, kind, name, page })]);
  if (heatmap) {
    const toggle = el("button", { class: "secondary heat-toggle", type: "button", "aria-pressed": "false", text: "Show heatmap" });
    toggle.addEventListener("click", () => {
      const on = toggle.getAttribute("aria-pressed") !== "true";
      toggle.setAttribute("aria-pressed", String(on));
      toggle.textContent = on ? "Hide heatmap" : "Show heatmap";
      image.src = on ? `/api/pages/${page_id}/heatmap?q=${encodeURIComponent(query)}`
                     : `/api/pages/${page_id}/image?edge=400`;
    });
    card.append(toggle);
  }
  return card;
}

function boxNode([x0, y0, x1, y1]) {
  const node = el("div", { class: "box", "aria-hidden": "true" });
  Object.assign(node.style, { left: `${x0 * 100}%`, top: `${y0 * 100}%`, width: `${(x1 - x0) * 100}%`, height: `${(y1 - y0) * 100}%` });
  return node;
}

function openViewer({ document_id, kind, name, page, box }, src) {
  $("viewer-title").textContent = `${name}, page ${page}`;
  $("viewer-links").replaceChildren(...sourceLinks({ document_id, kind, name, page }).childNodes);
  $("viewer-image").src = src.replace("edge=400", "edge=1024");
  $("viewer-image").alt = `${name}, page ${page}`;
  const frameBox = $("viewer-box");
  frameBox.hidden = !box;
  if (box) frameBox.style.cssText = boxNode(box).style.cssText;
  $("viewer").showModal();
}

// --- filters (tags and a path glob), shared by search and ask -----------------------------
function filters(form) {
  const where = {};
  for (const part of $(`${form}-tags`).value.split(",")) {
    const item = part.trim();
    if (!item) continue;
    const equals = item.indexOf("=");
    if (equals <= 0) throw new Error(`Tags: expected KEY=VALUE, got "${item}"`);
    where[item.slice(0, equals).trim()] = item.slice(equals + 1).trim();
  }
  return { where, path: $(`${form}-path`).value.trim() };
}

// --- search -------------------------------------------------------------------------------
async function search(event) {
  event.preventDefault();
  const query = $("search-input").value.trim();
  if (!query) return;
  $("results").replaceChildren();
  try {
    const params = new URLSearchParams({ q: query, k: $("search-k").value });
    const { where, path } = filters("search");
    for (const [key, value] of Object.entries(where)) params.append("where", `${key}=${value}`);
    if (path) params.set("path", path);
    setStatus($("search-status"), "Searching…");
    const started = performance.now();
    const { results } = await getJSON(`/api/search?${params}`);
    $("results").replaceChildren(...results.map((hit) => pageCard(hit, query, { heatmap: true })));
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    setStatus($("search-status"), results.length ? `${results.length} pages in ${seconds} s` : "No pages yet: add documents below.");
  } catch (error) {
    setStatus($("search-status"), error.message, true);
  }
}

// --- ask (server-sent events over a POST) -------------------------------------------------
async function ask(event) {
  event.preventDefault();
  const question = $("ask-input").value.trim();
  if (!question) return;
  let request;
  try {
    const { where, path } = filters("ask");
    request = { question, k: Number($("ask-k").value), max_pages: Number($("ask-pages").value) };
    if (Object.keys(where).length) request.where = where;
    if (path) request.path = path;
  } catch (error) {
    setStatus($("ask-status"), error.message, true);
    return;
  }
  const answer = $("answer");
  answer.textContent = "";
  answer.setAttribute("aria-busy", "true");
  $("citations").replaceChildren();
  $("ask-button").disabled = true;
  setStatus($("ask-status"), "Reading the best pages…");
  try {
    const response = await api("/api/ask", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleAskEvent(buffer.slice(0, end), question);
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (error) {
    setStatus($("ask-status"), error.message, true);
  } finally {
    answer.setAttribute("aria-busy", "false");
    $("ask-button").disabled = false;
  }
}

function handleAskEvent(block, question) {
  let name = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) name = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  const payload = data ? JSON.parse(data) : {};
  if (name === "pages") setStatus($("ask-status"), `Answering from ${payload.pages.length} page(s)…`);
  else if (name === "token") $("answer").textContent += payload.text;
  else if (name === "citations") {
    $("citations").replaceChildren(...payload.citations.map((c) => pageCard(c, question)));
    for (const note of payload.notes || []) setStatus($("ask-status"), note);
  } else if (name === "done") setStatus($("ask-status"), `Answered in ${payload.timings.generate_s.toFixed(1)} s`);
  else if (name === "error") setStatus($("ask-status"), payload.error, true);
}

// --- uploads ------------------------------------------------------------------------------
function upload(files) {
  for (const file of files) uploadOne(file);
}

function uploadOne(file) {
  const bar = el("progress", { max: "100", value: "0", "aria-label": `Progress of ${file.name}` });
  const state = el("span", { class: "state", text: "uploading" });
  const row = el("li", {}, [el("span", { class: "name", text: file.name }), state, bar]);
  $("uploads").prepend(row);
  const form = new FormData();
  form.append("file", file);
  const request = new XMLHttpRequest();
  request.open("POST", "/api/uploads");
  request.setRequestHeader("X-XSRF-Token", XSRF());
  request.upload.addEventListener("progress", (e) => { if (e.lengthComputable) bar.value = (50 * e.loaded) / e.total; });
  request.addEventListener("load", () => {
    let body = {};
    try { body = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
    if (request.status !== 202) { state.textContent = body.error || `failed (${request.status})`; row.classList.add("error"); return; }
    follow(body.id, bar, state);
  });
  request.addEventListener("error", () => { state.textContent = "upload failed"; });
  request.send(form);
}

async function follow(jobId, bar, state) {
  state.textContent = "queued";
  for (let attempt = 0; attempt < 7200; attempt++) {
    let job;
    try { job = await (await api(`/api/jobs/${jobId}`)).json(); } catch (error) { state.textContent = error.message; return; }
    const fraction = job.pages_total ? job.pages_done / job.pages_total : 0;
    bar.value = 50 + 50 * (job.state === "done" ? 1 : fraction);
    state.textContent = job.state === "ingesting" && job.pages_total ? `ingesting ${job.pages_done}/${job.pages_total} pages`
      : job.state === "failed" || job.state === "cancelled" ? `${job.state}: ${job.error}` : job.state;
    if (job.state === "done" || job.state === "failed" || job.state === "cancelled") {
      refreshDocuments();
      refreshInfo();
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function setUpDrop() {
  const drop = $("drop");
  $("upload-input").addEventListener("change", (e) => { upload(e.target.files); e.target.value = ""; });
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); upload(e.dataTransfer.files); });
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", search);
  $("ask-form").addEventListener("submit", ask);
  setUpDrop();
  refreshInfo();
  refreshDocuments();
  watchIndex();
  setInterval(watchIndex, POLL_MS);
  document.addEventListener("visibilitychange", watchIndex);
});
