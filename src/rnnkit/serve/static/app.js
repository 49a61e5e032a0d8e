// The page of `rnnkit serve`: next-word predictions as you type, which words drove the top one,
// and a streamed continuation. Plain DOM and fetch; the server's JSON API is all it uses.
"use strict";

const $ = (id) => document.getElementById(id);
const text = $("text"), predictions = $("predictions"), context = $("context"), caption = $("context-caption");
const method = $("method"), length = $("length"), temperature = $("temperature");
const button = $("generate"), output = $("output"), status = $("status");

const METHODS = { integrated_gradients: "integrated gradients", occlusion: "occlusion" };
const KINDS = { lm: "language model", translate: "translator", caption: "captioner" };
let model = null;       // GET /v1/model, once
let reading = null;     // AbortController of the in-flight predict + attribution
let generating = null;  // AbortController of the in-flight generation
let timer = 0;
let attribution = null; // the last answer, kept so switching the method re-shades without a request
let statusFrom = null;  // who set the status line, so a good answer clears only its own error

// ------------------------------------------------------------------ talking to the server

class ApiError extends Error {
  constructor(message, field) { super(message); this.field = field; }
}

async function post(path, body, signal) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!response.ok) {
    // the server answers every client error as {"error": "...", "field": ...}; anything else is a surprise
    let error = `${response.status} ${response.statusText}`, field = null;
    try { ({ error, field } = await response.json()); } catch { /* not JSON: keep the status line */ }
    throw new ApiError(error, field);
  }
  return response;
}

function say(message, from, isError = true) {
  status.textContent = message;
  status.classList.toggle("error", isError && Boolean(message));
  statusFrom = message ? from : null;
}

function clearSay(from) {
  if (statusFrom === from) say("", null);
}

// mark the control a 4xx names, so the mistake is visible where it was made
function markField(field) {
  for (const input of [text, length, temperature]) {
    if (input.id === field) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}

function failed(error, from) {
  if (error.name === "AbortError") return; // superseded by a newer request: not a failure
  say(error.message, from);
  if (error.field) markField(error.field);
}

// ------------------------------------------------------------------ the model line

async function loadModel() {
  try {
    const response = await fetch("/v1/model");
    model = await response.json();
  } catch (error) {
    $("model").textContent = "The server does not answer.";
    return;
  }
  const c = model.config || {};
  const parts = [KINDS[model.kind] || `${model.kind} model`];
  if (model.tokenizer) parts.push(`${model.tokenizer} tokenizer`);
  if (model.vocab_size) parts.push(`${model.vocab_size.toLocaleString()} tokens`);
  if (c.cell) {
    const layers = c.num_layers > 1 ? `${c.num_layers} × ` : "";
    parts.push(`${layers}${c.cell.toUpperCase()}, ${c.hidden_size} units`);
  }
  $("model").textContent = parts.join(" · ");
  if (model.kind !== "lm") {
    say(`This page is for language models; this server holds a ${model.kind} model. Its API is at /docs.`, "model", false);
    for (const control of [text, method, length, temperature, button]) control.disabled = true;
    return;
  }
  if (model.limits) length.max = model.limits.max_length;
  update();
}

// ------------------------------------------------------------------ predictions and attribution

function percent(p) {
  return p < 0.0005 ? "<0.1%" : `${(100 * p).toFixed(1)}%`;
}

function showPredictions(list) {
  predictions.replaceChildren(...list.map(({ token, prob }) => {
    const item = document.createElement("li");
    item.className = "prediction";
    const word = document.createElement("span");
    word.className = "token";
    word.textContent = token;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.style.width = `${100 * prob}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = percent(prob);
    item.append(word, bar, value);
    return item;
  }));
}

// shade each context word by its score for the chosen method: green raised the target's
// log-odds, rose lowered them; strength relative to the strongest word of this prompt
function shade() {
  if (!attribution) {
    context.replaceChildren();
    caption.textContent = "Type a few words to see which of them led to the top prediction.";
    return;
  }
  const scores = attribution.scores[method.value];
  const strongest = Math.max(...scores.map(Math.abs)) || 1;
  // word tokens get gaps between them; char and bpe pieces carry their own spaces
  const joined = model && model.tokenizer === "word";
  context.classList.toggle("pieces", !joined);
  context.replaceChildren(...attribution.tokens.map((token, i) => {
    const span = document.createElement("span");
    span.className = "word";
    span.textContent = token;
    span.dataset.score = String(scores[i]);
    const strength = Math.abs(scores[i]) / strongest;
    span.style.setProperty("--strength", strength.toFixed(3));
    span.classList.add(scores[i] >= 0 ? "up" : "down");
    span.title = `${scores[i] >= 0 ? "+" : ""}${scores[i].toFixed(3)}`;
    return span;
  }));
  caption.textContent = `Shade: how much each word raised (green) or lowered (rose) the log-odds of ` +
    `“${attribution.target}” (${percent(attribution.prob)}), by ${METHODS[method.value]}.`;
}

async function update() {
  // a newer keystroke makes the older answers useless: cancel them so they can never land last
  if (reading) reading.abort();
  const controller = reading = new AbortController();
  const prompt = text.value;
  document.body.classList.add("reading");
  try {
    const predicted = await (await post("/v1/predict", { text: prompt, top_k: 8 }, controller.signal)).json();
    showPredictions(predicted.predictions);
    text.removeAttribute("aria-invalid"); // a generation's mistake in another field stays marked
    clearSay("typing");
    if (!prompt.trim()) {
      attribution = null; // nothing to explain yet
    } else {
      const target = predicted.predictions[0].token;
      try {
        attribution = await (await post("/v1/attribution", { text: prompt, target }, controller.signal)).json();
      } catch (error) {
        if (error.name === "AbortError") throw error;
        // the predictions stand; only the shading is missing (a long text, say): drop the old one, say why
        attribution = null;
        error.message = `Not shaded: ${error.message}`;
        shade();
        throw error;
      }
    }
    shade();
  } catch (error) {
    failed(error, "typing");
  } finally {
    if (reading === controller) {
      reading = null;
      document.body.classList.remove("reading");
    }
  }
}

text.addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(update, 200); // wait for a pause in typing, not every key
});
method.addEventListener("change", shade);

// ------------------------------------------------------------------ generation

// the body arrives as server-sent events: blocks separated by a blank line, each with an optional
// `event:` line and `data:` lines of JSON; call `onEvent(name, data)` for each whole block
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length && onEvent(name, JSON.parse(data.join("\n"))) === false) return;
    }
  }
}

function generationEnded(state) {
  generating = null;
  output.dataset.state = state;
  button.textContent = "Generate";
  button.classList.remove("stop");
}

async function generate() {
  if (generating) { // the same button stops a running generation
    generating.abort();
    return;
  }
  const controller = generating = new AbortController();
  const prompt = text.value;
  const promptPart = document.createElement("span");
  promptPart.className = "prompt";
  // word tokenizers hand back bare words: the caller puts the space between prompt and continuation
  const gap = model && model.tokenizer === "word" && prompt && !/\s$/.test(prompt) ? " " : "";
  promptPart.textContent = prompt + gap;
  const continuation = document.createElement("span");
  continuation.className = "continuation";
  output.replaceChildren(promptPart, continuation);
  output.dataset.state = "running";
  button.textContent = "Stop";
  button.classList.add("stop");
  clearSay("generate");
  let state = "done", generated = "";
  try {
    const response = await post("/v1/generate", {
      text: prompt, length: Number(length.value), temperature: Number(temperature.value), stream: true,
    }, controller.signal);
    markField(null);
    await readEvents(response, (name, data) => {
      if (name === "error") {
        state = "error";
        say(data.error, "generate");
        return false;
      }
      if (name === "done") return false;
      generated += data.text;
      // a model that ends several sentences in a row would leave a tall gap: show one blank line at most
      continuation.textContent = generated.replace(/\n{3,}/g, "\n\n");
      return true;
    });
  } catch (error) {
    state = error.name === "AbortError" ? "stopped" : "error";
    if (state === "error" && !continuation.textContent) output.replaceChildren(); // refused: nothing to show
    failed(error, "generate");
  } finally {
    generationEnded(state);
  }
}

button.addEventListener("click", generate);
text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    generate();
  }
});

loadModel();
