/* sdaudit explore: the page's state as URL query parameters, both ways (loaded before app.js).
 *
 * store (index, omitted for 0), layer, measure, view (similarity | norm), images (comma-separated
 * indices), token (image,row,col of a pinned token). A link with only ?layer=<name> is valid: the
 * rest takes its defaults. Exposed as window.sdauditLink.
 */
"use strict";
window.sdauditLink = (function () {
  const VIEWS = ["similarity", "norm"];
  const ints = (text) => (text || "").split(",").filter((t) => t.trim() !== "").map(Number);

  /** The query string for the state S (store, layer, measure, view, selected, pinned, ref). */
  function toQuery(S) {
    const q = new URLSearchParams();
    if (S.store) q.set("store", String(S.store));
    if (S.layer) q.set("layer", S.layer);
    q.set("measure", S.measure);
    q.set("view", S.view);
    q.set("images", S.selected.join(","));
    if (S.pinned && S.ref) q.set("token", `${S.ref.image},${S.ref.row},${S.ref.col}`);
    return q.toString();
  }

  /** The state fields a query string sets ({values}), checked against /api/info; invalid ones are
   *  left out and named in {bad}. Images and the token are checked against the store later. */
  function fromQuery(search, info) {
    const q = new URLSearchParams(search), values = {}, bad = [];
    const store = q.has("store") ? Number(q.get("store")) : 0;
    if (Number.isInteger(store) && store >= 0 && store < info.stores.length) values.store = store;
    else bad.push(`store ${q.get("store")}`);
    const st = info.stores[values.store || 0];
    if (q.has("layer")) {
      if (st.layers.some((l) => l.name === q.get("layer"))) values.layer = q.get("layer");
      else bad.push(`layer ${q.get("layer")}`);
    }
    if (q.has("measure")) {
      if (info.measures.includes(q.get("measure"))) values.measure = q.get("measure");
      else bad.push(`measure ${q.get("measure")}`);
    }
    if (q.has("view")) {
      if (VIEWS.includes(q.get("view"))) values.view = q.get("view");
      else bad.push(`view ${q.get("view")}`);
    }
    if (q.has("images")) values.selected = ints(q.get("images")).filter((i) => Number.isInteger(i) && i >= 0);
    const tok = ints(q.get("token"));
    if (tok.length === 3 && tok.every((v) => Number.isInteger(v) && v >= 0)) {
      values.ref = { image: tok[0], row: tok[1], col: tok[2] };
      values.pinned = true;
    } else if (q.has("token")) bad.push(`token ${q.get("token")}`);
    return { values, bad };
  }

  return { toQuery, fromQuery };
})();
