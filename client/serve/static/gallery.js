// The one renderer of search and dedup results, shared by the page (client/serve/static/app.js) and the
// self-contained --html reports (client/gallery.py inlines this file and feeds it the --json dicts).
// Every text from a result goes through textContent, never innerHTML.
(function () {
  "use strict";
  const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990"];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "style") node.style.cssText = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  const colour = (i) => COLOURS[i % COLOURS.length];
  const fmt = (v, d = 3) => (typeof v === "number" ? v.toFixed(d) : String(v));

  // An image with boxes drawn over it (positions in % of its size, set once the image is loaded). Boxes are in
  // pixels of the original picture: ``size`` [w, h] is its size when the shown image was shrunk (reports embed
  // pictures at most QUERY_SIDE wide), else the image's natural size is the original's.
  function boxedImage(src, boxes, alt, size) {
    const wrap = el("div", { class: "g-query" });
    const img = el("img", { src: src, alt: alt || "" });
    wrap.append(img);
    const place = () => {
      const w = (size && size[0]) || img.naturalWidth, h = (size && size[1]) || img.naturalHeight;
      if (!w || !h) return;
      for (const b of boxes) {
        const [x1, y1, x2, y2] = b.box;
        const div = el("div", { class: "g-box" + (b.weak ? " g-weak" : ""),
          style: `left:${100 * x1 / w}%;top:${100 * y1 / h}%;width:${100 * (x2 - x1) / w}%;height:${100 * (y2 - y1) / h}%;border-color:${b.colour}` },
          el("span", { style: `background:${b.colour}`, text: b.label }));
        wrap.append(div);
      }
    };
    if (img.complete && img.naturalWidth) place(); else img.addEventListener("load", place, { once: true });
    return wrap;
  }

  function objectTitle(o, i) {
    let what;
    if (o.whole_image) what = "whole image (no detection)";
    else what = `score ${fmt(o.score, 2)}` + (o.valid === false ? " (below the detector threshold)" : "");
    let t = `object ${i + 1}: ${o.category}` + (o.fine_class ? ` (${o.fine_class})` : "") + `, ${what}`;
    if (Array.isArray(o.frames)) t += `, seen in ${o.frames.length} frame(s): ${o.frames.join(", ")}`;
    if ("searched_in" in o) t += o.searched_in ? `, searched in ${o.searched_in}` : ", searched in the whole catalog";
    return t;
  }

  // The frame that shows a video object best: its "frame" when given, else the first of its frames with an image.
  function bestFrame(o, image) {
    const tries = [];
    if (o.frame !== undefined && o.frame !== null) tries.push(o.frame);
    if (Array.isArray(o.frames)) tries.push(...o.frames);
    for (const f of tries) { const src = image("frame:" + f); if (src) return [f, src]; }
    return [null, null];
  }

  function resultCard(r, i, k, opts) {
    const thumb = opts.thumb ? opts.thumb(r, i, k) : null;
    const link = opts.link ? opts.link(r, i, k) : null;
    const body = [thumb ? el("img", { src: thumb, alt: r.product_id }) : el("div", { class: "g-empty", text: "no image" }),
      el("div", { class: "g-product", text: `${k + 1}. ${r.product_id}` }),
      el("div", { class: "g-score", text: `score ${fmt(r.score)}` + (r.votes !== undefined ? ` · votes ${fmt(r.votes, 2)}` : "")
        + (r.inliers !== undefined && r.inliers !== null ? ` · ${r.inliers} inliers` : "") })];
    return el("figure", { class: "g-card", "data-product-id": r.product_id, title: r.path || "" },
      link ? el("a", { href: link, target: "_blank", rel: "noopener" }, ...body) : el("div", {}, ...body));
  }

  // report: the client.search --json dict (photo, or video: objects with "frames", results with "votes").
  // opts.image(key) -> URL of "query" or "frame:<i>"; opts.thumb(result, object index, rank), opts.link(...) -> URLs;
  // opts.actions(object, index) -> extra nodes under an object's title (the page's buttons).
  function renderSearch(root, report, opts) {
    opts = opts || {};
    const image = opts.image || (() => null);
    const size = opts.size || (() => null);
    const objects = report.objects || [];
    root.replaceChildren();
    const meta = [`${objects.length} object(s)`];
    if (report.frame_count !== undefined) meta.push(`${report.frame_count} frame(s) in the clip`);
    if (report.frames_used !== undefined) meta.push(`frames used: ${Array.isArray(report.frames_used) ? report.frames_used.join(", ") : report.frames_used}`);
    if (opts.category) meta.push(`category filter: ${opts.category}`);
    root.append(el("h1", { class: "g-title", text: report.image || opts.title || "search" }),
      el("p", { class: "g-meta", text: meta.join(" · ") }));
    const query = image("query");
    if (query) {
      const boxes = objects.map((o, i) => o.whole_image ? null :
        { box: o.box, colour: colour(i), weak: o.valid === false, label: `${i + 1} ${o.category}` }).filter(Boolean);
      root.append(boxedImage(query, boxes, "query", size("query")));
    }
    objects.forEach((o, i) => {
      const sec = el("section", { class: "g-object", style: `border-color:${colour(i)}`, "data-category": o.category },
        el("h2", { text: objectTitle(o, i) }));
      if (opts.actions) { const a = opts.actions(o, i); if (a) sec.append(el("div", { class: "g-actions" }, a)); }
      if (!query) {
        const [f, src] = bestFrame(o, image);
        if (src) sec.append(boxedImage(src, o.whole_image ? [] : [{ box: o.box, colour: colour(i), label: `${i + 1} ${o.category} · frame ${f}` }], `frame ${f}`, size("frame:" + f)));
      }
      const results = o.results || [];
      sec.append(results.length ? el("div", { class: "g-grid" }, ...results.map((r, k) => resultCard(r, i, k, opts)))
        : el("p", { class: "g-empty", text: "no catalog items in this category" }));
      root.append(sec);
    });
  }

  // result: the client.dedup --json dict ({"groups": [{"images", "count", "exact"}], ...}); opts.thumb(path), opts.link(path).
  function renderDedup(root, result, opts) {
    opts = opts || {};
    const groups = result.groups || [];
    root.replaceChildren(el("h1", { text: `${groups.length} group(s) of copies among ${result.images} images` }),
      el("p", { class: "g-meta", text: `method ${result.method}, threshold ${result.threshold}; the image kept ` +
        "(largest resolution, then largest file, then oldest) is outlined." }));
    if (!groups.length) root.append(el("p", { class: "g-empty", text: "no duplicates" }));
    groups.forEach((g, n) => {
      root.append(el("section", { class: "g-object", style: `border-color:${colour(n)}` },
        el("h2", { text: `group ${n + 1}: ${g.count} copies (${g.exact ? "exact" : "near-duplicate"})` }),
        el("div", { class: "g-grid" }, ...g.images.map((p, k) => pathCard(p, k === 0 ? "keep" : null, opts)))));
    });
  }

  function pathCard(p, note, opts) {
    const thumb = opts.thumb ? opts.thumb(p) : null;
    const link = opts.link ? opts.link(p) : null;
    const body = [thumb ? el("img", { src: thumb, alt: "" }) : el("div", { class: "g-empty", text: "no image" }),
      note ? el("b", { text: note }) : null, el("div", { text: p })];
    return el("figure", { class: "g-card" + (note === "keep" ? " g-keep" : ""), "data-path": p },
      link ? el("a", { href: link, target: "_blank", rel: "noopener" }, ...body) : el("div", {}, ...body));
  }

  // check: the POST /dedup/check answer ({"image", "copies": [{"path", "score", "product_id"?}], "method", "threshold"}).
  function renderCheck(root, check, opts) {
    opts = opts || {};
    const copies = check.copies || [];
    root.replaceChildren(el("h2", { text: copies.length ? `${copies.length} copy(ies) of ${check.image} in the collection`
      : `no copy of ${check.image} in the collection` }),
      el("p", { class: "g-meta", text: `method ${check.method}, threshold ${check.threshold}` }),
      el("div", { class: "g-grid" }, ...copies.map((c) => pathCard(c.path, `score ${fmt(c.score)}`, opts))));
  }

  window.Gallery = { renderSearch, renderDedup, renderCheck, el, COLOURS };
})();
