// dishsync web app: renders the documents a page's live stream brings and
// sends taps as inputs. Everything shown is written as text (never as HTML).
// Each tap is an input with an id made here, kept in this browser until
// the broker answers, so a retry after a dropped connection is the same
// input and is applied once.
"use strict";

(function () {
  const body = document.body;
  const view = body.dataset.view;
  const store = body.dataset.store;
  const user = body.dataset.user;
  const lang = body.dataset.lang === "zh" ? "zh" : "en";
  const offsetMinutes = Number(body.dataset.offset || 0);
  const csrfMeta = document.querySelector('meta[name="csrf"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  const main = document.getElementById("main");
  const statusBox = document.getElementById("status");
  const queueBox = document.getElementById("queue");

  const WORDS = {
    en: {
      live: "live", reconnecting: "reconnecting…", last: "last update", offline: "offline",
      sku: "SKU", level: "Level", reorder: "Reorder point", par: "Par", state: "State", stale: "stale",
      dish: "Dish", status: "Status", portions: "portions", limited: "Limited by", sellout: "Sells out",
      available: "available", low: "low", sold_out: "sold out", ok: "ok", out: "out", negative: "negative",
      stores: "Stores", store: "Store", soldOut: "Sold out", lowSkus: "Low SKUs", requests: "Requests",
      transfers: "Transfers", waste: "Waste ratio", alerts: "Alerts", noAlerts: "No alerts",
      accept: "Accept", decline: "Decline", dispatch: "Dispatch", receive: "Receive", cancel: "Cancel",
      stocktake: "Stocktake", count: "Count", qty: "Quantity", save: "Save", reason: "Reason",
      wasteTitle: "Record waste", record: "Record", spoiled: "spoiled", dropped: "dropped",
      expired: "expired", equipment_failure: "equipment failure", eightySix: "86",
      endOfService: "until end of service", oneHour: "for an hour", untilTime: "until",
      release: "Release", pending: "sending…", confirmed: "done", refused: "refused",
      queued: "offline: {n} tap(s) waiting, sent when the connection is back",
      sending: "{n} tap(s) being sent", noRequests: "No open requests", noTransfers: "No transfers",
      from: "from", to: "to", deliveries: "Deliveries", today: "Today", raised: "raised", cleared: "cleared",
      nothing: "Nothing yet", open: "Open", salesPerHour: "portions sold per hour", wasteByReason: "waste by reason",
      offlineDevices: "Offline devices", delivery: "Receive a delivery", reference: "Delivery note or request",
      variance: "Usage variance since the last count", theoretical: "Theoretical", actual: "Actual",
      unexplained: "Unexplained", share: "Share", since: "Since", liveNow: "live (scale)", wasted: "Wasted",
      slowMovers: "Slow movers: stock less", cover: "Days of cover", suggestedPar: "Suggested par", perDay: "Use per day",
      faults: "Equipment faults", discardStock: "Discard the stock", keepStock: "Keep it", atRisk: "at risk",
      promotions: "Promotions", noPromotions: "No promotions", planPromotion: "Plan a promotion",
      promotionId: "Promotion id", starts: "Starts", ends: "Ends", portionsPerDay: "portions per store and day",
      uplift: "× usual daily sales", plan: "Plan", callOff: "Call off", coverage: "Coverage", need: "Need",
      onHand: "On hand", due: "Due", ready: "ready", at_risk: "at risk", short: "short", scheduled: "scheduled",
      running: "running", ended: "ended", cancelled: "cancelled", earlyLine: "Early line in",
      transferAsked: "Transfer asked",
    },
    zh: {
      live: "实时", reconnecting: "重新连接中…", last: "最后更新", offline: "离线",
      sku: "物料", level: "库存", reorder: "补货点", par: "标准库存", state: "状态", stale: "数据过期",
      dish: "菜品", status: "状态", portions: "份", limited: "限制食材", sellout: "预计售罄",
      available: "可售", low: "紧张", sold_out: "售罄", ok: "正常", out: "缺货", negative: "负库存",
      stores: "门店", store: "门店", soldOut: "售罄", lowSkus: "低库存", requests: "补货单",
      transfers: "调拨", waste: "损耗率", alerts: "提醒", noAlerts: "暂无提醒",
      accept: "接受", decline: "拒绝", dispatch: "发出", receive: "收货", cancel: "取消",
      stocktake: "盘点", count: "盘点", qty: "数量", save: "保存", reason: "原因",
      wasteTitle: "记录损耗", record: "记录", spoiled: "变质", dropped: "掉落",
      expired: "过期", equipment_failure: "设备故障", eightySix: "停售",
      endOfService: "至营业结束", oneHour: "一小时", untilTime: "直到",
      release: "恢复", pending: "发送中…", confirmed: "完成", refused: "被拒绝",
      queued: "离线：{n} 个操作等待中，恢复连接后发送",
      sending: "{n} 个操作发送中", noRequests: "暂无补货单", noTransfers: "暂无调拨",
      from: "从", to: "到", deliveries: "到货", today: "今日", raised: "触发", cleared: "解除",
      nothing: "暂无数据", open: "打开", salesPerHour: "每小时售出份数", wasteByReason: "按原因损耗",
      offlineDevices: "离线设备", delivery: "收货", reference: "送货单或补货单号",
      variance: "自上次盘点以来的用量差异", theoretical: "理论用量", actual: "实际用量",
      unexplained: "无法解释", share: "占比", since: "起始", liveNow: "实时（电子秤）", wasted: "损耗",
      slowMovers: "慢动销物料：少备货", cover: "可用天数", suggestedPar: "建议标准库存", perDay: "日均用量",
      faults: "设备故障", discardStock: "丢弃库存", keepStock: "保留", atRisk: "有风险",
      promotions: "促销", noPromotions: "暂无促销", planPromotion: "计划促销",
      promotionId: "促销编号", starts: "开始", ends: "结束", portionsPerDay: "每店每日份数",
      uplift: "× 平时日销量", plan: "计划", callOff: "取消促销", coverage: "覆盖率", need: "需求",
      onHand: "现有", due: "在途", ready: "就绪", at_risk: "有风险", short: "不足", scheduled: "已计划",
      running: "进行中", ended: "已结束", cancelled: "已取消", earlyLine: "提前补货单",
      transferAsked: "已申请调拨",
    },
  };
  const w = (key) => WORDS[lang][key] || WORDS.en[key] || key;

  // ------------------------------------------------------------ elements
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Store-local clock time of an RFC 3339 stamp (or now).
  // A stamp as the store's local date and time, `MM-DD HH:MM`.
  function dayAndClock(stamp) {
    const t = Date.parse(stamp);
    if (Number.isNaN(t)) return "";
    return new Date(t + offsetMinutes * 60000).toISOString().slice(5, 16).replace("T", " ");
  }

  function clock(stamp, seconds) {
    const t = stamp ? Date.parse(stamp) : Date.now();
    if (Number.isNaN(t)) return "";
    const local = new Date(t + offsetMinutes * 60000);
    const pad = (n) => String(n).padStart(2, "0");
    const hm = pad(local.getUTCHours()) + ":" + pad(local.getUTCMinutes());
    return seconds ? hm + ":" + pad(local.getUTCSeconds()) : hm;
  }

  // A quantity in a SKU's base unit, the way people read it.
  function quantity(qty, unit) {
    if (unit === "g" && Math.abs(qty) >= 1000) return (qty / 1000).toLocaleString(lang) + " kg";
    if (unit === "ml" && Math.abs(qty) >= 1000) return (qty / 1000).toLocaleString(lang) + " l";
    return Number(qty).toLocaleString(lang) + " " + (unit === "pcs" && lang === "zh" ? "个" : unit);
  }

  // ------------------------------------------------------------ documents
  const docs = new Map();
  let lastUpdate = null;

  function keep(topic, doc) {
    if (doc === null) {
      docs.delete(topic);
      return;
    }
    const held = docs.get(topic);
    if (held && typeof held.rev === "number" && typeof doc.rev === "number" && doc.rev < held.rev) return;
    docs.set(topic, doc);
  }

  function under(pattern) {
    const re = new RegExp("^" + pattern.split("+").map((p) => p.replace(/[.*?^${}()|[\]\\]/g, "\\$&")).join("[^/]+") + "$");
    return [...docs.entries()].filter(([t]) => re.test(t)).map(([, d]) => d);
  }

  function catalogOf(s) {
    return docs.get("stores/" + s + "/catalog") || { dishes: [], skus: [], name: s };
  }
  const skuName = (s, sku) => (catalogOf(s).skus.find((x) => x.sku === sku) || {}).name || sku;
  const dishName = (s, dish) => (catalogOf(s).dishes.find((x) => x.dish === dish) || {}).name || dish;

  // ------------------------------------------------------------ alerts
  const alerts = [];
  function keepAlert(alert) {
    const at = alerts.findIndex((a) => a.id === alert.id);
    // An alert is raised once and cleared once: a record read before its
    // clearing never raises it again.
    if (at >= 0 && alerts[at].state === "cleared" && alert.state !== "cleared") return;
    if (at >= 0) alerts.splice(at, 1);
    alerts.unshift(alert);
    alerts.length = Math.min(alerts.length, 30);
  }

  // ------------------------------------------------------------ taps
  const queueKey = "dishsync-taps-" + user;
  const outcomes = new Map(); // id → {state, message, label}
  function queued() {
    try {
      return JSON.parse(localStorage.getItem(queueKey) || "[]");
    } catch (e) {
      return [];
    }
  }
  function setQueued(list) {
    localStorage.setItem(queueKey, JSON.stringify(list));
  }
  let tapSeq = 0;
  function newId() {
    tapSeq += 1;
    const random = Math.floor(Math.random() * 1e9).toString(36);
    return user + "-" + Date.now().toString(36) + "-" + tapSeq + random;
  }

  // A tap: one input, sent now or queued. The same `key` while pending is
  // the same tap (a double tap sends one input).
  function tap(key, label, topic, input) {
    const list = queued();
    if (list.some((t) => t.key === key)) return;
    const id = newId();
    const tapped = { key, label, topic, input: Object.assign({ id }, input) };
    list.push(tapped);
    setQueued(list);
    outcomes.set(key, { state: "pending", label });
    render();
    send(tapped);
  }

  let online = true;
  async function send(tapped) {
    let answer;
    try {
      answer = await fetch("/act/" + tapped.topic, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(tapped.input),
        credentials: "same-origin",
      });
    } catch (e) {
      online = false;
      showQueue();
      return;
    }
    if (answer.status === 503 || answer.status === 429) {
      online = false;
      showQueue();
      return;
    }
    let result = {};
    try {
      result = await answer.json();
    } catch (e) {
      result = {};
    }
    setQueued(queued().filter((t) => t.input.id !== tapped.input.id));
    if (answer.ok) {
      outcomes.set(tapped.key, { state: "confirmed", label: tapped.label });
    } else {
      outcomes.set(tapped.key, { state: "refused", label: tapped.label, message: result.error || String(answer.status) });
    }
    showQueue();
    render();
  }

  function flush() {
    online = true;
    for (const t of queued()) send(t);
    showQueue();
  }

  function showQueue() {
    if (!queueBox) return;
    const n = queued().length;
    if (n === 0) {
      queueBox.hidden = true;
      return;
    }
    queueBox.hidden = false;
    queueBox.textContent = w(online ? "sending" : "queued").replace("{n}", n);
  }

  function outcome(key) {
    const o = outcomes.get(key);
    if (!o) return null;
    const text = o.state === "refused" ? w("refused") + ": " + o.message : w(o.state);
    return el("span", { class: "outcome " + o.state, dataset: { key } }, text);
  }

  function button(key, label, topic, input, extra) {
    const pending = queued().some((t) => t.key === key);
    return el(
      "button",
      Object.assign({ type: "button", class: "tap", disabled: pending, dataset: { key }, onclick: () => tap(key, label, topic, input()) }, extra || {}),
      label
    );
  }

  // ------------------------------------------------------------ views
  const at = () => new Date().toISOString();

  function tableOf(heads, rows) {
    return el("table", {}, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))), el("tbody", {}, rows));
  }

  function statusCell(state) {
    return el("span", { class: "state " + state }, w(state));
  }

  function levelsTable() {
    const levels = under("stores/" + store + "/stock/+/level").sort((a, b) => a.sku.localeCompare(b.sku));
    return tableOf(
      [w("sku"), w("level"), w("reorder"), w("par"), w("state")],
      levels.map((l) =>
        el("tr", { dataset: { sku: l.sku } }, el("td", {}, skuName(store, l.sku)), el("td", { class: "num" }, quantity(l.qty, l.unit)),
          el("td", { class: "num" }, quantity(l.reorder_point, l.unit)), el("td", { class: "num" }, quantity(l.par, l.unit)),
          el("td", {}, statusCell(l.state), l.stale ? el("span", { class: "stale" }, " " + w("stale")) : null,
            l.at_risk ? el("span", { class: "at-risk" }, " " + w("atRisk")) : null))
      )
    );
  }

  function dishesOf() {
    const order = new Map(catalogOf(store).dishes.map((d, i) => [d.dish, i]));
    return under("stores/" + store + "/dishes/+/availability").sort((a, b) => (order.get(a.dish) ?? 1e9) - (order.get(b.dish) ?? 1e9));
  }

  function dishesTable() {
    return tableOf(
      [w("dish"), w("status"), w("portions"), w("limited"), w("sellout")],
      dishesOf().map((d) =>
        el("tr", { dataset: { dish: d.dish } }, el("td", {}, dishName(store, d.dish)), el("td", {}, statusCell(d.status)),
          el("td", { class: "num portions" }, d.portions), el("td", {}, d.limited_by ? skuName(store, d.limited_by) : ""),
          el("td", {}, d.sellout_eta ? clock(d.sellout_eta) : ""))
      )
    );
  }

  function alertFeed() {
    const list = alerts.filter((a) => a.state === "raised" || a.fresh);
    return el("section", { class: "alerts", "aria-label": w("alerts") }, el("h2", {}, w("alerts")),
      list.length === 0 ? el("p", { class: "empty" }, w("noAlerts")) :
        el("ul", {}, list.map((a) => el("li", { class: "alert " + a.state }, el("time", {}, clock(a.at)), " ", a.message))));
  }

  // ------------------------------------------------------------ curves
  const SVG = "http://www.w3.org/2000/svg";
  function svg(width, height, label) {
    const node = document.createElementNS(SVG, "svg");
    node.setAttribute("viewBox", "0 0 " + width + " " + height);
    node.setAttribute("class", "chart");
    node.setAttribute("role", "img");
    node.setAttribute("aria-label", label);
    return node;
  }
  function shape(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  let today = null;
  let todayAt = 0;
  let curveSku = null;
  async function loadToday() {
    if (view !== "store" || !user) return;
    todayAt = Date.now();
    try {
      const answer = await fetch("/app/stores/" + encodeURIComponent(store) + "/today", { credentials: "same-origin" });
      if (answer.ok) {
        today = await answer.json();
        render();
      }
    } catch (e) {
      // Tried again with the next change.
    }
  }

  // A SKU's level over the day as steps, its reorder point dashed.
  function levelCurve() {
    const skus = today ? Object.keys(today.levels).sort() : [];
    if (skus.length === 0) return el("p", { class: "empty" }, w("nothing"));
    if (!curveSku || !skus.includes(curveSku)) {
      const low = under("stores/" + store + "/stock/+/level").find((l) => l.state !== "ok");
      curveSku = low ? low.sku : skus[0];
    }
    const curve = today.levels[curveSku];
    const levelDoc = docs.get("stores/" + store + "/stock/" + curveSku + "/level");
    const until = Math.min(Date.parse(today.to), Date.now());
    const points = curve.points.map(([t, q]) => [Date.parse(t), q]);
    // From half an hour before the day's first change (not from midnight).
    const firstChange = (points[1] || points[0] || [until])[0];
    const from = Math.max(Date.parse(today.from), firstChange - 1800000);
    for (const p of points) p[0] = Math.max(p[0], from);
    points.push([until, levelDoc ? levelDoc.qty : points.length ? points[points.length - 1][1] : 0]);
    const top = Math.max(1, ...points.map((p) => p[1]), levelDoc ? levelDoc.par : 0);
    const [W, H, L] = [600, 160, 40];
    const x = (t) => L + ((t - from) / Math.max(1, until - from)) * (W - L - 10);
    const y = (q) => H - 20 - (Math.max(0, q) / top) * (H - 30);
    // Steps: along at the level, then up or down at each change.
    const [first, ...rest] = points;
    let d = "M" + x(first[0]).toFixed(1) + " " + y(first[1]).toFixed(1);
    for (const [t, q] of rest) d += " H" + x(t).toFixed(1) + " V" + y(q).toFixed(1);
    const chart = svg(W, H, w("level") + " " + skuName(store, curveSku));
    chart.append(shape("path", { d, class: "line" }));
    if (levelDoc) {
      chart.append(shape("line", { x1: L, x2: W - 10, y1: y(levelDoc.reorder_point), y2: y(levelDoc.reorder_point), class: "reorder" }));
      chart.append(shape("text", { x: 0, y: y(levelDoc.reorder_point) + 4 }, quantity(levelDoc.reorder_point, curve.unit)));
    }
    chart.append(shape("text", { x: 0, y: 12 }, quantity(top, curve.unit)));
    chart.append(shape("text", { x: L, y: H - 4 }, clock(new Date(from).toISOString())));
    chart.append(shape("text", { x: W - 50, y: H - 4 }, clock(new Date(until).toISOString())));
    const pick = el("select", { "aria-label": w("sku"), class: "curve-sku", onchange: (e) => { curveSku = e.target.value; render(); } },
      skus.map((s) => el("option", { value: s, selected: s === curveSku }, skuName(store, s))));
    return [pick, chart];
  }

  function salesCurve() {
    const hours = today ? today.sales_per_hour : [];
    if (!hours.some((n) => n > 0)) return el("p", { class: "empty" }, w("nothing"));
    const [W, H] = [600, 140];
    const top = Math.max(...hours);
    const chart = svg(W, H, w("salesPerHour"));
    hours.forEach((n, h) => {
      const height = (n / top) * (H - 30);
      chart.append(shape("rect", { x: h * 25 + 2, y: H - 18 - height, width: 20, height: Math.max(0, height), class: "sales" }));
      if (h % 3 === 0) chart.append(shape("text", { x: h * 25 + 2, y: H - 4 }, String(h).padStart(2, "0")));
      if (n > 0) chart.append(shape("text", { x: h * 25 + 2, y: H - 22 - height }, String(n)));
    });
    return chart;
  }

  function wasteCurve() {
    const rows = [];
    for (const [sku, day] of Object.entries((today && today.waste) || {})) {
      for (const [reason, qty] of Object.entries(day.by_reason)) rows.push([sku, reason, qty, day.unit]);
    }
    if (rows.length === 0) return el("p", { class: "empty" }, w("nothing"));
    const top = Math.max(...rows.map((r) => r[2]));
    const chart = svg(600, 22 * rows.length + 4, w("wasteByReason"));
    rows.forEach(([sku, reason, qty, unit], i) => {
      chart.append(shape("rect", { x: 260, y: i * 22 + 4, height: 14, width: Math.max(1, Math.round((qty / top) * 320)), class: "waste" }));
      chart.append(shape("text", { x: 0, y: i * 22 + 16 }, skuName(store, sku) + " · " + w(reason) + " · " + quantity(qty, unit)));
    });
    return chart;
  }

  // Today's waste of a store's summary: as a share of ingredient cost, with
  // what it cost, when its SKUs have costs; else the mean of the SKUs' ratios.
  function money(amount, currency) {
    if (!currency) return amount.toFixed(2);
    try {
      return new Intl.NumberFormat(lang === "zh" ? "zh-CN" : "en", { style: "currency", currency }).format(amount);
    } catch (_) {
      return amount.toFixed(2) + " " + currency;
    }
  }
  const wasteShare = (s) => (s.cost ? s.cost.share : s.waste_ratio);
  const wasteText = (s) => (wasteShare(s) * 100).toFixed(1) + "%" + (s.cost ? " · " + money(s.cost.waste, s.cost.currency) : "");

  function storeView() {
    const summary = docs.get("hq/stores/" + store + "/summary");
    const ratio = summary ? " " + wasteText(summary) : "";
    return [
      alertFeed(),
      el("section", {}, el("h2", {}, w("dish")), dishesTable()),
      el("section", {}, el("h2", {}, w("sku")), levelsTable()),
      el("section", { class: "curves" }, el("h2", {}, w("today") + " · " + w("level")), levelCurve()),
      el("section", { class: "curves" }, el("h2", {}, w("today") + " · " + w("salesPerHour")), salesCurve()),
      el("section", { class: "curves" }, el("h2", {}, w("today") + " · " + w("wasteByReason") + " · " + w("waste") + ratio), wasteCurve()),
    ];
  }

  function transferCard(t) {
    const giving = t.from === store;
    const actions = [];
    if (giving && t.state === "proposed") actions.push("accept", "decline");
    if (giving && t.state === "accepted") actions.push("dispatch");
    if (!giving && t.state === "dispatched") actions.push("receive");
    if (["proposed", "accepted", "requested"].includes(t.state)) actions.push("cancel");
    const unit = t.unit;
    return el("li", { class: "card transfer", dataset: { transfer: t.id } },
      el("div", {}, el("strong", {}, skuName(store, t.sku)), " ", quantity(t.qty, unit), " ",
        giving ? w("to") + " " + t.to : w("from") + " " + t.from),
      el("div", { class: "muted" }, statusCell(t.state), " ", t.reason || ""),
      el("div", { class: "actions" }, actions.map((a) => {
        const key = "transfer-" + t.id + "-" + a;
        return button(key, w(a), "stores/" + store + "/transfers/" + t.id + "/" + a, () => ({ by: user }), { dataset: { key, action: a } });
      })),
      // What became of each tap on it, whichever buttons its state shows now.
      ["accept", "decline", "dispatch", "receive", "cancel"].map((a) => outcome("transfer-" + t.id + "-" + a)));
  }

  // Each SKU's usage variance: its last period between two counts, or the
  // open one as far as its scale's latest reading.
  function varianceTable() {
    const rows = under("stores/" + store + "/stock/+/variance").sort((a, b) => a.sku.localeCompare(b.sku))
      .flatMap((v) => [[v.last, ""], [v.live, w("liveNow")]].filter(([p]) => p).map(([p, note]) =>
        el("tr", { dataset: { sku: v.sku, period: note ? "live" : "last" } },
          el("td", {}, skuName(store, v.sku), note ? " · " + note : ""),
          el("td", {}, dayAndClock(p.from)),
          el("td", { class: "num" }, quantity(p.theoretical, v.unit)),
          el("td", { class: "num" }, quantity(p.actual, v.unit)),
          el("td", { class: "num" }, quantity(p.waste, v.unit)),
          el("td", { class: "num unexplained" }, quantity(p.unexplained, v.unit)),
          el("td", { class: "num" }, p.share === undefined ? "—" : (p.share * 100).toFixed(1) + "%"))));
    if (rows.length === 0) return el("p", { class: "empty" }, w("nothing"));
    return tableOf([w("sku"), w("since"), w("theoretical"), w("actual"), w("wasted"), w("unexplained"), w("share")], rows);
  }

  function managerView() {
    const transfers = under("stores/" + store + "/transfers/+").sort((a, b) => String(b.updated_at).localeCompare(String(a.updated_at)));
    const requests = under("stores/" + store + "/replenishment/+");
    const levels = under("stores/" + store + "/stock/+/level").sort((a, b) => a.sku.localeCompare(b.sku));
    const countForm = el("form", { class: "stocktake", onsubmit: (e) => {
      e.preventDefault();
      const sku = e.target.elements.sku.value;
      const qty = Number(e.target.elements.qty.value);
      const unit = (levels.find((l) => l.sku === sku) || {}).unit;
      tap("count-" + sku, w("count") + " " + skuName(store, sku), "stores/" + store + "/stock/" + sku + "/events",
        { kind: "count", qty, unit, at: at(), device: user });
    } },
    el("select", { name: "sku", "aria-label": w("sku") }, levels.map((l) => el("option", { value: l.sku }, skuName(store, l.sku)))),
    el("input", { name: "qty", type: "number", min: "0", step: "any", required: true, "aria-label": w("qty") }),
    el("button", { type: "submit" }, w("save")),
    levels.map((l) => outcome("count-" + l.sku)));
    return [
      alertFeed(),
      el("section", {}, el("h2", {}, w("transfers")),
        transfers.length === 0 ? el("p", { class: "empty" }, w("noTransfers")) : el("ul", { class: "cards" }, transfers.map(transferCard))),
      el("section", {}, el("h2", {}, w("requests")),
        requests.length === 0 ? el("p", { class: "empty" }, w("noRequests")) :
          el("ul", { class: "cards" }, requests.map((r) => el("li", { class: "card" }, el("strong", {}, r.id), " ", statusCell(r.state),
            el("ul", {}, r.lines.map((l) => el("li", {}, skuName(store, l.sku), " ", quantity(l.qty, l.unit)))))))),
      storePromotions(),
      el("section", {}, el("h2", {}, w("stocktake")), countForm),
      el("section", { class: "variance" }, el("h2", {}, w("variance")), varianceTable()),
    ];
  }

  // A coverage as a percentage, or a dash when nothing is needed.
  const percent = (x) => (x === undefined || x === null ? "—" : Math.round(x * 100) + "%");

  // The store's readiness for each promotion it is in, per ingredient.
  function storePromotions() {
    const shown = under("stores/" + store + "/promotions/+").sort((a, b) => String(a.start).localeCompare(String(b.start)));
    if (shown.length === 0) return null;
    return el("section", { class: "promotions" }, el("h2", {}, w("promotions")),
      el("ul", { class: "cards" }, shown.map((p) => el("li", { class: "card promotion", dataset: { promotion: p.promotion } },
        el("strong", {}, dishName(store, p.dish)), " ", statusCell(p.status), " ", statusCell(p.state), " ",
        el("span", { class: "muted" }, dayAndClock(p.start) + " → " + dayAndClock(p.end) + " · " + p.portions_per_day + " " + w("portions")),
        tableOf([w("sku"), w("need"), w("onHand"), w("due"), w("coverage")], p.ingredients.map((c) =>
          el("tr", { dataset: { sku: c.sku }, class: c.sku === p.limiting ? "limiting" : null },
            el("td", {}, skuName(store, c.sku)), el("td", { class: "num" }, quantity(c.need, c.unit)),
            el("td", { class: "num" }, quantity(c.on_hand, c.unit)), el("td", { class: "num" }, quantity(c.due, c.unit)),
            el("td", { class: "num coverage" }, percent(c.coverage))))),
        p.request ? el("p", { class: "muted" }, w("earlyLine") + " " + p.request) : null,
        p.transfer ? el("p", { class: "muted" }, w("transferAsked") + " " + p.transfer) : null))));
  }

  function endOfService() {
    const now = new Date(Date.now() + offsetMinutes * 60000);
    now.setUTCHours(23, 59, 0, 0);
    return new Date(now.getTime() - offsetMinutes * 60000).toISOString();
  }

  function kitchenView() {
    const levels = under("stores/" + store + "/stock/+/level").sort((a, b) => a.sku.localeCompare(b.sku));
    const tiles = dishesOf().map((d) => {
      const topic = "stores/" + store + "/dishes/" + d.dish + "/override";
      const key86 = "86-" + d.dish;
      const keyRelease = "release-" + d.dish;
      const untilInput = el("input", { type: "time", "aria-label": w("untilTime"), class: "until" });
      return el("li", { class: "tile " + d.status, dataset: { dish: d.dish } },
        el("div", { class: "name" }, dishName(store, d.dish)),
        el("div", { class: "portions" }, d.portions + " " + w("portions")),
        statusCell(d.status),
        d.override ? [
          el("div", { class: "muted" }, w("eightySix") + (d.override.until ? " → " + clock(d.override.until) : "")),
          button(keyRelease, w("release"), topic, () => ({ status: "auto", by: user }), { class: "tap release" }),
        ] : [
          el("div", { class: "actions" },
            button(key86, w("eightySix") + " · " + w("endOfService"), topic, () => ({ status: "sold_out", by: user, until: endOfService() }), { class: "tap eighty-six" }),
            button(key86 + "-hour", w("eightySix") + " · " + w("oneHour"), topic, () => ({ status: "sold_out", by: user, until: new Date(Date.now() + 3600000).toISOString() })),
            untilInput,
            button(key86 + "-until", w("eightySix") + " · " + w("untilTime"), topic, () => {
              const [h, m] = (untilInput.value || "23:59").split(":").map(Number);
              const local = new Date(Date.now() + offsetMinutes * 60000);
              local.setUTCHours(h, m, 0, 0);
              let until = local.getTime() - offsetMinutes * 60000;
              if (until <= Date.now()) until += 86400000;
              return { status: "sold_out", by: user, until: new Date(until).toISOString() };
            })),
        ],
        // What became of each tap on it, whichever buttons it shows now.
        [key86, key86 + "-hour", key86 + "-until", keyRelease].map(outcome),
      );
    });
    const reasons = ["spoiled", "dropped", "expired", "equipment_failure"];
    const wasteForm = el("form", { class: "waste", onsubmit: (e) => {
      e.preventDefault();
      const f = e.target.elements;
      const sku = f.sku.value;
      const unit = (levels.find((l) => l.sku === sku) || {}).unit;
      tap("waste-" + sku + "-" + Date.now(), w("wasteTitle"), "stores/" + store + "/stock/" + sku + "/events",
        { kind: "waste", qty: Number(f.qty.value), unit, at: at(), device: user, reason: f.reason.value });
      e.target.reset();
    } },
    el("select", { name: "sku", "aria-label": w("sku") }, levels.map((l) => el("option", { value: l.sku }, skuName(store, l.sku)))),
    el("input", { name: "qty", type: "number", min: "0", step: "any", required: true, "aria-label": w("qty") }),
    el("select", { name: "reason", "aria-label": w("reason") }, reasons.map((r) => el("option", { value: r }, w(r)))),
    el("button", { type: "submit" }, w("record")));
    const recent = [...outcomes.entries()].filter(([k]) => k.startsWith("waste-")).slice(-3).map(([k]) => outcome(k));
    const requests = under("stores/" + store + "/replenishment/+").filter((r) => r.state === "shipped" || r.state === "acknowledged" || r.state === "open");
    const deliveries = requests.map((r) => el("li", { class: "card" }, el("strong", {}, r.id), " ", statusCell(r.state),
      el("ul", {}, r.lines.filter((l) => !l.received).map((l) => {
        const key = "receive-" + r.id + "-" + l.sku;
        return el("li", {}, skuName(store, l.sku), " ", quantity(l.qty, l.unit), " ",
          button(key, w("receive"), "stores/" + store + "/stock/" + l.sku + "/events",
            () => ({ kind: "receive", qty: l.qty, unit: l.unit, at: at(), device: user, ref: r.id })), outcome(key));
      }))));
    const receiveForm = el("form", { class: "receive", onsubmit: (e) => {
      e.preventDefault();
      const f = e.target.elements;
      const sku = f.sku.value;
      const unit = (levels.find((l) => l.sku === sku) || {}).unit;
      const input = { kind: "receive", qty: Number(f.qty.value), unit, at: at(), device: user };
      if (f.ref.value.trim()) input.ref = f.ref.value.trim();
      tap("delivery-" + sku + "-" + Date.now(), w("delivery"), "stores/" + store + "/stock/" + sku + "/events", input);
      e.target.reset();
    } },
    el("select", { name: "sku", "aria-label": w("sku") }, levels.map((l) => el("option", { value: l.sku }, skuName(store, l.sku)))),
    el("input", { name: "qty", type: "number", min: "0", step: "any", required: true, "aria-label": w("qty") }),
    el("input", { name: "ref", maxlength: "256", placeholder: w("reference"), "aria-label": w("reference") }),
    el("button", { type: "submit" }, w("receive")));
    const received = [...outcomes.entries()].filter(([k]) => k.startsWith("delivery-")).slice(-3).map(([k]) => outcome(k));
    // A fridge or freezer in fault: discard its stock, or keep it.
    const faults = alerts.filter((a) => a.kind === "equipment_fault" && a.state === "raised" && a.device).map((a) => {
      const probe = "stores/" + store + "/probes/" + a.device + "/";
      const decide = (action, label) => {
        const key = action + "-" + a.id;
        return [button(key, label, probe + action, () => ({ by: user })), outcome(key)];
      };
      return el("li", { class: "card fault", dataset: { device: a.device } }, el("strong", {}, a.device), " ", a.message, " ",
        ...decide("discard", w("discardStock")), " ", ...decide("keep", w("keepStock")));
    });
    return [
      faults.length ? el("section", { class: "faults" }, el("h2", {}, w("faults")), el("ul", { class: "cards" }, faults)) : null,
      el("ul", { class: "tiles kitchen" }, tiles),
      el("section", {}, el("h2", {}, w("wasteTitle")), wasteForm, recent),
      el("section", {}, el("h2", {}, w("delivery")), receiveForm, received),
      requests.length ? el("section", {}, el("h2", {}, w("deliveries")), el("ul", { class: "cards" }, deliveries)) : null,
    ];
  }

  function floorView() {
    return el("ul", { class: "tiles floor" }, dishesOf().map((d) =>
      el("li", { class: "tile " + d.status, dataset: { dish: d.dish } },
        el("div", { class: "name" }, dishName(store, d.dish)),
        el("div", { class: "portions" }, d.status === "sold_out" ? w("sold_out") : String(d.portions)))));
  }

  function hqView() {
    const summaries = under("hq/stores/+/summary");
    const offline = (s) => [...docs.entries()].filter(([t, d]) => t.startsWith("stores/" + s + "/devices/") && d === "offline").length;
    const badness = (s) => s.sold_out.length * 100 + offline(s.store) * 50 + s.low.length * 10 + s.open_requests.length + s.open_transfers.length + wasteShare(s);
    summaries.sort((a, b) => badness(b) - badness(a));
    return [el("section", {}, el("h2", {}, w("stores")), tableOf(
      [w("store"), w("soldOut"), w("lowSkus"), w("requests"), w("transfers"), w("waste"), w("offlineDevices")],
      summaries.map((s) => el("tr", { dataset: { store: s.store } },
        el("td", {}, el("a", { href: "/stores/" + encodeURIComponent(s.store) }, catalogOf(s.store).name || s.store)),
        el("td", { class: "num" }, s.sold_out.length), el("td", { class: "num" }, s.low.length),
        el("td", { class: "num" }, s.open_requests.length), el("td", { class: "num" }, s.open_transfers.length),
        el("td", { class: "num waste" }, wasteText(s)),
        el("td", { class: "num offline" }, offline(s.store)))))),
      hqPromotions(),
      el("section", { class: "slow-movers" }, el("h2", {}, w("slowMovers")), slowMoversTable(summaries))];
  }

  // What the promotion form holds, kept across re-renders.
  const promotionDraft = {};
  let lastPlanned = null;

  // A `datetime-local` value (store-local) as an RFC 3339 stamp.
  const fromLocal = (value) => new Date(Date.parse(value + ":00Z") - offsetMinutes * 60000).toISOString();

  // Every promotion with each store's readiness, worst first; a form to
  // plan one; a promotion not over can be called off.
  function hqPromotions() {
    const catalogs = under("stores/+/catalog").sort((a, b) => a.store.localeCompare(b.store));
    const dishes = new Map();
    for (const c of catalogs) for (const d of c.dishes) if (!dishes.has(d.dish)) dishes.set(d.dish, d.name);
    const promotions = under("hq/promotions/+").sort((a, b) => String(a.start).localeCompare(String(b.start)));
    const cards = promotions.map((p) => {
      const key = "promotion-cancel-" + p.id;
      const live = p.state === "scheduled" || p.state === "running";
      return el("li", { class: "card promotion", dataset: { promotion: p.id } },
        el("strong", {}, p.id), " · ", dishes.get(p.dish) || p.dish, " ", statusCell(p.state), " ",
        el("span", { class: "muted" }, dayAndClock(p.start) + " → " + dayAndClock(p.end) + " · " +
          (p.uplift !== undefined ? "× " + p.uplift : p.portions_per_day + " " + w("portions"))),
        tableOf([w("store"), w("status"), w("limited"), w("coverage")], p.stores.map((s) =>
          el("tr", { dataset: { store: s.store } },
            el("td", {}, el("a", { href: "/stores/" + encodeURIComponent(s.store) + "/manager" }, catalogOf(s.store).name || s.store)),
            el("td", {}, statusCell(s.status)), el("td", {}, s.limiting ? skuName(s.store, s.limiting) : "—"),
            el("td", { class: "num coverage" }, percent(s.coverage))))),
        live ? el("div", { class: "actions" },
          button(key, w("callOff"), "hq/promotions/" + p.id + "/cancel", () => ({ by: user }), { class: "tap call-off" })) : null,
        outcome(key));
    });
    const d = promotionDraft;
    const keepDraft = (e) => {
      const form = e.currentTarget;
      const f = form.elements;
      Object.assign(d, { id: f.promotion.value, dish: f.dish.value, start: f.start.value, end: f.end.value,
        demand: f.demand.value, amount: f.amount.value,
        stores: [...form.querySelectorAll("input[name=store]")].filter((x) => x.checked).map((x) => x.value) });
    };
    const form = el("form", { class: "plan-promotion", oninput: keepDraft, onchange: keepDraft, onsubmit: (e) => {
      e.preventDefault();
      keepDraft(e);
      const input = { dish: d.dish, stores: d.stores, start: fromLocal(d.start), end: fromLocal(d.end), by: user };
      input[d.demand === "uplift" ? "uplift" : "portions_per_day"] = Number(d.amount);
      tap("promotion-plan-" + d.id, w("planPromotion"), "hq/promotions/" + d.id + "/plan", input);
      // Sent: the form starts again, and what became of it shows below.
      lastPlanned = d.id;
      for (const k of Object.keys(d)) delete d[k];
      document.activeElement.blur();
      render();
    } },
    el("label", {}, w("promotionId"), el("input", { name: "promotion", required: true, maxlength: "64", pattern: "[A-Za-z0-9._:\\-]+", value: d.id || "" })),
    el("label", {}, w("dish"), el("select", { name: "dish" }, [...dishes].map(([id, name]) =>
      el("option", { value: id, selected: d.dish === id }, name)))),
    el("fieldset", {}, el("legend", {}, w("stores")), catalogs.map((c) => el("label", { class: "check" },
      el("input", { type: "checkbox", name: "store", value: c.store, checked: d.stores ? d.stores.includes(c.store) : true }), c.name || c.store))),
    el("label", {}, w("starts"), el("input", { name: "start", type: "datetime-local", required: true, value: d.start || "" })),
    el("label", {}, w("ends"), el("input", { name: "end", type: "datetime-local", required: true, value: d.end || "" })),
    el("label", {}, el("input", { name: "amount", type: "number", min: "0", step: "any", required: true, value: d.amount || "", "aria-label": w("qty") }),
      el("select", { name: "demand" },
        el("option", { value: "portions_per_day", selected: d.demand !== "uplift" }, w("portionsPerDay")),
        el("option", { value: "uplift", selected: d.demand === "uplift" }, w("uplift")))),
    el("button", { type: "submit" }, w("plan")),
    lastPlanned ? outcome("promotion-plan-" + lastPlanned) : null);
    return el("section", { class: "promotions" }, el("h2", {}, w("promotions")),
      cards.length === 0 ? el("p", { class: "empty" }, w("noPromotions")) : el("ul", { class: "cards" }, cards),
      el("h3", {}, w("planPromotion")), form);
  }

  // Every store's slow movers, from their summaries.
  function slowMoversTable(summaries) {
    const rows = summaries.flatMap((s) => (s.slow_movers || []).map((m) => {
      const unit = (catalogOf(s.store).skus || []).find((k) => k.sku === m.sku);
      const u = unit ? unit.unit : "";
      return el("tr", { dataset: { store: s.store, sku: m.sku } },
        el("td", {}, catalogOf(s.store).name || s.store), el("td", {}, skuName(s.store, m.sku)),
        el("td", { class: "num" }, quantity(m.level, u)), el("td", { class: "num" }, quantity(Math.round(m.usage_per_day), u)),
        el("td", { class: "num" }, m.cover_days === undefined ? "∞" : m.cover_days.toFixed(1)),
        el("td", { class: "num" }, quantity(m.par, u)), el("td", { class: "num suggested" }, quantity(m.suggested_par, u)),
        el("td", { class: "num" }, quantity(m.waste, u)));
    }));
    if (rows.length === 0) return el("p", { class: "empty" }, w("nothing"));
    return tableOf([w("store"), w("sku"), w("level"), w("perDay"), w("cover"), w("par"), w("suggestedPar"), w("wasted")], rows);
  }

  const VIEWS = { store: storeView, manager: managerView, kitchen: kitchenView, floor: floorView, hq: hqView };

  let scheduled = false;
  function render() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      const focused = document.activeElement && document.activeElement.closest("form") ? document.activeElement : null;
      if (focused) return; // never re-render under a person typing
      main.replaceChildren(...[].concat((VIEWS[view] || floorView)()).filter(Boolean));
      main.dataset.rendered = String(docs.size);
    });
  }

  // ------------------------------------------------------------ live
  function setStatus(state) {
    if (!statusBox) return;
    statusBox.dataset.state = state;
    const last = lastUpdate ? " · " + w("last") + " " + clock(lastUpdate, true) : "";
    statusBox.textContent = w(state) + last;
  }

  let retryIn = 1000;
  function connect() {
    const path = view === "hq" ? "/live/hq" : "/live/stores/" + encodeURIComponent(store) + "/" + view;
    const source = new EventSource(path);
    source.addEventListener("doc", (e) => {
      const m = JSON.parse(e.data);
      if (m.topic.endsWith("/alerts")) {
        if (m.doc) keepAlert(Object.assign({ fresh: true }, m.doc));
      } else {
        keep(m.topic, m.doc);
      }
      lastUpdate = new Date().toISOString();
      setStatus("live");
      if (view === "store" && Date.now() - todayAt > 15000) loadToday();
      render();
    });
    source.addEventListener("ready", () => {
      retryIn = 1000;
      body.dataset.live = "ready";
      setStatus("live");
      flush();
      // Alerts are events: what was raised or cleared while the stream was
      // away comes from the store's record.
      loadAlerts();
      render();
    });
    source.onopen = () => setStatus("live");
    source.onerror = () => {
      body.dataset.live = "reconnecting";
      setStatus("reconnecting");
      // A browser gives up on a stream answered other than 200 (a broker
      // still starting): start a new one, waiting longer each time.
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, retryIn);
        retryIn = Math.min(retryIn * 2, 15000);
      }
    };
  }

  async function loadAlerts() {
    if (!store || !user || (view !== "store" && view !== "manager" && view !== "kitchen")) return;
    try {
      const answer = await fetch("/app/stores/" + encodeURIComponent(store) + "/alerts", { credentials: "same-origin" });
      if (!answer.ok) return;
      const record = await answer.json();
      for (const a of record.recent.slice().reverse()) keepAlert(a);
      render();
    } catch (e) {
      // The live stream brings the next ones.
    }
  }

  // A form left: what changed meanwhile is shown.
  main.addEventListener("focusout", () => setTimeout(render, 0));
  window.addEventListener("online", flush);
  window.addEventListener("offline", () => {
    online = false;
    showQueue();
  });
  for (const t of queued()) outcomes.set(t.key, { state: "pending", label: t.label });
  showQueue();
  connect();
  loadAlerts();
  loadToday();
  render();
})();
