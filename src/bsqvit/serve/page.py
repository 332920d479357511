"""The demo's single HTML page: a form (upload or pick a shipped sample, optional centre crop), then
side by side the original, the ``.bsq`` reconstruction, JPEG and WebP at the same file size, a table
of bytes / bpp / PSNR / MS-SSIM with download links, the token grid's bit-planes and one generated
sample per class. Plain HTML + a little JavaScript calling the JSON API of :mod:`bsqvit.serve.app`;
every text from the server is inserted as text, never as HTML."""

from __future__ import annotations

import html
import json
from string import Template

__all__ = ["render"]

_PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bsqvit serve</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: .85em; text-align: center; }
.pics img { max-width: 360px; image-rendering: pixelated; border: 1px solid #ccc; }
.planes img { width: 72px; image-rendering: pixelated; border: 1px solid #ccc; }
.gen img { width: 96px; image-rendering: pixelated; }
table { border-collapse: collapse; } td, th { padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: right; }
#error { color: #b00; font-weight: bold; } #status { color: #555; } .over { color: #b60; }
</style></head><body>
<h1>BSQ-ViT: tokenizer and <code>.bsq</code> codec</h1>
<form id="form">
  <label>Upload an image <input type="file" id="file" name="image" accept="image/*"></label>
  &nbsp;or pick a sample <select id="sample" name="sample"><option value="">—</option>$options</select>
  &nbsp;centre crop <select id="crop" name="crop">$crops</select>
  <button type="submit" id="go">Compress</button>
  <div><small>Limits: $limit_text. On a CPU a 128×128 crop takes seconds, a whole 768×512 photo 10–20 s.</small></div>
</form>
<p id="error" role="alert"></p><p id="status"></p>
<section id="result" hidden>
  <h2 id="title"></h2>
  <div class="row pics" id="pics"></div>
  <h3>Numbers</h3>
  <table><thead><tr><th>file</th><th>bytes</th><th>bpp</th><th>PSNR (dB)</th><th>MS-SSIM</th><th>setting</th><th>download</th></tr></thead>
  <tbody id="numbers"></tbody></table>
  <h3>Token bit-planes <small id="grid"></small></h3>
  <p><small>Bit k of every token as an image (white = 1); plane 0 is the most significant bit.</small></p>
  <div class="row planes" id="planes"></div>
</section>
<h2>Generated, one sample per class</h2><div class="row gen" id="gen"><p id="gen-status">sampling…</p></div>
<script>
const MAX_UPLOAD = $max_upload;
const NAMES = {bsq: ".bsq (BSQ-ViT + prior)", jpeg: "JPEG, same size", webp: "WebP, same size"};
const el = (tag, attrs = {}, text) => { const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; return e; };
const fmt = (v, d) => (v === null || v === undefined) ? "n/a" : (v === Infinity ? "inf" : Number(v).toFixed(d));
function figure(src, caption) { const f = el("figure"); f.append(el("img", {src, alt: caption}), el("figcaption", {}, caption)); return f; }
function show(r) {
  document.getElementById("title").textContent = r.name + " — " + r.width + "×" + r.height;
  const pics = document.getElementById("pics"); pics.replaceChildren();
  pics.append(figure(r.images.original, "original"));
  for (const k of ["reconstruction", "jpeg", "webp"]) if (r.images[k]) {
    const n = r.numbers[k === "reconstruction" ? "bsq" : k];
    pics.append(figure(r.images[k], (k === "reconstruction" ? ".bsq" : k.toUpperCase()) + ": " + n.bytes + " B, " + fmt(n.psnr, 2) + " dB"));
  }
  const body = document.getElementById("numbers"); body.replaceChildren();
  for (const [k, n] of Object.entries(r.numbers)) {
    const tr = el("tr", {id: "row-" + k});
    tr.append(el("th", {}, NAMES[k] || k), el("td", {id: k + "-bytes"}, String(n.bytes)), el("td", {id: k + "-bpp"}, fmt(n.bpp, 4)),
      el("td", {id: k + "-psnr"}, fmt(n.psnr, 2)), el("td", {id: k + "-msssim"}, n.ms_ssim === null ? "n/a (< 161 px)" : fmt(n.ms_ssim, 4)));
    const s = k === "bsq" ? n.coder + " coder, " + fmt(n.bits_per_token, 2) + " bits/token" : "quality " + n.quality;
    const td = el("td", {id: k + "-setting", class: n.fits === false ? "over" : ""}, n.fits === false ? s + " (smallest possible, above the .bsq size)" : s);
    const dl = el("td"); const fname = Object.keys(r.files).find(f => f.startsWith(k === "bsq" ? "image." : k + "."));
    if (fname) dl.append(el("a", {href: r.files[fname], download: fname, id: k + "-download"}, fname));
    if (k === "bsq") { dl.append(" "); dl.append(el("a", {href: r.files["reconstruction.png"], download: "reconstruction.png", id: "recon-download"}, "reconstruction.png")); }
    tr.append(td, dl); body.append(tr);
  }
  document.getElementById("grid").textContent = "(" + r.grid.join("×") + " tokens, " + r.planes.length + " bits each)";
  const planes = document.getElementById("planes"); planes.replaceChildren();
  r.planes.forEach((p, k) => planes.append(figure(p, "bit " + k)));
  document.getElementById("result").hidden = false;
}
document.getElementById("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("error"), status = document.getElementById("status");
  err.textContent = ""; const file = document.getElementById("file").files[0];
  if (file && file.size > MAX_UPLOAD) { err.textContent = file.name + ": upload too large (" + (file.size / 1e6).toFixed(1) + " MB, the limit is " + (MAX_UPLOAD / 1e6).toFixed(1) + " MB)"; return; }
  const data = new FormData(); if (file) data.append("image", file); else data.append("sample", document.getElementById("sample").value);
  data.append("crop", document.getElementById("crop").value);
  status.textContent = "compressing…"; document.getElementById("go").disabled = true;
  try {
    const resp = await fetch("/api/analyze", {method: "POST", body: data});
    const body = await resp.json().catch(() => ({error: "HTTP " + resp.status}));
    if (!resp.ok) { err.textContent = body.error || ("HTTP " + resp.status); status.textContent = ""; return; }
    show(body); status.textContent = "done";
  } catch (e) { err.textContent = "request failed: " + e; status.textContent = ""; }
  finally { document.getElementById("go").disabled = false; }
});
fetch("/api/samples").then(r => r.json()).then(b => {
  const gen = document.getElementById("gen"); gen.replaceChildren();
  if (!b.samples || !b.samples.length) gen.append(el("p", {}, b.error || "no generator for this tokenizer"));
  for (const s of b.samples || []) gen.append(figure(s.image, s.name));
}).catch(e => { document.getElementById("gen-status").textContent = "samples failed: " + e; });
</script></body></html>
""")


def render(samples: list[str], crops, max_upload: int, max_pixels: int | None) -> str:
    """The page, with the shipped samples to pick from and the limits stated."""
    options = "".join(f'<option value="{html.escape(s)}">{html.escape(s)}</option>' for s in samples)
    crop_opts = "".join(f'<option value="{c}">{f"{c}×{c}" if c else "whole image"}</option>' for c in crops)
    pixels = "no pixel limit" if max_pixels is None else f"at most {max_pixels / 1e6:g} MP"
    limit = f"uploads up to {max_upload / 1e6:g} MB, {pixels}; PNG, JPEG, WebP, BMP, GIF, TIFF, PPM"
    return _PAGE.substitute(options=options, crops=crop_opts, max_upload=json.dumps(max_upload),
                            limit_text=html.escape(limit))
