// The page: upload a photo or a video to POST /search and draw the answer with the shared renderer (gallery.js).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const state = { file: null, url: null, busy: false };

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  async function reason(resp) {
    try {
      const body = await resp.json();
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
      return JSON.stringify(body);
    } catch (e) {
      return `${resp.status} ${resp.statusText}`;
    }
  }

  function form() {
    const data = new FormData();
    data.append("image", state.file, state.file.name);
    return data;
  }

  const itemImage = (r, size) => `/items/${enc(r.product_id)}/image?path=${enc(r.path)}` + (size ? `&size=${size}` : "");

  async function search() {
    if (!state.file || state.busy) return;
    state.busy = true;
    showError("");
    $("dups").replaceChildren();
    const params = new URLSearchParams({ top_k: $("topk").value || "5", frame_images: "true" });
    const cat = $("category").value;
    if (cat === "__off__") params.set("category_filter", "false");
    else if (cat) params.set("category", cat);
    $("status").textContent = `searching ${state.file.name}…`;
    const t0 = performance.now();
    try {
      const resp = await fetch(`/search?${params}`, { method: "POST", body: form() });
      if (!resp.ok) {
        $("results").replaceChildren();
        showError(`${state.file.name}: ${await reason(resp)} (HTTP ${resp.status})`);
        $("status").textContent = "";
        return;
      }
      const report = await resp.json();
      const isImage = !("frames_used" in report) && !("frame_count" in report);  // a video's answer says which frames
      Gallery.renderSearch($("results"), report, {
        image: (key) => (key === "query" ? (isImage ? state.url : null) : (report.frame_images || {})[key] || null),
        size: (key) => (report.frame_sizes || {})[key] || null,
        thumb: (r) => itemImage(r, 160),
        link: (r) => itemImage(r, null),
        category: cat === "__off__" ? "off" : cat || null,
      });
      $("status").textContent = `${report.objects.length} object(s) in ${((performance.now() - t0) / 1000).toFixed(2)} s`;
      $("dedup").disabled = !isImage;
    } catch (e) {
      showError(`${state.file.name}: the service did not answer (${e})`);
      $("status").textContent = "";
    } finally {
      state.busy = false;
    }
  }

  async function duplicates() {
    if (!state.file) return;
    showError("");
    $("status").textContent = `looking for copies of ${state.file.name}…`;
    try {
      const resp = await fetch("/dedup/check", { method: "POST", body: form() });
      if (!resp.ok) {
        showError(`duplicates of ${state.file.name}: ${await reason(resp)} (HTTP ${resp.status})`);
        $("status").textContent = "";
        return;
      }
      const check = await resp.json();
      const urls = Object.fromEntries(check.copies.map((c) => [c.path, c.image_url]));
      Gallery.renderCheck($("dups"), check, { thumb: (p) => urls[p] + "?size=160", link: (p) => urls[p] });
      $("status").textContent = `${check.copies.length} copy(ies) found`;
      $("dups").scrollIntoView({ behavior: "smooth" });
    } catch (e) {
      showError(`duplicates: the service did not answer (${e})`);
    }
  }

  function pick(file) {
    if (!file) return;
    if (state.url) URL.revokeObjectURL(state.url);
    state.file = file;
    state.url = URL.createObjectURL(file);
    const video = file.type.startsWith("video/");
    $("video").hidden = !video;
    if (video) $("video").src = state.url; else $("video").removeAttribute("src");
    search();
  }

  async function health() {
    try {
      const resp = await fetch("/health");
      const h = await resp.json();
      const bad = [h.triton.ready ? null : `Triton: ${h.triton.detail || "not ready"}`,
        h.store.ready ? null : `store: ${h.store.detail || "not ready"}`].filter(Boolean);
      $("health").textContent = bad.length ? `not ready — ${bad.join("; ")}` : `ready · ${h.store.points} catalog points`;
      $("health").classList.toggle("bad", bad.length > 0);
    } catch (e) {
      $("health").textContent = "the service does not answer";
      $("health").classList.add("bad");
    }
    try {
      const resp = await fetch("/categories");
      if (!resp.ok) return;
      const { categories } = await resp.json();
      for (const [name, n] of Object.entries(categories)) {
        $("category").append(Gallery.el("option", { value: name, text: `only ${name} (${n} products)` }));
      }
    } catch (e) { /* the filter keeps its two fixed choices */ }
  }

  $("file").addEventListener("change", (e) => pick(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files[0]); });
  $("category").addEventListener("change", search);
  $("topk").addEventListener("change", search);
  $("dedup").addEventListener("click", duplicates);
  health();
})();
