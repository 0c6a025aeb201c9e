/* sdaudit explore: the page. Plain JS, no build step, no network access beyond this server.
 *
 * Features arrive once per (store, layer, image) as raw float16 bytes, token-major (h*w, C), and are
 * decoded into Float32Arrays with their token norms. Similarity maps are computed in the page (maps.js),
 * in float32 like sdaudit.analyses.similarity_map, for every selected image at each hover.
 * window.sdaudit exposes the state and the last computed maps (for tests and for the curious).
 */
"use strict";
(function () {
  const MUTATE = { "X-Requested-By": "sdaudit" };
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const MAX_SELECTED = 12;  // also the page size: the first page is shown at start
  const CACHE_BYTES = 512 * 1024 * 1024;
  const { MEASURE_NAMES, F16, CMAPS, computeMaps, scaleFor, fmt } = window.sdauditMaps;
  const link = window.sdauditLink;

  // ----- state -------------------------------------------------------------------------------------
  const S = {
    info: null, store: 0, images: [], selected: [], layer: null, measure: "cosine", view: "similarity",
    ref: null, pinned: false, opacity: 0.8, showDetections: true, labels: null, detections: {},
    feats: [], grid: [0, 0], presets: {}, hoverToken: null, loadSeq: 0, labelMode: false, preset: null,
  };
  const cache = new Map(); // key -> {promise, bytes}
  let cacheBytes = 0;
  const pub = {
    state: S, lastMaps: null, lastRedrawMs: null, lastEventToDrawMs: null, redrawTimes: [], eventTimes: [],
    pending: 0, errors: [],
    get idle() { return pub.pending === 0; },
  };
  window.sdaudit = pub;

  // ----- state in the URL (link.js): a reload restores the page, a link reproduces it ---------------
  let lastQuery = null;
  function syncURL() {
    if (!S.info) return;
    const q = link.toQuery(S);
    if (q === lastQuery) return;  // hovering must not flood the history API
    lastQuery = q;
    history.replaceState(null, "", `${location.pathname}?${q}`);
  }

  /** Apply the URL's parameters to S (before the first load); returns complaints about invalid ones. */
  function readURL() {
    const { values, bad } = link.fromQuery(location.search, S.info);
    Object.assign(S, values);
    return bad;
  }

  // ----- server access -----------------------------------------------------------------------------
  async function api(path, opts) {
    pub.pending++;
    try {
      const r = await fetch(path, opts);
      if (!r.ok) {
        let detail = r.statusText;
        try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
        const err = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
        err.status = r.status;
        throw err;
      }
      return r;
    } finally {
      pub.pending--;
    }
  }
  const getJSON = async (path) => (await api(path)).json();
  const sendJSON = async (method, path, body) => (await api(path, {
    method, headers: { ...MUTATE, "Content-Type": "application/json" }, body: JSON.stringify(body),
  })).json();

  function featKey(s, layer, i) { return `${s}|${layer}|${i}`; }

  function loadFeat(s, layer, i) {
    const key = featKey(s, layer, i);
    let hit = cache.get(key);
    if (hit) { cache.delete(key); cache.set(key, hit); return hit.promise; }
    const promise = (async () => {
      const r = await api(`/api/stores/${s}/features?layer=${enc(layer)}&image=${i}`);
      const [C, h, w] = r.headers.get("X-Shape").split(",").map(Number);
      const buf = await r.arrayBuffer();
      const P = h * w;
      let data;
      if (r.headers.get("X-Dtype") === "float16") {
        const u16 = new Uint16Array(buf);
        data = new Float32Array(u16.length);
        for (let k = 0; k < u16.length; k++) data[k] = F16[u16[k]];
      } else {
        data = new Float32Array(buf);
      }
      const norms = new Float32Array(P);
      let finite = true;
      for (let p = 0; p < P; p++) {
        let s2 = 0;
        const o = p * C;
        for (let c = 0; c < C; c++) { const v = data[o + c]; s2 += v * v; }
        norms[p] = Math.sqrt(s2);
        if (!Number.isFinite(norms[p])) finite = false;
      }
      const rec = { store: s, layer, image: i, C, h, w, P, data, norms, finite };
      const entry = cache.get(key);
      if (entry) { entry.bytes = data.byteLength + norms.byteLength; cacheBytes += entry.bytes; }
      evict();
      return rec;
    })();
    hit = { promise, bytes: 0 };
    cache.set(key, hit);
    promise.catch(() => cache.delete(key));
    return promise;
  }

  function evict() {
    for (const [key, entry] of cache) {
      if (cacheBytes <= CACHE_BYTES || cache.size <= MAX_SELECTED) break;
      cache.delete(key);
      cacheBytes -= entry.bytes;
    }
  }


  // ----- drawing -------------------------------------------------------------------------------------
  function paint(canvas, values, toUnit, cmapName, k) {
    const lutc = CMAPS[cmapName];
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(canvas.width, canvas.height);
    const px = img.data;
    for (let p = 0; p < values.length; p++) {
      const v = values[p];
      if (!Number.isFinite(v)) { px[p * 4 + 3] = 0; continue; }
      let u = toUnit(v, k);
      u = u < 0 ? 0 : u > 1 ? 1 : u;
      const i = Math.round(u * 255) * 3;
      px[p * 4] = lutc[i]; px[p * 4 + 1] = lutc[i + 1]; px[p * 4 + 2] = lutc[i + 2]; px[p * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function drawLegend(scale) {
    const c = $("legend-bar"), ctx = c.getContext("2d"), lutc = CMAPS[scale.cmap];
    for (let x = 0; x < c.width; x++) {
      const i = Math.round((x / (c.width - 1)) * 255) * 3;
      ctx.fillStyle = `rgb(${lutc[i]},${lutc[i + 1]},${lutc[i + 2]})`;
      ctx.fillRect(x, 0, 1, c.height);
    }
    $("legend-title").textContent = scale.title;
    $("legend-min").textContent = scale.lo;
    $("legend-max").textContent = scale.hi;
    $("legend-note").textContent = scale.note || "";
  }

  const SVGNS = "http://www.w3.org/2000/svg";
  function rect(svg, x, y, w, h, cls) {
    const r = document.createElementNS(SVGNS, "rect");
    r.setAttribute("x", x); r.setAttribute("y", y); r.setAttribute("width", w); r.setAttribute("height", h);
    r.setAttribute("class", cls);
    svg.appendChild(r);
  }

  function drawMarks() {
    const [h, w] = S.grid;
    document.querySelectorAll(".panel").forEach((panel, k) => {
      const svg = panel.querySelector("svg");
      svg.replaceChildren();
      const image = S.selected[k];
      panel.classList.toggle("ref", !!S.ref && S.view === "similarity" && S.ref.image === image);
      if (S.view === "similarity" && S.ref) {
        if (S.ref.image === image) {
          rect(svg, S.ref.col, S.ref.row, 1, 1, "m-ref-back");
          rect(svg, S.ref.col, S.ref.row, 1, 1, "m-ref");
        } else {
          rect(svg, S.ref.col, S.ref.row, 1, 1, "m-same");
        }
      }
      if (S.view === "norm") {
        if (S.showDetections) {
          for (const d of S.detections[`${S.layer}|${image}`] || []) rect(svg, d.x, d.y, d.patch[1], d.patch[0], "m-det");
        }
        const L = S.labels;
        if (L && L.grid && L.rows.length) {
          const sy = h / L.grid[0], sx = w / L.grid[1];
          for (const [img, x, y] of L.rows) {
            if (img !== image) continue;
            const y0 = Math.floor(y * sy), x0 = Math.floor(x * sx);
            const hh = Math.max(1, Math.floor(2 * sy)), ww = Math.max(1, Math.floor(2 * sx));
            rect(svg, x0, y0, Math.min(ww, w - x0), Math.min(hh, h - y0), "m-lab");
          }
        }
      }
    });
  }

  /** Recompute and draw every map for the current reference (or the norm maps). */
  function redraw(ev) {
    const t0 = performance.now();
    const feats = S.feats;
    if (!feats.length) { pub.lastMaps = null; return; }
    const canvases = document.querySelectorAll(".panel canvas");
    let maps, scale;
    if (S.view === "norm") {
      maps = feats.map((f) => f.norms);
      const maxes = maps.map((m) => { let a = 0; for (let p = 0; p < m.length; p++) if (m[p] > a) a = m[p]; return a || 1; });
      scale = { cmap: "magma", toUnit: (v, k) => v / maxes[k], lo: "0", hi: "image max", title: "token L2 norm", note: "each image scaled by its own maximum (as in the paper)" };
      document.querySelectorAll(".panel .val").forEach((el, k) => { el.textContent = `max ${fmt(maxes[k])}`; });
      pub.lastMaps = { view: "norm", store: S.store, layer: S.layer, images: S.selected.slice(), shape: S.grid.slice(), values: maps };
    } else {
      if (!S.ref) {
        canvases.forEach((c) => c.getContext("2d").clearRect(0, 0, c.width, c.height));
        document.querySelectorAll(".panel .val").forEach((el) => { el.textContent = ""; });
        drawMarks();
        const s0 = scaleFor(S.measure, []);
        drawLegend(s0);
        syncURL();
        return;
      }
      const refIdx = S.selected.indexOf(S.ref.image);
      try {
        if (refIdx < 0) throw new Error("the marked token's image is not selected");
        if (S.ref.row >= S.grid[0] || S.ref.col >= S.grid[1]) {
          S.ref = null; S.pinned = false;
          throw new Error(`the token is outside this layer's ${S.grid[0]}×${S.grid[1]} grid`);
        }
        maps = computeMaps(feats, refIdx, S.ref.row, S.ref.col, S.measure);
      } catch (e) {
        message(e.message, true);
        return;
      }
      scale = scaleFor(S.measure, maps);
      document.querySelectorAll(".panel .val").forEach((el) => { el.textContent = ""; });
      pub.lastMaps = { view: "similarity", store: S.store, layer: S.layer, measure: S.measure, images: S.selected.slice(),
        ref: { image: S.ref.image, row: S.ref.row, col: S.ref.col }, shape: S.grid.slice(), values: maps };
    }
    maps.forEach((m, k) => paint(canvases[k], m, scale.toUnit, scale.cmap, k));
    drawLegend(scale);
    drawMarks();
    const t1 = performance.now();
    pub.lastRedrawMs = t1 - t0;
    pub.redrawTimes.push(t1 - t0);
    if (pub.redrawTimes.length > 1000) pub.redrawTimes.shift();
    if (ev && ev.timeStamp) {
      pub.lastEventToDrawMs = t1 - ev.timeStamp;
      pub.eventTimes.push(t1 - ev.timeStamp);
      if (pub.eventTimes.length > 1000) pub.eventTimes.shift();
    }
    syncURL();
    $("status-time").textContent = `redraw ${pub.lastRedrawMs.toFixed(1)} ms (${feats.length} image${feats.length > 1 ? "s" : ""}, ${S.grid[0]}×${S.grid[1]})`;
  }

  // ----- panels --------------------------------------------------------------------------------------
  /** The number of columns that gives the largest panels with every panel on screen; sets the CSS variables. */
  function layoutPanels() {
    const n = Math.max(1, S.selected.length);
    const content = $("content");
    const avail = content.clientWidth - 32;
    const top = $("panels").getBoundingClientRect().top - content.getBoundingClientRect().top;
    let best = { size: -1, cols: 1 };
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const byWidth = Math.floor((avail - (cols - 1) * 12) / cols) - 14;
      const byHeight = Math.floor((content.clientHeight - top - rows * 40) / rows);
      const size = Math.min(byWidth, byHeight, 460);
      if (size > best.size) best = { size, cols };
    }
    document.documentElement.style.setProperty("--panel-size", `${Math.max(160, best.size)}px`);
    document.documentElement.style.setProperty("--panel-cols", String(best.cols));
  }

  function buildPanels() {
    const box = $("panels");
    box.replaceChildren();
    const [h, w] = S.grid;
    S.selected.forEach((image, k) => {
      const fig = document.createElement("figure");
      fig.className = "panel";
      fig.dataset.image = image;
      const stage = document.createElement("div");
      stage.className = "stage";
      stage.style.aspectRatio = `${w} / ${h}`;
      const img = document.createElement("img");
      img.src = `/api/stores/${S.store}/images/${image}/input.png`;
      img.alt = `image ${image}`;
      img.draggable = false;
      const canvas = document.createElement("canvas");
      canvas.width = w; canvas.height = h;
      canvas.style.opacity = S.opacity;
      const svg = document.createElementNS(SVGNS, "svg");
      svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
      svg.setAttribute("preserveAspectRatio", "none");
      stage.append(img, canvas, svg);
      const cap = document.createElement("figcaption");
      const entry = S.images[image] || { name: "" };
      cap.innerHTML = "";
      const nm = document.createElement("span");
      nm.className = "name"; nm.textContent = `#${image} ${entry.name}`; nm.title = entry.source || "";
      const val = document.createElement("span");
      val.className = "val";
      cap.append(nm, val);
      fig.append(stage, cap);
      box.appendChild(fig);
      stage.addEventListener("mousemove", (ev) => onMove(ev, k, stage));
      stage.addEventListener("click", (ev) => onClick(ev, k, stage));
      stage.addEventListener("mouseleave", () => { $("status-token").textContent = ""; });
    });
    layoutPanels();
  }

  function tokenAt(ev, stage) {
    const r = stage.getBoundingClientRect();
    const [h, w] = S.grid;
    const col = Math.min(w - 1, Math.max(0, Math.floor(((ev.clientX - r.left) / r.width) * w)));
    const row = Math.min(h - 1, Math.max(0, Math.floor(((ev.clientY - r.top) / r.height) * h)));
    return { row, col };
  }

  function onMove(ev, k, stage) {
    if (!S.feats.length) return;
    const { row, col } = tokenAt(ev, stage);
    const image = S.selected[k];
    const key = `${image}|${row}|${col}`;
    if (S.view === "similarity" && !S.pinned && key !== S.hoverToken) {
      S.hoverToken = key;
      S.ref = { image, row, col };
      redraw(ev);
    }
    S.hoverToken = key;
    showValue(k, row, col);
  }

  function showValue(k, row, col) {
    const image = S.selected[k];
    let text = `image #${image} · row ${row}, col ${col}`;
    const f = S.feats[k];
    if (f) text += ` · norm ${fmt(f.norms[row * f.w + col])}`;
    const lm = pub.lastMaps;
    if (lm && lm.view === "similarity" && lm.values[k] && S.view === "similarity") text += ` · ${S.measure} ${fmt(lm.values[k][row * S.grid[1] + col])}`;
    if (S.pinned) text += " · pinned";
    $("status-token").textContent = text;
  }

  async function onClick(ev, k, stage) {
    if (!S.feats.length) return;
    const { row, col } = tokenAt(ev, stage);
    const image = S.selected[k];
    if (S.view === "similarity") {
      const same = S.ref && S.ref.image === image && S.ref.row === row && S.ref.col === col;
      if (S.pinned && same) {
        S.pinned = false;
        message("unpinned: hover to explore");
      } else {
        S.pinned = true;
        S.ref = { image, row, col };
        message(`pinned token (row ${row}, col ${col}) of image #${image}; click it again or press Esc to unpin`);
      }
      redraw(ev);
      showValue(k, row, col);
    } else if (!S.labelMode) {
      message("label mode is off: turn on “Label mode” (or press L) to label patches by clicking");
    } else {
      try {
        const res = await sendJSON("POST", `/api/stores/${S.store}/labels/toggle`, { layer: S.layer, image, x: col, y: row });
        S.labels = res;
        updateLabelInfo();
        drawMarks();
        message(`label ${res.action}: [image ${res.row[0]}, x ${res.row[1]}, y ${res.row[2]}] saved to ${res.path}`);
      } catch (e) {
        message(e.message, true);
      }
    }
  }

  // ----- loading ---------------------------------------------------------------------------------
  async function refresh() {
    pub.pending++;
    try { await refreshNow(); } finally { pub.pending--; }
  }

  async function refreshNow() {
    const seq = ++S.loadSeq;
    const s = S.store, layer = S.layer, sel = S.selected.slice();
    const L = currentStore().layers.find((l) => l.name === layer);
    S.grid = [L.rows, L.cols];
    if (!sel.length) {
      S.feats = [];
      buildPanels();
      message("select images on the left");
      redraw();
      return;
    }
    try {
      const feats = await Promise.all(sel.map((i) => loadFeat(s, layer, i)));
      if (seq !== S.loadSeq) return;
      S.feats = feats;
      if (feats.some((f) => !f.finite)) message("this layer holds non-finite values (NaN/Inf) in some image: those tokens stay blank", true);
      if (S.ref && !sel.includes(S.ref.image)) { S.ref = null; S.pinned = false; }
      buildPanels();
      loadChannels(s, layer, sel, seq);
      if (S.view === "norm") await loadDetections();
      if (seq !== S.loadSeq) return;
      redraw();
      updateThumbSel();
    } catch (e) {
      if (seq === S.loadSeq) message(e.message, true);
    }
  }

  async function loadDetections() {
    if (!S.showDetections) return;
    const need = S.selected.filter((i) => !(`${S.layer}|${i}` in S.detections));
    if (!need.length) return;
    const layer = S.layer;
    try {
      const res = await getJSON(`/api/stores/${S.store}/anomalies?layer=${enc(layer)}&images=${need.join(",")}`);
      for (const [i, list] of Object.entries(res.detections)) S.detections[`${layer}|${i}`] = list;
    } catch (e) {
      message(`detector: ${e.message}`, true);
    }
    const total = S.selected.reduce((a, i) => a + (S.detections[`${S.layer}|${i}`] || []).length, 0);
    $("chk-detections").parentElement.title = `${total} finding(s) in the shown images`;
  }

  /** The layer's massive channels over the shown images, as one line next to the layer picker. */
  async function loadChannels(s, layer, sel, seq) {
    const el = $("layer-channels");
    try {
      const res = await getJSON(`/api/stores/${s}/channels?layer=${enc(layer)}&images=${sel.join(",")}`);
      if (seq !== S.loadSeq) return;
      el.textContent = res.massive_channels
        ? `massive channels: ${res.massive_channels} (${res.massive_channel_ids.join(", ")})${res.massive_ratio_max == null ? "" : `, up to ${fmt(res.massive_ratio_max)}x the median`}`
        : "no massive channels";
    } catch (e) {
      if (seq === S.loadSeq) el.textContent = "";
    }
  }

  function currentStore() { return S.info.stores[S.store]; }

  /** Forget what described the previous state: the message and the highlighted example. */
  function clearTransient() {
    message("");
    S.preset = null;
    document.querySelectorAll(".presets button").forEach((b) => b.classList.remove("active"));
  }

  function setLabelMode(on) {
    S.labelMode = !!on && S.view === "norm";
    const b = $("btn-label-mode");
    b.classList.toggle("on", S.labelMode);
    b.setAttribute("aria-pressed", String(S.labelMode));
    b.textContent = S.labelMode ? "Label mode: on" : "Label mode: off";
    document.body.classList.toggle("labelling", S.labelMode);
    message(S.labelMode ? "label mode: a click adds or removes a labelled patch (saved to disk)" : "");
  }

  // ----- pages of images: MAX_SELECTED at a time ---------------------------------------------------
  const pageCount = () => Math.max(1, Math.ceil(S.images.length / MAX_SELECTED));
  const currentPage = () => (S.selected.length ? Math.floor(Math.min(...S.selected) / MAX_SELECTED) : 0);

  function showPage(p) {
    const first = Math.min(Math.max(0, p), pageCount() - 1) * MAX_SELECTED;
    const last = Math.min(S.images.length, first + MAX_SELECTED);
    const list = [];
    for (let i = first; i < last; i++) list.push(i);
    return setSelection(list);
  }

  function updatePager() {
    const n = S.images.length, p = currentPage();
    const first = Math.min(...S.selected), last = Math.max(...S.selected);
    $("page-info").textContent = S.selected.length ? `#${first}–#${last} of ${n}` : `none of ${n}`;
    $("page-info").title = `${S.selected.length} of ${n} images shown`;
    $("btn-page-prev").disabled = p <= 0;
    $("btn-page-next").disabled = p >= pageCount() - 1;
  }

  function message(text, isErr) {
    const m = $("message");
    m.textContent = text || "";
    m.title = text || "";  // the full text when two lines do not hold it
    m.classList.toggle("err", !!isErr);
    if (isErr) pub.errors.push(text);
  }

  // ----- controls ----------------------------------------------------------------------------------
  function fillLayerSelect() {
    const sel = $("sel-layer");
    sel.replaceChildren();
    let group = null, block = null;
    for (const l of currentStore().layers) {
      if (l.block !== block) {
        block = l.block;
        group = document.createElement("optgroup");
        group.label = block;
        sel.appendChild(group);
      }
      const o = document.createElement("option");
      o.value = l.name;
      o.textContent = `${l.name} · ${l.rows}×${l.cols} · ${l.channels} ch`;
      o.title = l.name;
      group.appendChild(o);
    }
    sel.value = S.layer;
  }

  function fillStorePickers() {
    const stores = S.info.stores;
    const uniq = (key) => [...new Set(stores.map((st) => String(st[key])))];
    const fill = (id, values, current) => {
      const el = $(id);
      el.replaceChildren(...values.map((v) => { const o = document.createElement("option"); o.value = v; o.textContent = v; return o; }));
      el.value = String(current);
      el.disabled = values.length < 2;
    };
    const st = currentStore();
    fill("sel-model", uniq("model"), st.model);
    fill("sel-timestep", uniq("timestep"), st.timestep);
    fill("sel-protocol", uniq("protocol"), st.protocol);
    const ss = $("sel-store");
    ss.replaceChildren(...stores.map((x) => { const o = document.createElement("option"); o.value = x.index; o.textContent = `${x.index}: ${x.name}`; o.title = x.path; return o; }));
    ss.value = String(S.store);
    $("lbl-store").hidden = stores.length < 2;
    $("store-summary").textContent = `${st.name} · ${st.model} · t=${st.timestep} · ${st.protocol} · ${st.size}px · ${st.num_images} images`;
    $("store-summary").title = st.path;
  }

  function pickStore(changed) {
    const want = { model: $("sel-model").value, timestep: $("sel-timestep").value, protocol: $("sel-protocol").value };
    const stores = S.info.stores;
    let best = null, bestScore = -1;
    for (const st of stores) {
      if (String(st[changed]) !== want[changed]) continue;
      const score = ["model", "timestep", "protocol"].filter((k) => String(st[k]) === want[k]).length * 10 + (st.index === S.store ? 1 : 0);
      if (score > bestScore) { best = st; bestScore = score; }
    }
    if (best) switchStore(best.index);
  }

  async function switchStore(index) {
    const old = S.info.stores[S.store];
    S.store = index;
    const st = currentStore();
    const names = st.layers.map((l) => l.name);
    if (!names.includes(S.layer)) {
      const oldL = old && old.layers.find((l) => l.name === S.layer);
      S.layer = st.reference_layer || names[0];
      if (oldL && S.ref) { const L = st.layers.find((l) => l.name === S.layer); S.ref.row = Math.floor(S.ref.row * L.rows / oldL.rows); S.ref.col = Math.floor(S.ref.col * L.cols / oldL.cols); }
    }
    await loadImages();
    S.selected = [...new Set(S.selected.filter((i) => i < S.images.length))].slice(0, MAX_SELECTED);
    if (!S.selected.length) S.selected = S.images.slice(0, MAX_SELECTED).map((e) => e.index);
    S.detections = {};
    S.labels = await getJSON(`/api/stores/${S.store}/labels`);
    fillStorePickers();
    fillLayerSelect();
    updateLabelInfo();
    updateUploadUI();
    await refresh();
  }

  async function loadImages() {
    const res = await getJSON(`/api/stores/${S.store}/images`);
    S.images = res.images;
    currentStore().num_images = res.num_images;
    const ul = $("thumbs");
    ul.replaceChildren();
    for (const e of S.images) {
      const li = document.createElement("li");
      li.dataset.image = e.index;
      li.title = `#${e.index} ${e.source} (${e.width}×${e.height} ${e.mode})`;
      const img = document.createElement("img");
      img.loading = "lazy";
      img.src = `/api/stores/${S.store}/images/${e.index}/input.png?size=96`;
      img.alt = e.name;
      img.draggable = false;
      const cap = document.createElement("div");
      cap.className = "cap";
      cap.textContent = `#${e.index} ${e.name}`;
      const badge = document.createElement("span");
      badge.className = "badge";
      li.append(img, cap, badge);
      li.addEventListener("click", () => toggleImage(e.index));
      ul.appendChild(li);
    }
    $("img-count").textContent = `(${S.images.length})`;
  }

  function updateThumbSel() {
    document.querySelectorAll("#thumbs li").forEach((li) => {
      const i = Number(li.dataset.image), k = S.selected.indexOf(i);
      li.classList.toggle("sel", k >= 0);
      li.querySelector(".badge").textContent = k >= 0 ? String(k + 1) : "";
    });
    updatePager();
  }

  function setSelection(list) {
    const n = S.images.length;
    const out = [];
    for (const i of list) if (i >= 0 && i < n && !out.includes(i)) out.push(i);
    out.sort((a, b) => a - b);
    S.selected = out.slice(0, MAX_SELECTED);
    clearTransient();
    updateThumbSel();
    return refresh();
  }

  function toggleImage(i) {
    const k = S.selected.indexOf(i);
    if (k >= 0) return setSelection(S.selected.filter((x) => x !== i));
    if (S.selected.length >= MAX_SELECTED) { message(`at most ${MAX_SELECTED} images at once`, true); return; }
    return setSelection([...S.selected, i]);
  }

  function shiftSelection(d) {
    const n = S.images.length;
    if (!n || !S.selected.length) return;
    const moved = S.selected.map((i) => ((i + d) % n + n) % n);
    if (S.ref) S.ref = { ...S.ref, image: ((S.ref.image + d) % n + n) % n };
    setSelection(moved);
  }

  function setLayer(name) {
    const st = currentStore();
    const L = st.layers.find((l) => l.name === name);
    if (!L) return;
    if (S.ref) {
      const [h, w] = S.grid;
      S.ref = { image: S.ref.image, row: Math.min(L.rows - 1, Math.floor(S.ref.row * L.rows / h)), col: Math.min(L.cols - 1, Math.floor(S.ref.col * L.cols / w)) };
    }
    S.layer = name;
    $("sel-layer").value = name;
    clearTransient();
    updateLabelInfo();
    return refresh();
  }

  function setView(view, draw = true) {
    S.view = view;
    if (draw) clearTransient();
    if (view !== "norm" && S.labelMode) setLabelMode(false);
    document.querySelectorAll("#view-seg button").forEach((b) => b.classList.toggle("on", b.dataset.view === view));
    $("labelbar").hidden = view !== "norm";
    $("sel-measure").disabled = view === "norm";
    updateLabelInfo();
    if (!draw) return;
    if (view === "norm") return loadDetections().then(() => redraw());
    redraw();
  }

  function updateLabelInfo() {
    const L = S.labels;
    if (!L) return;
    const n = L.rows.length;
    let text = n ? `${n} label${n > 1 ? "s" : ""} on ${L.layer} (${L.grid[0]}×${L.grid[1]})` : "no labels yet: click a high-norm patch to label it";
    if (n && L.layer !== S.layer) text += ` — shown scaled; switch to ${L.layer} to edit`;
    text += L.saved ? ` · file ${L.path}` : ` · will be saved to ${L.path}`;
    $("label-info").textContent = text;
    $("lnk-download").href = `/api/stores/${S.store}/labels.npy`;
  }

  function updateUploadUI() {
    const st = currentStore();
    const dz = $("dropzone");
    dz.hidden = !S.info.model;
    if (!S.info.model) return;
    $("upload-status").textContent = st.can_upload ? `extracted with ${S.info.model} and this store's settings` : st.upload_error;
    $("upload-status").classList.toggle("err", !st.can_upload);
  }

  async function uploadFile(file) {
    if (!file) return;
    const status = $("upload-status");
    if (file.size > S.info.max_upload_bytes) {
      status.textContent = `${file.name}: too large (${(file.size / 1048576).toFixed(1)} MB > ${(S.info.max_upload_bytes / 1048576).toFixed(0)} MB)`;
      status.classList.add("err");
      return;
    }
    status.classList.remove("err");
    status.textContent = `extracting ${file.name}…`;
    try {
      const r = await api(`/api/stores/${S.store}/images?name=${enc(file.name)}`, {
        method: "POST", headers: { ...MUTATE, "Content-Type": "application/octet-stream" }, body: file,
      });
      const res = await r.json();
      S.info.stores[S.store] = res.store;
      status.textContent = res.message;
      S.presets[S.store] = null;
      await loadImages();
      fillStorePickers();
      await setSelection([...S.selected.slice(-(MAX_SELECTED - 1)), res.image.index]);
    } catch (e) {
      status.textContent = e.message;
      status.classList.add("err");
    }
  }

  async function applyPreset(name) {
    try {
      if (!S.presets[S.store]) {
        message("finding examples in this store…");
        S.presets[S.store] = await getJSON(`/api/stores/${S.store}/presets`);
      }
      const p = S.presets[S.store][name];
      if (!p || p.unavailable) { message(`${name} example: ${p ? p.unavailable : "not available"}`, true); return; }
      S.measure = p.measure;
      $("sel-measure").value = p.measure;
      S.layer = p.layer;
      $("sel-layer").value = p.layer;
      S.ref = { image: p.image, row: p.row, col: p.col };
      S.pinned = true;
      if (S.view !== p.view) setView(p.view, false);  // drawn once the layer's features are in
      await setSelection(p.images);
      S.preset = name;
      document.querySelectorAll(".presets button").forEach((b) => b.classList.toggle("active", b.dataset.preset === name));
      message(p.description);
    } catch (e) {
      message(e.message, true);
    }
  }

  async function loadLabelFile(file) {
    if (!file) return;
    const st = currentStore();
    const layer = (S.labels && S.labels.rows.length && S.labels.layer) || st.reference_layer || S.layer;
    try {
      const r = await api(`/api/stores/${S.store}/labels/upload?layer=${enc(layer)}`, {
        method: "POST", headers: { ...MUTATE, "Content-Type": "application/octet-stream" }, body: file,
      });
      S.labels = await r.json();
      updateLabelInfo();
      drawMarks();
      message(`loaded ${S.labels.rows.length} labels from ${file.name} (layer ${S.labels.layer}); saved to ${S.labels.path}`);
    } catch (e) {
      message(`labels not loaded: ${e.message}`, true);
    }
  }

  function wire() {
    $("sel-layer").addEventListener("change", (e) => setLayer(e.target.value));
    const ms = $("sel-measure");
    for (const m of S.info.measures) {
      const o = document.createElement("option");
      o.value = m; o.textContent = MEASURE_NAMES[m] || m;
      ms.appendChild(o);
    }
    ms.value = S.measure;
    ms.addEventListener("change", (e) => { S.measure = e.target.value; clearTransient(); redraw(); });
    document.querySelectorAll("#view-seg button").forEach((b) => b.addEventListener("click", () => setView(b.dataset.view)));
    $("opacity").addEventListener("input", (e) => {
      S.opacity = Number(e.target.value) / 100;
      document.querySelectorAll(".panel canvas").forEach((c) => { c.style.opacity = S.opacity; });
    });
    document.querySelectorAll(".presets button").forEach((b) => b.addEventListener("click", () => applyPreset(b.dataset.preset)));
    $("chk-detections").addEventListener("change", async (e) => { S.showDetections = e.target.checked; await loadDetections(); drawMarks(); });
    $("btn-load-labels").addEventListener("click", () => $("file-labels").click());
    $("file-labels").addEventListener("change", (e) => { loadLabelFile(e.target.files[0]); e.target.value = ""; });
    $("btn-clear-labels").addEventListener("click", async () => {
      if (!S.labels || !S.labels.rows.length) return;
      if (!window.confirm(`Remove all ${S.labels.rows.length} labels (and save the empty set to ${S.labels.path})?`)) return;
      try {
        S.labels = await sendJSON("PUT", `/api/stores/${S.store}/labels`, { layer: S.layer, rows: [] });
        updateLabelInfo();
        drawMarks();
      } catch (e) { message(e.message, true); }
    });
    $("sel-store").addEventListener("change", (e) => { clearTransient(); switchStore(Number(e.target.value)); });
    $("btn-label-mode").addEventListener("click", () => setLabelMode(!S.labelMode));
    $("btn-page-prev").addEventListener("click", () => showPage(currentPage() - 1));
    $("btn-page-next").addEventListener("click", () => showPage(currentPage() + 1));
    $("sel-model").addEventListener("change", () => pickStore("model"));
    $("sel-timestep").addEventListener("change", () => pickStore("timestep"));
    $("sel-protocol").addEventListener("change", () => pickStore("protocol"));
    const dz = $("dropzone");
    $("btn-add").addEventListener("click", () => $("file-add").click());
    $("file-add").addEventListener("change", (e) => { uploadFile(e.target.files[0]); e.target.value = ""; });
    dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("over"); });
    dz.addEventListener("dragleave", () => dz.classList.remove("over"));
    dz.addEventListener("drop", (e) => {
      e.preventDefault();
      e.stopPropagation();
      dz.classList.remove("over");
      uploadFile(e.dataTransfer.files[0]);
    });
    // a file dropped anywhere else must not navigate away from the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => { e.preventDefault(); if (S.info.model && e.dataTransfer.files.length) uploadFile(e.dataTransfer.files[0]); });
    window.addEventListener("keydown", (e) => {
      if (e.target && ["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName)) return;
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const d = e.key === "ArrowRight" ? 1 : -1;
        shiftSelection(e.shiftKey ? d * Math.max(1, S.selected.length) : d);
        e.preventDefault();
      } else if ((e.key === "l" || e.key === "L") && S.view === "norm") {
        setLabelMode(!S.labelMode);
      } else if (e.key === "Escape") {
        S.pinned = false;
        message("unpinned: hover to explore");
      }
    });
    window.addEventListener("resize", layoutPanels);
  }

  async function init() {
    try {
      S.info = await getJSON("/api/info");
      const bad = readURL();
      const st = currentStore();
      if (!S.layer || !st.layers.some((l) => l.name === S.layer)) S.layer = st.reference_layer || st.layers[0].name;
      wire();
      $("sel-measure").value = S.measure;
      setView(S.view, false);
      await switchStore(S.store);
      if (bad.length) message(`ignored in the link: ${bad.join("; ")}`, true);
      else if (S.pinned && S.ref) message(`pinned token (row ${S.ref.row}, col ${S.ref.col}) of image #${S.ref.image}, from the link; click it again or press Esc to unpin`);
      else if (!S.images.length) message("this store has no images yet");
      else if (!S.pinned && !$("message").textContent) message("hover over any image to see the similarity of every token to the token under the cursor");
    } catch (e) {
      message(`cannot start: ${e.message}`, true);
    }
  }

  pub.computeMaps = computeMaps;
  pub.setSelection = (list) => setSelection(list);
  pub.setLayer = (name) => setLayer(name);
  pub.setView = (v) => setView(v);
  pub.showPage = (p) => showPage(p);
  pub.stateQuery = () => link.toQuery(S);
  pub.ready = new Promise((resolve) => {
    document.addEventListener("DOMContentLoaded", () => init().then(resolve));
  });
})();
