// The page of `unetlab serve`: upload an image once (asking for the probabilities), then redraw the mask
// in the browser for every threshold, with the server's rules (p > threshold, 8-connected components of
// fewer than min_component pixels removed, then an image with fewer than min_area pixels emptied).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { card: null, result: null, probs: null, image: null, mask: null, threshold: 0.5 };
window.unetlab = state;  // for the browser test and the curious

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function bytesOf(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

function loadImage(base64) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the decoded image could not be shown"));
    image.src = "data:image/png;base64," + base64;
  });
}

async function showCard() {
  const response = await fetch("/model");
  const card = await response.json();
  state.card = card;
  const point = card.operating_point;
  const score = card.evaluation ? Object.entries(card.evaluation.metrics || {}).slice(0, 3)
    .map(([k, v]) => `${k} ${Number(v).toFixed(3)}`).join(", ") : "not evaluated";
  $("card").textContent = `${card.run} (${card.model}, ${card.task}: ${card.classes.join(", ")}; `
    + `${card.input_channels} input channel${card.input_channels === 1 ? "" : "s"}) — `
    + (card.task === "binary" ? `operating point: threshold ${point.threshold}, min area ${point.min_area}, `
      + `min component ${point.min_component}` + (point.criterion ? ` (${point.criterion})` : "")
      : "the most probable class per pixel")
    + ` — ${card.evaluation ? card.evaluation.split + ": " : ""}${score}`;
  $("threshold-control").hidden = card.task !== "binary";
  $("reset").hidden = card.task !== "binary";
}

// 8-connected components of `fg` (Uint8Array, 1 = foreground) smaller than `minimum` pixels set to 0.
function removeSmallComponents(fg, width, height, minimum) {
  if (minimum <= 1) return;
  const seen = new Uint8Array(fg.length);
  const stack = new Int32Array(fg.length);
  const members = new Int32Array(fg.length);
  for (let start = 0; start < fg.length; start++) {
    if (!fg[start] || seen[start]) continue;
    let top = 0, count = 0;
    stack[top++] = start; seen[start] = 1;
    while (top) {
      const at = stack[--top];
      members[count++] = at;
      const x = at % width, y = (at - x) / width;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const nx = x + dx, ny = y + dy;
          if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
          const next = ny * width + nx;
          if (fg[next] && !seen[next]) { seen[next] = 1; stack[top++] = next; }
        }
      }
    }
    if (count < minimum) for (let i = 0; i < count; i++) fg[members[i]] = 0;
  }
}

// Labels (Uint8Array, H*W): binary 0/1 by the rules above, multiclass the argmax class.
function labels(threshold) {
  const { width, height, task, decoding } = state.result;
  const probs = state.probs, pixels = width * height;
  const out = new Uint8Array(pixels);
  if (task === "binary") {
    const t = Math.fround(threshold);  // the server compares float32 probabilities with a float32 threshold
    for (let i = 0; i < pixels; i++) out[i] = probs[i] > t ? 1 : 0;
    removeSmallComponents(out, width, height, decoding.min_component);
    let count = 0;
    for (let i = 0; i < pixels; i++) count += out[i];
    if (count < decoding.min_area) out.fill(0);
    return out;
  }
  const classes = probs.length / pixels;
  for (let i = 0; i < pixels; i++) {
    let best = 0;
    for (let k = 1; k < classes; k++) if (probs[k * pixels + i] > probs[best * pixels + i]) best = k;
    out[i] = best;
  }
  return out;
}

function draw() {
  const { width, height, task, palette } = state.result;
  const mask = labels(state.threshold);
  state.mask = mask;
  const overlay = $("overlay"), maskCanvas = $("mask");
  for (const canvas of [overlay, maskCanvas]) { canvas.width = width; canvas.height = height; }
  overlay.style.width = Math.max(width, Math.min(3 * width, 768)) + "px";
  const context = overlay.getContext("2d");
  context.drawImage(state.image, 0, 0);
  const picture = context.getImageData(0, 0, width, height);
  const maskData = new ImageData(width, height);
  let foreground = 0;
  for (let i = 0; i < mask.length; i++) {
    const value = task === "binary" ? mask[i] * 255 : mask[i];
    maskData.data.set([value, value, value, 255], 4 * i);
    if (mask[i]) foreground++;
    const p = picture.data, o = 4 * i;
    if (task === "binary") {
      if (!mask[i]) continue;
      const x = i % width, y = (i - x) / width;
      const edge = x === 0 || y === 0 || x === width - 1 || y === height - 1
        || !mask[i - 1] || !mask[i + 1] || !mask[i - width] || !mask[i + width];
      if (edge) { p[o] = 255; p[o + 1] = 40; p[o + 2] = 40; }  // contour
      else { p[o] = 0.75 * p[o] + 64; p[o + 1] *= 0.75; p[o + 2] *= 0.75; }  // a light red tint inside
    } else {
      const colour = palette[mask[i]] || [0, 0, 0];
      for (let c = 0; c < 3; c++) p[o + c] = 0.55 * p[o + c] + 0.45 * colour[c];
    }
  }
  context.putImageData(picture, 0, 0);
  maskCanvas.getContext("2d").putImageData(maskData, 0, 0);
  overlay.dataset.foreground = String(foreground);
  $("threshold-value").textContent = state.threshold.toFixed(2);
  $("summary").textContent = task === "binary"
    ? `${foreground} of ${mask.length} pixels (${(100 * foreground / mask.length).toFixed(1)}%) above ${state.threshold.toFixed(2)}`
    : `${width} × ${height}`;
}

function showLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  if (state.result.task === "binary") return;
  state.result.classes.forEach((name, k) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.style.background = `rgb(${state.result.palette[k].join(",")})`;
    item.append(swatch, name);
    legend.append(item);
  });
}

async function upload(file) {
  setStatus(`segmenting ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await fetch("/predict?probabilities=true", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    const bytes = bytesOf(body.probabilities.data);
    state.result = body;
    state.probs = new Float32Array(bytes.buffer);  // little-endian, as every browser's platform
    state.image = await loadImage(body.image_png);
    state.threshold = body.decoding.threshold;
    $("threshold").value = String(state.threshold);
    $("result").hidden = false;
    showLegend();
    draw();
    setStatus(`${file.name}: ${body.width} × ${body.height}`);
    document.body.dataset.ready = "true";
  } catch (error) {
    setStatus(`${file.name}: ${error.message}`, true);
  }
}

function downloadMask() {
  const link = document.createElement("a");
  const stem = ($("file").files[0] ? $("file").files[0].name : "image").replace(/\.[^.]*$/, "");
  link.download = `${stem}-mask.png`;
  link.href = $("mask").toDataURL("image/png");
  link.click();
}

$("file").addEventListener("change", () => { if ($("file").files[0]) upload($("file").files[0]); });
$("threshold").addEventListener("input", () => { state.threshold = Number($("threshold").value); draw(); });
$("reset").addEventListener("click", () => {
  state.threshold = state.result.decoding.threshold;
  $("threshold").value = String(state.threshold);
  draw();
});
$("download").addEventListener("click", downloadMask);
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files[0]) upload(event.dataTransfer.files[0]);
});
showCard().catch((error) => setStatus(`model card: ${error.message}`, true));
