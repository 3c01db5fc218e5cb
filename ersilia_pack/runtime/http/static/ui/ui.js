// The page for people: run a served Ersilia model from a browser. Plain JavaScript, no build.
// Every URL is relative, so the page works behind a proxy's path prefix too.
"use strict";

(() => {
  const SHOWN_ROWS = 1000; // rows drawn in the table; the CSV download has them all
  const POLL_MS = 500;
  const FACTS = [
    "Identifier", "Slug", "Task", "Subtask", "Input", "Input Shape", "Output", "Output Type",
    "Output Shape", "Output Dimension", "Tag", "Biomedical Area", "Target Organism",
    "Publication", "Source Code", "License",
  ];
  // The key lives in this variable only: never in localStorage, cookies or the URL.
  const state = { key: "", config: null, columns: new Map(), result: null, busy: false };
  const $ = (id) => document.getElementById(id);

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function showMessage(text, kind = "error") {
    const box = $("message");
    box.textContent = text;
    box.className = kind;
    box.hidden = false;
  }

  function clearMessage() {
    $("message").hidden = true;
    $("message").textContent = "";
  }

  async function call(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (error) {
      throw new HttpError(0, "The server cannot be reached: is it still running?");
    }
    if (response.status === 401) {
      throw new HttpError(401, state.key
        ? "The API key was refused: check it and paste it again."
        : "This server needs an API key: paste it in the box above.");
    }
    if (!response.ok) {
      let detail = response.statusText || "the request failed";
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (ignored) {
        // not JSON: keep the status text
      }
      throw new HttpError(response.status, `${detail} (HTTP ${response.status})`);
    }
    return response.json();
  }

  function fact(value) {
    const text = Array.isArray(value) ? value.join(", ") : String(value);
    if (/^https?:\/\/\S+$/.test(text)) {
      const link = document.createElement("a");
      link.href = text;
      link.textContent = text;
      link.rel = "noopener noreferrer";
      return link;
    }
    return document.createTextNode(text);
  }

  function showCard(card) {
    $("title").textContent = card.Title || state.config.title;
    $("description").textContent = card.Description || "";
    $("interpretation").textContent = card.Interpretation || "";
    $("interpretation").hidden = !card.Interpretation;
    const facts = $("facts");
    facts.replaceChildren();
    for (const name of FACTS) {
      const value = card[name];
      if (value === undefined || value === null || value === "" ||
          (Array.isArray(value) && value.length === 0)) continue;
      const item = document.createElement("div");
      const term = document.createElement("dt");
      term.textContent = name;
      const detail = document.createElement("dd");
      detail.appendChild(fact(value));
      item.append(term, detail);
      facts.appendChild(item);
    }
    $("about").hidden = false;
  }

  function fillApis(apis, chosen) {
    const select = $("api");
    select.replaceChildren(...apis.map((name) => new Option(name, name, false, name === chosen)));
    select.disabled = apis.length < 2;
    $("api-note").textContent = apis.length < 2 ? "" : `${apis.length} APIs: choose one`;
  }

  async function columnsOf(api) {
    if (!state.columns.has(api)) {
      state.columns.set(api, await call(`${encodeURIComponent(api)}/columns/output`));
    }
    return state.columns.get(api);
  }

  async function loadModel() {
    clearMessage();
    try {
      const info = await call("info");
      showCard(info.card || info);
      await columnsOf($("api").value);
      setReady(true);
    } catch (error) {
      setReady(error.status !== 401);
      showMessage(error.message);
    }
  }

  function setReady(ready) {
    for (const id of ["run", "load-example"]) $(id).disabled = !ready || state.busy;
  }

  function inputsOf(text) {
    return text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== "");
  }

  function firstCsvField(line) {
    if (!line.startsWith('"')) return line.split(",")[0];
    let value = "";
    for (let i = 1; i < line.length; i += 1) {
      if (line[i] === '"') {
        if (line[i + 1] === '"') {
          value += '"';
          i += 1;
        } else {
          return value;
        }
      } else {
        value += line[i];
      }
    }
    return value;
  }

  function inputsOfFile(name, text) {
    const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
    if (!/\.csv$/i.test(name)) return inputsOf(lines.join("\n"));
    return lines.slice(1).map(firstCsvField).map((v) => v.trim()).filter((v) => v !== "");
  }

  function countInputs() {
    const count = inputsOf($("inputs").value).length;
    const limit = state.config ? state.config.job_threshold : Infinity;
    $("input-count").textContent = count === 0 ? ""
      : `${count} input${count === 1 ? "" : "s"}${count > limit ? " (runs as a job)" : ""}`;
  }

  async function loadExample() {
    clearMessage();
    try {
      const example = await call(`${encodeURIComponent($("api").value)}/example/input`);
      $("inputs").value = example.join("\n");
      countInputs();
    } catch (error) {
      showMessage(error.message);
    }
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function showProgress(done, total, text) {
    $("progress-box").hidden = false;
    $("progress").max = Math.max(total, 1);
    $("progress").value = done;
    $("progress-text").textContent = text;
  }

  async function runDirect(api, inputs) {
    const body = await call(`${encodeURIComponent(api)}?with_meta=true`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(inputs),
    });
    const reasons = new Map(body.meta.failed.map((item) => [item.index, item.reason]));
    return { rows: body.result, reasons, unexplained: "the model gave no values for this input" };
  }

  async function runJob(api, inputs) {
    const job = await call(`job/submit?api=${encodeURIComponent(api)}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(inputs),
    });
    const id = encodeURIComponent(job.job_id);
    showProgress(0, job.total, `job ${job.job_id} queued: 0 of ${job.total} rows`);
    for (;;) {
      const status = await call(`job/status/${id}`);
      showProgress(status.done, status.total,
        `job ${status.job_id} ${status.state}: ${status.done} of ${status.total} rows`);
      if (status.state === "done") break;
      if (status.state === "failed") throw new HttpError(500, `The job failed: ${status.error}`);
      if (status.state === "cancelled") throw new HttpError(409, "The job was cancelled.");
      await sleep(POLL_MS);
    }
    const rows = await call(`job/result/${id}`);
    // A job's result keeps which rows are null, not why.
    return {
      rows,
      reasons: new Map(),
      unexplained: "no values (a job keeps no reason: run this input on its own to see why)",
    };
  }

  function isNullRow(row) {
    return row === null || Object.values(row).every((value) => value === null);
  }

  async function run() {
    clearMessage();
    const inputs = inputsOf($("inputs").value);
    if (inputs.length === 0) {
      showMessage("Paste inputs first, one per line, or upload a CSV.", "info");
      return;
    }
    const api = $("api").value;
    state.busy = true;
    setReady(false);
    $("run").textContent = "Running…";
    $("progress-box").hidden = true;
    try {
      const columns = await columnsOf(api);
      const asJob = inputs.length > state.config.job_threshold;
      const answer = asJob ? await runJob(api, inputs) : await runDirect(api, inputs);
      const { rows, reasons } = answer;
      rows.forEach((row, i) => {
        if (isNullRow(row) && !reasons.has(i)) reasons.set(i, answer.unexplained);
      });
      state.result = { api, inputs, columns, rows, reasons };
      showResult();
    } catch (error) {
      showMessage(error.message);
    } finally {
      state.busy = false;
      setReady(true);
      $("run").textContent = "Run";
    }
  }

  // 12 significant digits hide binary noise (548.7570000000002 shows as 548.757).
  function shown(value) {
    return typeof value === "number" && !Number.isInteger(value)
      ? String(parseFloat(value.toPrecision(12)))
      : String(value);
  }

  function cell(value) {
    const td = document.createElement("td");
    if (value === null || value === undefined) {
      td.className = "null";
    } else {
      td.textContent = shown(value);
      if (typeof value === "number") {
        td.className = "number";
        td.title = String(value); // the exact value, as in the CSV download
      }
    }
    return td;
  }

  function showResult() {
    const { api, inputs, columns, rows, reasons } = state.result;
    const head = document.createElement("tr");
    const inputHead = document.createElement("th");
    inputHead.textContent = "input";
    head.appendChild(inputHead);
    for (const column of columns) {
      const th = document.createElement("th");
      th.dataset.column = column.name;
      th.title = column.description || "";
      th.append(column.name);
      const type = document.createElement("span");
      type.className = "type";
      type.textContent = column.type;
      th.appendChild(type);
      head.appendChild(th);
    }
    const body = document.createDocumentFragment();
    rows.slice(0, SHOWN_ROWS).forEach((row, i) => {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.className = "input";
      td.textContent = inputs[i];
      td.title = inputs[i];
      tr.appendChild(td);
      if (reasons.has(i)) {
        tr.className = "failed";
        const reason = document.createElement("td");
        reason.className = "reason";
        reason.colSpan = Math.max(columns.length, 1);
        reason.textContent = reasons.get(i);
        tr.appendChild(reason);
      } else {
        for (const column of columns) tr.appendChild(cell(row[column.name]));
      }
      body.appendChild(tr);
    });
    const table = $("result-table");
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(body);
    table.dataset.api = api;
    $("row-count").textContent = String(rows.length);
    $("failed-count").textContent = String(reasons.size);
    const truncated = $("truncated");
    truncated.hidden = rows.length <= SHOWN_ROWS;
    truncated.textContent = `Showing the first ${SHOWN_ROWS} of ${rows.length} rows: ` +
      "download the CSV for all of them.";
    $("results").hidden = false;
  }

  function csvField(value) {
    if (value === null || value === undefined) return "";
    const text = String(value);
    return /[",\r\n]|^\s|\s$/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function download() {
    if (!state.result) return;
    const { api, inputs, columns, rows } = state.result;
    const names = columns.map((column) => column.name);
    const lines = [["input", ...names].map(csvField).join(",")];
    rows.forEach((row, i) => {
      const values = names.map((name) => (row === null ? null : row[name]));
      lines.push([inputs[i], ...values].map(csvField).join(","));
    });
    const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${state.config.model_id}-${api}.csv`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  function useKey() {
    state.key = $("api-key").value.trim();
    state.columns.clear();
    loadModel();
  }

  async function start() {
    try {
      state.config = await call("ui/config");
    } catch (error) {
      showMessage(error.message);
      return;
    }
    const config = state.config;
    document.title = `${config.model_id} · ${config.title}`;
    $("model-id").textContent = config.model_id;
    $("slug").textContent = config.slug;
    $("title").textContent = config.title;
    fillApis(config.apis, config.default_api);
    $("api").addEventListener("change", () => {
      columnsOf($("api").value).catch((error) => showMessage(error.message));
    });
    $("inputs").addEventListener("input", countInputs);
    $("load-example").addEventListener("click", loadExample);
    $("run").addEventListener("click", run);
    $("download").addEventListener("click", download);
    $("use-key").addEventListener("click", useKey);
    $("api-key").addEventListener("keydown", (event) => {
      if (event.key === "Enter") useKey();
    });
    $("csv-file").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (!file) return;
      $("inputs").value = inputsOfFile(file.name, await file.text()).join("\n");
      event.target.value = "";
      countInputs();
    });
    if (config.auth) {
      $("key-section").hidden = false;
      setReady(false);
      showMessage("This server needs an API key: paste it in the box above.", "info");
      return;
    }
    await loadModel();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
