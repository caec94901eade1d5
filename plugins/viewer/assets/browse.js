// browse.html: a searchable list of a run's items, a page per task and per trajectory.
// The data is the JSON block #browse-data, written by termigen (plugins/viewer/browse_page.py).
// Everything the run's models wrote is hostile text: it only ever reaches the page through
// text nodes (never innerHTML), with control characters (ANSI escapes) shown as \xNN.
"use strict";

(function () {
  const DATA = JSON.parse(document.getElementById("browse-data").textContent);
  const ITEMS = DATA.items;
  const BY_ID = new Map(ITEMS.map((item) => [item.id, item]));
  const app = document.getElementById("app");

  // --- small DOM helpers -------------------------------------------------------------

  const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;

  /** Text as it may be shown: control characters (ANSI escapes, NULs) made visible. */
  function shown(value) {
    if (value === null || value === undefined) return "";
    return String(value).replace(CONTROL, (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
  }

  /** An element with attributes and children (strings become text nodes, never markup). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(shown(child)));
    }
    return node;
  }

  function link(route, id, text) {
    return el("a", { href: "#" + route + "/" + encodeURIComponent(id) }, text);
  }

  function itemLink(item) {
    return link(item.kind === "trajectory" ? "traj" : "task", item.id, item.id);
  }

  function pre(text, cls, attrs) {
    return el("pre", Object.assign({ class: "code " + (cls || "") }, attrs || {}), text || "");
  }

  function section(title, id, ...body) {
    return el("section", { class: "panel", id: id }, el("h2", {}, title), ...body);
  }

  function badge(text, cls, attrs) {
    return el("span", Object.assign({ class: "badge " + cls }, attrs || {}), text);
  }

  function ratio(value) {
    return value === null || value === undefined ? "" : Number(value).toFixed(2);
  }

  function definitions(pairs) {
    const dl = el("dl", { class: "facts" });
    for (const [name, value] of pairs) {
      if (value === null || value === undefined || value === "") continue;
      append(dl, [el("dt", {}, name), el("dd", {}, value)]);
    }
    return dl;
  }

  function statusBadge(item) {
    const where = item.stage ? (item.status === "pending" ? " (" + item.stage + ")" : " at " + item.stage) : "";
    const kind = item.failure_kind ? " · " + item.failure_kind : "";
    return badge(item.status + where + kind, "status-" + item.status, { dataset: { status: item.status } });
  }

  function filesBlock(files, cls) {
    const names = Object.keys(files || {}).sort();
    if (!names.length) return el("p", { class: "muted" }, "none");
    return names.map((name) =>
      el("details", { class: "file", open: names.length <= 3, dataset: { path: name } },
        el("summary", {}, name), pre(files[name], cls)));
  }

  // --- the list ----------------------------------------------------------------------

  const filters = { text: "", kind: "", category: "", status: "", resolved: "", mode: "", min: "", max: "" };
  // rows put in the table at a time: thousands of rows would make every filter change slow
  const PAGE_ROWS = 500;
  let listNode = null;
  let body = null;
  let more = null;
  let rows = [];
  let limit = PAGE_ROWS;

  function haystack(item) {
    const parts = [item.id, item.title, item.category, item.category_name, item.status, item.stage, item.reason,
      item.kind, (item.error_modes || []).join(" ")];
    const traj = DATA.trajectories[item.id];
    if (traj) for (const step of traj.steps) parts.push(step.command || "", step.thought || "");
    return parts.join("\n").toLowerCase();
  }

  function options(select, values, label) {
    append(select, [el("option", { value: "" }, label)]);
    for (const [value, text] of values) append(select, [el("option", { value: value }, text)]);
    return select;
  }

  function counted(key) {
    const counts = new Map();
    for (const item of ITEMS) {
      const values = key === "error_modes" ? item.error_modes || [] : [item[key]];
      for (const value of values) if (value !== "" && value !== null && value !== undefined) counts.set(value, (counts.get(value) || 0) + 1);
    }
    return [...counts.entries()].sort((a, b) => String(a[0]).localeCompare(String(b[0])));
  }

  function control(id, label, input) {
    input.id = id;
    return el("label", { class: "filter", for: id }, el("span", {}, label), input);
  }

  function buildList() {
    const search = el("input", { type: "search", placeholder: "search ids, titles, reasons, commands…", autocomplete: "off" });
    search.addEventListener("input", () => { filters.text = search.value.trim().toLowerCase(); applyFilters(); });
    const select = (key, values, label) => {
      const node = options(el("select"), values, label);
      node.addEventListener("change", () => { filters[key] = node.value; applyFilters(); });
      return node;
    };
    const number = (key, placeholder) => {
      const node = el("input", { type: "number", min: "0", max: "1", step: "0.05", placeholder: placeholder });
      node.addEventListener("input", () => { filters[key] = node.value; applyFilters(); });
      return node;
    };
    const categories = counted("category").map(([v, n]) => [v, v + " (" + n + ")"]);
    const statuses = ["done", "rejected", "failed", "pending"].map((s) => [s, s + " (" + ITEMS.filter((i) => i.status === s).length + ")"]);
    const kinds = counted("kind").map(([v, n]) => [v, v + " (" + n + ")"]);
    const modes = counted("error_modes").map(([v, n]) => [v, v + " (" + n + ")"]).concat([["(none)", "no injected error"]]);
    const bar = el("div", { class: "filters" },
      control("f-search", "search", search),
      control("f-kind", "kind", select("kind", kinds, "all kinds")),
      control("f-category", "category", select("category", categories, "all categories")),
      control("f-status", "status", select("status", statuses, "any status")),
      control("f-resolved", "resolved", select("resolved", [["yes", "resolved"], ["no", "not resolved"]], "any")),
      control("f-mode", "error mode", select("mode", modes, "any")),
      control("f-pass-min", "pass ratio ≥", number("min", "0")),
      control("f-pass-max", "pass ratio ≤", number("max", "1")));
    const count = el("p", { id: "count", class: "muted" });
    body = el("tbody");
    rows = ITEMS.map((item) => ({ item: item, tr: null, text: haystack(item) }));
    more = el("button", { type: "button", id: "more", hidden: true, onclick: () => { limit += PAGE_ROWS; applyFilters(false); } });
    const head = el("thead", {}, el("tr", {}, ["item", "kind", "title", "category", "status", "resolved", "pass ratio", "error modes", "steps"]
      .map((h) => el("th", {}, h))));
    listNode = el("div", { id: "list" }, bar, count, el("table", { id: "items" }, head, body), more);
    applyFilters();
  }

  /** A row's element, made the first time it is shown (a big run has thousands). */
  function rowNode(row) {
    if (row.tr) return row.tr;
    const item = row.item;
    const modes = (item.error_modes || []).map((m) => badge(m, "mode", { dataset: { mode: m } }));
    row.tr = el("tr", { class: "item-row", dataset: { id: item.id, status: item.status, kind: item.kind } },
      el("td", { class: "id" }, itemLink(item)),
      el("td", {}, item.kind),
      el("td", { class: "title" }, item.title),
      el("td", {}, item.category),
      el("td", { class: "status" }, statusBadge(item), item.reason ? el("div", { class: "reason" }, item.reason) : null),
      el("td", { class: "resolved" }, item.resolved === null || item.resolved === undefined ? "" : item.resolved ? "yes" : "no"),
      el("td", { class: "num" }, ratio(item.pass_ratio)),
      el("td", {}, modes),
      el("td", { class: "num" }, item.steps === null || item.steps === undefined ? "" : item.steps));
    return row.tr;
  }

  function matches(item, text) {
    if (filters.text && !text.includes(filters.text)) return false;
    if (filters.kind && item.kind !== filters.kind) return false;
    if (filters.category && item.category !== filters.category) return false;
    if (filters.status && item.status !== filters.status) return false;
    if (filters.resolved && (item.resolved === null || item.resolved === undefined || item.resolved !== (filters.resolved === "yes"))) return false;
    if (filters.mode) {
      if (item.kind !== "trajectory") return false;
      const modes = item.error_modes || [];
      if (filters.mode === "(none)" ? modes.length > 0 : !modes.includes(filters.mode)) return false;
    }
    for (const [key, test] of [["min", (v, b) => v >= b], ["max", (v, b) => v <= b]]) {
      if (filters[key] === "") continue;
      const bound = Number(filters[key]);
      if (Number.isNaN(bound)) continue;
      if (item.pass_ratio === null || item.pass_ratio === undefined || !test(item.pass_ratio, bound)) return false;
    }
    return true;
  }

  /** Show the rows that match the filters: the first PAGE_ROWS of them, more on request. */
  function applyFilters(fromTop) {
    if (fromTop !== false) limit = PAGE_ROWS;
    const matching = rows.filter((row) => matches(row.item, row.text));
    body.replaceChildren(...matching.slice(0, limit).map(rowNode));
    const shown = Math.min(limit, matching.length);
    listNode.querySelector("#count").textContent = matching.length + " of " + ITEMS.length + " items" +
      (shown < matching.length ? " (the first " + shown + " shown)" : "");
    more.hidden = shown >= matching.length;
    more.textContent = "show " + Math.min(PAGE_ROWS, matching.length - shown) + " more";
  }

  function showList() {
    if (!listNode) buildList();
    return listNode;
  }

  // --- a task ------------------------------------------------------------------------

  function showTask(id) {
    const item = BY_ID.get(id);
    const task = DATA.tasks[id];
    if (!item || !task) return missing(id);
    const validation = task.validation || {};
    // tests must fail on the untouched environment ("before") and pass after the solution ("after")
    const checks = (validation.checks || []).map((check, n) =>
      el("details", { class: "check " + ((check.phase === "before") !== check.passed ? "expected" : "unexpected"), dataset: { phase: check.phase } },
        el("summary", {}, "#" + (n + 1) + " " + check.phase + " the solution: tests " + (check.passed ? "passed" : "failed") +
          " (exit " + check.exit_code + (check.timed_out ? ", timed out" : "") + ", " + check.duration_s + " s)" +
          (check.reason ? " — " + check.reason : "")),
        pre(check.output_tail, "output")));
    const build = task.build || {};
    const reviews = (task.test_reviews || []).map((r) =>
      el("li", {}, "round " + r.round + ": " + r.verdict + (r.feedback ? " — " + r.feedback : "")));
    const history = el("table", { class: "history" },
      el("thead", {}, el("tr", {}, ["stage", "status", "attempts", "reason"].map((h) => el("th", {}, h)))),
      el("tbody", {}, (task.history || []).map((h) => el("tr", { dataset: { stage: h.stage } },
        el("td", {}, h.index + " " + h.stage), el("td", {}, h.status + (h.failure_kind ? " (" + h.failure_kind + ")" : "")),
        el("td", { class: "num" }, h.attempts), el("td", {}, h.reason)))));
    return el("div", { id: "task", class: "page", dataset: { id: id } },
      el("p", { class: "crumbs" }, el("a", { href: "#" }, "← all items")),
      el("h1", {}, item.title),
      el("p", {}, statusBadge(item), " ", item.category_name || item.category, item.tier ? " · tier " + item.tier : ""),
      item.reason ? el("p", { class: "reason", id: "reason" }, item.reason) : null,
      definitions([["item", item.id], ["kind", item.kind], ["seed", task.seed], ["difficulty", task.difficulty], ["workdir", task.workdir],
        ["models", Object.entries(task.models || {}).map(([r, m]) => r + ": " + m).join(", ")]]),
      item.trajectories && item.trajectories.length
        ? section("Trajectories", "trajectories", el("ul", {}, item.trajectories.map((t) => el("li", {}, link("traj", t, t),
          BY_ID.get(t) ? " — " + (BY_ID.get(t).resolved ? "resolved" : "not resolved") + ", pass ratio " + ratio(BY_ID.get(t).pass_ratio) : ""))))
        : null,
      section("Stages", "history", history, task.detail ? el("details", {}, el("summary", {}, "recorded detail"), pre(task.detail, "detail")) : null),
      task.instruction ? section("Instruction", "instruction", pre(task.instruction, "prose")) : null,
      Object.keys(task.spec || {}).length ? section("Spec", "spec", pre(JSON.stringify(task.spec, null, 2), "json")) : null,
      task.dockerfile ? section("Dockerfile", "dockerfile", pre(task.dockerfile, "dockerfile")) : null,
      Object.keys(task.files || {}).length || (task.binary_files || []).length
        ? section("Environment files", "files", filesBlock(task.files),
          (task.binary_files || []).length ? el("p", { class: "muted" }, "binary: " + task.binary_files.join(", ")) : null)
        : null,
      Object.keys(task.tests || {}).length ? section("Tests", "tests", filesBlock(task.tests, "test")) : null,
      reviews.length ? section("Test reviews", "reviews", el("ol", {}, reviews)) : null,
      task.solution ? section("Solution (solve.sh)", "solution", pre(task.solution, "solution")) : null,
      checks.length || validation.reason
        ? section("Validation evidence", "validation",
          el("p", {}, (validation.passed ? "passed" : "not passed") + " after " + (validation.rounds || 0) + " round(s)" +
            (validation.reason ? " — " + validation.reason : "")), checks)
        : null,
      Object.keys(build).length || task.build_log_tail
        ? section("Build", "build",
          definitions([["image", build.image], ["attempts", build.attempts], ["cached", build.cached ? "yes" : ""]]),
          (build.errors || []).length ? el("ol", { class: "errors" }, build.errors.map((e) => el("li", {}, pre(e, "error")))) : null,
          task.build_log_tail ? [el("h3", {}, "Build log tail (" + task.build_log_name + ")"), pre(task.build_log_tail, "log")] : null)
        : null,
      (task.lint || []).length
        ? section("Lint findings", "lint", el("ul", {}, task.lint.map((f) => el("li", {}, Object.values(f).join(" · ")))))
        : null);
  }

  // --- a trajectory ------------------------------------------------------------------

  let current = 0;

  function stepNode(step, total) {
    const badges = [];
    if (step.intent === "error") badges.push(badge("injected error: " + (step.error_mode || "?"), "injected", { dataset: { mode: step.error_mode || "" } }));
    if (step.recovers_from !== null && step.recovers_from !== undefined) {
      badges.push(badge("recovers from step " + (step.recovers_from + 1), "recovery", { dataset: { from: step.recovers_from } }));
    }
    if ((step.recovered_by || []).length) badges.push(badge("recovered at step " + step.recovered_by.map((i) => i + 1).join(", "), "recovered"));
    badges.push(badge(step.weight ? "trained · weight " + step.weight : "masked · weight 0", "weight w" + step.weight, { dataset: { weight: step.weight } }));
    if (step.regenerations) badges.push(badge("regenerated " + step.regenerations + "×", "regen"));
    const verdicts = (step.critic || []).map((v, n) =>
      el("li", { class: v.accepted ? "accepted" : "rejected" }, "candidate " + (n + 1) + ": " + (v.accepted ? "accepted" : "rejected"),
        v.feedback ? el("span", { class: "feedback" }, " — " + v.feedback) : null));
    const exit = step.action === "finish" ? "finished" : step.timed_out ? "timed out" : "exit code " + step.exit_code;
    const classes = ["step", step.intent === "error" ? "is-error" : "", step.recovers_from !== null && step.recovers_from !== undefined ? "is-recovery" : ""];
    return el("article", { class: classes.join(" "), id: "step-" + step.index, dataset: { step: step.index, intent: step.intent } },
      el("header", {}, el("h3", {}, "Step " + (step.index + 1) + " of " + total), badges),
      step.thought ? el("p", { class: "thought" }, step.thought) : null,
      step.action === "finish"
        ? el("div", { class: "finish" }, el("strong", {}, "finish"), step.command ? pre(step.command, "summary") : null)
        : pre(step.command || "", "command"),
      step.action === "finish" ? null : pre(step.output || "(no output)", "output"),
      el("p", { class: "exit " + (step.exit_code ? "nonzero" : "") }, exit + (step.duration_s ? " · " + step.duration_s + " s" : "")),
      verdicts.length ? el("details", { class: "critic", open: step.intent === "error" || verdicts.length > 1 },
        el("summary", {}, "critic: " + verdicts.length + " verdict(s)"), el("ul", {}, verdicts)) : null);
  }

  function showTrajectory(id) {
    const item = BY_ID.get(id);
    const traj = DATA.trajectories[id];
    if (!item || !traj) return missing(id);
    current = 0;
    const steps = traj.steps.map((s) => stepNode(s, traj.steps.length));
    const errors = traj.steps.filter((s) => s.intent === "error").length;
    const exports = traj.exports.length
      ? el("ul", { id: "exports" }, traj.exports.map((e) => el("li", { dataset: { exporter: e.exporter, included: e.included } },
        e.exporter + ": " + (e.included ? "exported" : "left out (" + e.why + ")"))))
      : el("p", { id: "exports", class: "muted" }, traj.exported ? "the run has no SFT export" : "not exported yet (exports run at the end of the run)");
    const masked = traj.steps.filter((s) => s.weight === 0).length;
    const position = el("span", { id: "position" });
    const move = (delta) => focusStep(Math.min(Math.max(current + delta, 0), steps.length - 1), steps, position);
    const nav = el("div", { class: "stepper" },
      el("button", { type: "button", id: "prev", onclick: () => move(-1) }, "◀ previous"),
      position,
      el("button", { type: "button", id: "next", onclick: () => move(1) }, "next ▶"),
      el("span", { class: "muted" }, " (or ← →)"));
    const page = el("div", { id: "trajectory", class: "page", dataset: { id: id } },
      el("p", { class: "crumbs" }, el("a", { href: "#" }, "← all items"), traj.task_item ? [" · ", link("task", traj.task_item, "task " + traj.task_item)] : null),
      el("h1", {}, item.title),
      el("p", {}, badge(traj.resolved ? "resolved" : "not resolved", traj.resolved ? "ok" : "bad", { id: "resolved" }), " pass ratio ",
        el("strong", { id: "pass-ratio" }, ratio(traj.pass_ratio)), " · tests " + traj.tests_passed + "/" + traj.tests_total,
        " · " + traj.steps.length + " steps, " + errors + " injected error(s), " + (item.recoveries || 0) + " recovery step(s)"),
      definitions([["item", id], ["model", traj.model], ["agent format", traj.agent_format], ["seed", traj.seed],
        ["finished", traj.finished ? "yes" : "no (" + ((traj.stats || {}).stopped || "stopped") + ")"], ["tools used", (traj.tools_used || []).join(", ")]]),
      section("Training", "training",
        el("p", {}, "dataset.train_on: ", el("code", { id: "train-on" }, traj.train_on), " — " + masked + " of " + traj.steps.length +
          " assistant turn(s) masked (weight 0); observations are context only."),
        exports),
      section("Instruction", "instruction", pre(traj.instruction, "prose"),
        traj.system_prompt ? el("details", {}, el("summary", {}, "system prompt"), pre(traj.system_prompt, "prose")) : null),
      section("Steps", "steps", nav, steps),
      section("Tests after the episode", "test-output", pre(traj.test_output_tail, "output")),
      Object.keys(traj.stats || {}).length ? section("Statistics", "stats", pre(JSON.stringify(traj.stats, null, 2), "json")) : null);
    focusStep(0, steps, position, false);
    return page;
  }

  function focusStep(index, steps, position, scroll) {
    if (!steps.length) { position.textContent = "no steps"; return; }
    steps[current].classList.remove("current");
    current = index;
    steps[current].classList.add("current");
    position.textContent = "step " + (current + 1) + " of " + steps.length;
    if (scroll !== false) steps[current].scrollIntoView({ block: "center" });
  }

  document.addEventListener("keydown", (event) => {
    if (!document.getElementById("trajectory") || event.target.closest("input, select, textarea")) return;
    if (event.key === "ArrowRight" || event.key === "j") document.getElementById("next").click();
    if (event.key === "ArrowLeft" || event.key === "k") document.getElementById("prev").click();
  });

  // --- routing -----------------------------------------------------------------------

  function missing(id) {
    return el("div", { class: "page", id: "missing" }, el("p", { class: "crumbs" }, el("a", { href: "#" }, "← all items")),
      el("h1", {}, "No such item"), el("p", {}, "This run has no item " + id + "."));
  }

  function route() {
    const hash = location.hash.replace(/^#\/?/, "");
    const slash = hash.indexOf("/");
    const kind = slash < 0 ? hash : hash.slice(0, slash);
    let id = "";
    try { id = decodeURIComponent(hash.slice(slash + 1)); } catch (e) { id = hash.slice(slash + 1); }
    let view;
    if (kind === "task" && slash >= 0) view = showTask(id);
    else if (kind === "traj" && slash >= 0) view = showTrajectory(id);
    else view = showList();
    app.replaceChildren(view);
    document.title = (view === listNode ? "items" : id) + " · " + DATA.run_id + " · termigen";
    if (view !== listNode) window.scrollTo(0, 0);
  }

  append(document.getElementById("run"), [DATA.run_id]);
  append(document.getElementById("totals"), [ITEMS.length + " items, " + Object.keys(DATA.trajectories).length + " trajectories"]);
  window.addEventListener("hashchange", route);
  route();
})();
