/* sdaudit explore: the maps' arithmetic, without the page (loaded before app.js, which uses it).
 *
 * float16 decoding, colour maps, the seven measures of sdaudit.analyses.similarity_map computed in
 * float32 on token-major features, and the colour scale of each measure. Exposed as window.sdauditMaps.
 */
"use strict";
window.sdauditMaps = (function () {
  const MEASURE_NAMES = {
    cosine: "cosine similarity", centered_cosine: "centred cosine", dot: "dot product",
    l1: "L1 distance", l2: "L2 distance", linf: "L∞ distance", relative_l2_norm: "relative L2 norm",
  };


  // ----- float16 decoding: one lookup table --------------------------------------------------------
  const F16 = (() => {
    const t = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
      let v;
      if (e === 0) v = f * 5.960464477539063e-8;
      else if (e === 31) v = f ? NaN : Infinity;
      else v = (1 + f / 1024) * Math.pow(2, e - 15);
      t[h] = s * v;
    }
    return t;
  })();

  // ----- colour maps ------------------------------------------------------------------------------
  function lut(stops) {
    const out = new Uint8ClampedArray(256 * 3);
    const rgb = stops.map((s) => [s[0], parseInt(s[1].slice(1, 3), 16), parseInt(s[1].slice(3, 5), 16), parseInt(s[1].slice(5, 7), 16)]);
    for (let i = 0; i < 256; i++) {
      const x = i / 255;
      let k = 0;
      while (k < rgb.length - 2 && x > rgb[k + 1][0]) k++;
      const a = rgb[k], b = rgb[k + 1], u = (x - a[0]) / (b[0] - a[0] || 1);
      for (let c = 0; c < 3; c++) out[i * 3 + c] = Math.round(a[c + 1] + (b[c + 1] - a[c + 1]) * Math.min(1, Math.max(0, u)));
    }
    return out;
  }
  const CMAPS = {
    diverging: lut([[0, "#2166ac"], [0.17, "#67a9cf"], [0.33, "#d1e5f0"], [0.5, "#f7f7f7"], [0.67, "#fddbc7"], [0.83, "#ef8a62"], [1, "#b2182b"]]),
    viridis: lut([[0, "#440154"], [0.13, "#482878"], [0.25, "#3e4989"], [0.38, "#31688e"], [0.5, "#26828e"], [0.63, "#1f9e89"], [0.75, "#35b779"], [0.88, "#6ece58"], [1, "#fde725"]]),
    magma: lut([[0, "#000004"], [0.13, "#1c1044"], [0.25, "#4f127b"], [0.38, "#812581"], [0.5, "#b5367a"], [0.63, "#e55964"], [0.75, "#fb8761"], [0.88, "#fec287"], [1, "#fcfdbf"]]),
  };


  let centerCache = { key: null, value: null };

  // ----- maps ----------------------------------------------------------------------------------------
  /** Similarity of token (row, col) of feats[refIdx] to every token of every feats[k], as float32
   *  (N, h*w) arrays: the same numbers as sdaudit.analyses.similarity_map on the stacked images. */
  function computeMaps(feats, refIdx, row, col, measure) {
    const f0 = feats[refIdx], C = f0.C, p0 = row * f0.w + col;
    const t = new Float32Array(C);
    for (let c = 0; c < C; c++) t[c] = f0.data[p0 * C + c];
    let center = null, cnorms = null, mt = 0;
    if (measure === "centered_cosine") {
      ({ mean: center, norms: cnorms } = centering(feats));
      for (let c = 0; c < C; c++) t[c] = t[c] - center[c];
      for (let c = 0; c < C; c++) mt += center[c] * t[c];
    }
    let tn2 = 0;
    for (let c = 0; c < C; c++) tn2 += t[c] * t[c];
    const tn = Math.fround(Math.sqrt(tn2));
    if (measure === "relative_l2_norm" && tn === 0) throw new Error("relative_l2_norm: the reference token has zero norm");
    const out = [];
    for (const f of feats) {
      const P = f.P, x = f.data, m = new Float32Array(P);
      if (measure === "cosine" || measure === "dot") {
        const nx = f.norms;
        for (let p = 0; p < P; p++) {
          let d = 0;
          const o = p * C;
          for (let c = 0; c < C; c++) d += x[o + c] * t[c];
          if (measure === "dot") m[p] = d;
          else { const den = Math.fround(nx[p] * tn); m[p] = den > 0 ? Math.fround(d) / den : 0; }
        }
      } else if (measure === "centered_cosine") {
        // (x - m).t' = x.t' - m.t', and |x - m| is precomputed once per selection
        const nx = cnorms[out.length];
        for (let p = 0; p < P; p++) {
          let d = 0;
          const o = p * C;
          for (let c = 0; c < C; c++) d += x[o + c] * t[c];
          const den = Math.fround(nx[p] * tn);
          m[p] = den > 0 ? Math.fround(d - mt) / den : 0;
        }
      } else if (measure === "relative_l2_norm") {
        for (let p = 0; p < P; p++) m[p] = f.norms[p] / tn;
      } else if (measure === "l1" || measure === "l2" || measure === "linf") {
        for (let p = 0; p < P; p++) {
          const o = p * C;
          let acc = 0;
          if (measure === "l1") { for (let c = 0; c < C; c++) acc += Math.abs(x[o + c] - t[c]); }
          else if (measure === "l2") { for (let c = 0; c < C; c++) { const v = x[o + c] - t[c]; acc += v * v; } acc = Math.sqrt(acc); }
          else { for (let c = 0; c < C; c++) { const v = Math.abs(x[o + c] - t[c]); if (v > acc) acc = v; } }
          m[p] = acc;
        }
      } else {
        throw new Error(`unknown measure ${measure}`);
      }
      out.push(m);
    }
    return out;
  }

  /** The mean token m over every token of the given images (float64 sum, float32 result; the default
   *  centre of similarity_map's centered_cosine) and each token's |x - m|, once per selection. */
  function centering(feats) {
    const key = feats.map((f) => `${f.store}|${f.layer}|${f.image}`).join(";");
    if (centerCache.key === key) return centerCache.value;
    const C = feats[0].C, sum = new Float64Array(C);
    let n = 0;
    for (const f of feats) {
      for (let p = 0; p < f.P; p++) { const o = p * C; for (let c = 0; c < C; c++) sum[c] += f.data[o + c]; }
      n += f.P;
    }
    const mean = new Float32Array(C);
    for (let c = 0; c < C; c++) mean[c] = sum[c] / n;
    const norms = feats.map((f) => {
      const out = new Float32Array(f.P);
      for (let p = 0; p < f.P; p++) {
        let n2 = 0;
        const o = p * C;
        for (let c = 0; c < C; c++) { const v = Math.fround(f.data[o + c] - mean[c]); n2 += v * v; }
        out[p] = Math.sqrt(n2);
      }
      return out;
    });
    centerCache = { key, value: { mean, norms } };
    return centerCache.value;
  }

  /** How values map to colours: returns {cmap, toUnit(v, k), lo, hi, title, note}. */
  function scaleFor(measure, maps) {
    let maxV = 0;
    for (const m of maps) for (let p = 0; p < m.length; p++) { const v = m[p]; if (Number.isFinite(v) && v > maxV) maxV = v; }
    const name = MEASURE_NAMES[measure] || measure;
    if (measure === "cosine" || measure === "centered_cosine" || measure === "dot") {
      let lo = Infinity, hi = -Infinity;
      for (const m of maps) for (let p = 0; p < m.length; p++) { const v = m[p]; if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } }
      if (!(hi > lo)) { lo = measure === "dot" ? -1 : -1; hi = 1; }
      const span = hi - lo;
      return { cmap: "viridis", toUnit: (v) => (v - lo) / span, lo: fmt(lo), hi: fmt(hi), title: name, note: "range of the shown maps (shared by all images)" };
    }
    if (measure === "relative_l2_norm") {
      let a = 0;
      for (const m of maps) for (let p = 0; p < m.length; p++) { const v = m[p]; if (v > 0 && Number.isFinite(v)) a = Math.max(a, Math.abs(Math.log2(v))); }
      a = Math.max(a, 0.05);
      return { cmap: "diverging", toUnit: (v) => (v > 0 ? Math.log2(v) / a : -1) / 2 + 0.5, lo: fmt(Math.pow(2, -a)), hi: fmt(Math.pow(2, a)), title: "|x| / |ref|", note: "log scale, 1 = same norm as the marked token" };
    }
    const d = maxV || 1;
    return { cmap: "viridis", toUnit: (v) => 1 - v / d, lo: fmt(d), hi: "0", title: name, note: "bright = close to the marked token" };
  }

  function fmt(v) {
    if (!Number.isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e4 || a < 1e-3)) return v.toExponential(2);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(3);
  }

  return { MEASURE_NAMES, F16, CMAPS, computeMaps, scaleFor, fmt };
})();
