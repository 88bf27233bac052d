// Draw on the canvas with mouse, pen or touch (pointer events); on lifting the pen the
// drawing goes to /api/predict as a PNG, with the ticked models.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
let models = [];         // as /api/models lists them
let drawn = false;       // anything on the canvas?
let drawing = false;
let asked = 0;           // requests sent; a slower, older answer must not overwrite a newer one
let answered = 0;

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
}

function point(event) {  // CSS pixels, inside the border -> canvas pixels
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left - pad.clientLeft) * pad.width / pad.clientWidth,
          (event.clientY - box.top - pad.clientTop) * pad.height / pad.clientHeight];
}

function setupPen() {
  ctx.lineWidth = 18;    // about an MNIST stroke for a digit drawn across most of the canvas
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#000";
}

pad.addEventListener("pointerdown", (event) => {
  if (event.pointerType === "mouse" && event.button !== 0) return;
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  drawn = true;
  setupPen();
  const [x, y] = point(event);
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x, y);  // a tap leaves a dot
  ctx.stroke();
  event.preventDefault();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of (moves.length ? moves : [event])) {
    const [x, y] = point(e);
    ctx.lineTo(x, y);
  }
  ctx.stroke();
  event.preventDefault();
});

function penUp() {
  if (!drawing) return;
  drawing = false;  // the pointer capture ends by itself
  predict();
}
pad.addEventListener("pointerup", penUp);
pad.addEventListener("pointercancel", penUp);

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  results.replaceChildren();
  document.getElementById("seen").removeAttribute("src");
  say("");
});
document.getElementById("predict").addEventListener("click", () => predict());

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function ticked() {
  return [...document.querySelectorAll("#models input:checked")].map((box) => box.value);
}

function percent(p) {
  return p < 0.005 ? "" : String(Math.round(100 * p));
}

function describe(m) {
  const acc = m.test_acc != null ? `test ${m.test_acc.toFixed(2)}%`
    : m.val_acc != null ? `val ${m.val_acc.toFixed(2)}%` : "no accuracy";
  return `seed ${m.seed} · ${acc}` + (m.protocol === "test" ? "" : ` · ${m.protocol}`);
}

async function predict() {
  if (!drawn) { say("Draw a digit first."); return; }
  const ids = ticked();
  if (!ids.length) { say("Tick at least one model.", true); return; }
  const mine = ++asked;
  say("Predicting…");
  const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
  const query = ids.map((id) => "model=" + encodeURIComponent(id)).join("&");
  let reply, body;
  try {
    reply = await fetch("/api/predict?" + query, {method: "POST", headers: {"Content-Type": "image/png"}, body: blob});
    body = await reply.json();
  } catch (err) {
    if (mine === asked) say("The server did not answer: " + err, true);
    return;
  }
  if (mine !== asked) return;
  if (!reply.ok) { say(body.error || `error ${reply.status}`, true); return; }
  document.getElementById("seen").src = body.input;
  show(body.predictions);
  say("");
  results.dataset.answered = String(++answered);
}

function show(predictions) {
  const byId = Object.fromEntries(models.map((m) => [m.id, m]));
  results.replaceChildren(...predictions.map((p) => {
    const m = byId[p.model];
    const card = document.createElement("div");
    card.className = "result";
    card.dataset.model = p.model;
    const answer = document.createElement("div");
    answer.className = "answer";
    for (const [cls, text] of [["digit", p.digit], ["step", m.step],
                               ["name", `${m.params.toLocaleString("en")} params`], ["name", describe(m)]]) {
      const line = document.createElement("div");
      line.className = cls;
      line.textContent = text;
      answer.append(line);
    }
    const bars = document.createElement("div");
    bars.className = "bars";
    p.probabilities.forEach((q, digit) => {
      const column = document.createElement("div");
      column.className = "column";
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = percent(q);
      const bar = document.createElement("div");
      bar.className = "bar" + (digit === p.digit ? " top" : "");
      bar.dataset.digit = digit;
      bar.dataset.p = q;
      bar.title = `${digit}: ${(100 * q).toFixed(3)}%`;
      const fill = document.createElement("span");
      fill.style.height = (100 * q).toFixed(2) + "%";
      bar.append(fill);
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = digit;
      column.append(pct, bar, label);
      bars.append(column);
    });
    card.append(answer, bars);
    return card;
  }));
}

async function loadModels() {
  let body;
  try {
    const reply = await fetch("/api/models");
    body = await reply.json();
    if (!reply.ok) throw new Error(body.error || reply.status);
  } catch (err) {
    say("Could not list the models: " + err, true);
    return;
  }
  models = body.models;
  if (!models.length) {
    say("No finished run with weights in the stores: train one with `ladder run step6`.", true);
    return;
  }
  const chosen = new Set(body.default);
  const steps = new Map();
  for (const m of models) {
    if (!steps.has(m.step)) steps.set(m.step, []);
    steps.get(m.step).push(m);
  }
  const list = document.getElementById("models");
  for (const [step, runs] of steps) {
    const group = document.createElement("details");
    group.open = runs.some((m) => chosen.has(m.id));
    const summary = document.createElement("summary");
    summary.textContent = step + " ";
    const params = document.createElement("span");
    params.className = "params";
    params.textContent = `(${runs[0].params.toLocaleString("en")} params, ${runs.length} run${runs.length > 1 ? "s" : ""})`;
    summary.append(params);
    group.append(summary);
    for (const m of runs) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = m.id;
      box.checked = chosen.has(m.id);
      box.addEventListener("change", () => { if (drawn) predict(); });
      label.append(box, " " + describe(m));
      if (m.id === body.best) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = "best";
        label.append(badge);
      }
      label.title = m.id;
      group.append(label);
    }
    list.append(group);
  }
  document.body.dataset.ready = "true";
}

clearPad();
loadModels();
