// tinyfleet dashboard: SVG learning curve and bytes-per-round chart, refreshed while a run goes on,
// and live online state on the fleet page. Hand-written, no library, no network beyond this server.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 300, L = 64, R = 16, T = 16, B = 40;

  function el(name, attrs, text) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1048576).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1024).toFixed(0) + "K";
    return a >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString();
  }
  function frame(svg, xs, lo, hi, unit, band) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const x0 = xs.length ? xs[0] : 0, x1 = xs.length ? xs[xs.length - 1] : 1;
    const n = Math.max(1, xs.length);
    // band: one slot per round (bars stay inside the plot); else a continuous x axis.
    const sx = band ? (x) => L + (xs.indexOf(x) + 0.5) * (W - L - R) / n
                    : (x) => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (hi === lo ? 0.5 : 1 - (y - lo) / (hi - lo)) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const y = lo + (hi - lo) * i / 4, py = sy(y);
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: py, y2: py, class: "gridline"}));
      svg.appendChild(el("text", {x: L - 6, y: py + 4, "text-anchor": "end", class: "label"}, fmt(y) + (unit || "")));
    }
    svg.appendChild(el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}));
    svg.appendChild(el("line", {x1: L, x2: L, y1: T, y2: H - B, class: "axis"}));
    const step = Math.max(1, Math.ceil(xs.length / 8));
    xs.forEach((x, i) => {
      if (i % step === 0 || i === xs.length - 1)
        svg.appendChild(el("text", {x: sx(x), y: H - B + 16, "text-anchor": "middle", class: "label"}, String(x)));
    });
    svg.appendChild(el("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "label"}, "round"));
    return {sx, sy};
  }
  function lossChart(svg, p) {
    const series = [["loss", p.loss], ["train", p.train_loss]];
    const vals = [].concat(p.loss, p.train_loss).filter((v) => v !== null && isFinite(v));
    if (!vals.length) { frame(svg, p.round, 0, 1); svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "label"}, "no rounds yet")); return; }
    let lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.05; lo = Math.max(0, lo - pad); hi += pad;
    const f = frame(svg, p.round, lo, hi);
    for (const [cls, ys] of series) {
      let d = "";
      ys.forEach((y, i) => { if (y !== null && isFinite(y)) d += (d ? "L" : "M") + f.sx(p.round[i]).toFixed(1) + "," + f.sy(y).toFixed(1); });
      if (d) svg.appendChild(el("path", {d: d, class: cls, "data-points": String(ys.filter((y) => y !== null).length)}));
    }
    p.loss.forEach((y, i) => { if (y !== null && isFinite(y)) svg.appendChild(el("circle", {cx: f.sx(p.round[i]), cy: f.sy(y), r: 2.5, class: "pt"})); });
    svg.appendChild(el("text", {x: W - R, y: T + 4, "text-anchor": "end", class: "legend"}, "solid: loss (eval)  dashed: train loss"));
  }
  function bytesChart(svg, p) {
    const tot = p.bytes_up.map((u, i) => u + p.bytes_down[i]);
    const hi = Math.max(1, Math.max.apply(null, tot.concat([0])));
    const f = frame(svg, p.round, 0, hi * 1.05, "B", true);
    const n = Math.max(1, p.round.length), bw = Math.max(2, (W - L - R) / n * 0.7);
    p.round.forEach((x, i) => {
      const cx = f.sx(x), yu = f.sy(p.bytes_up[i]), yt = f.sy(tot[i]);
      svg.appendChild(el("rect", {x: cx - bw / 2, y: yu, width: bw, height: H - B - yu, class: "up"}));
      svg.appendChild(el("rect", {x: cx - bw / 2, y: yt, width: bw, height: yu - yt, class: "down"}));
    });
    svg.appendChild(el("text", {x: W - R, y: T + 4, "text-anchor": "end", class: "legend"}, "orange: up  blue: down"));
  }
  function drawRun(data) {
    lossChart(document.getElementById("loss-chart"), data.points);
    bytesChart(document.getElementById("bytes-chart"), data.points);
    const s = data.summary, state = document.getElementById("run-state"), prog = document.getElementById("run-progress");
    if (state) { state.textContent = s.state; state.className = "state " + s.state; }
    if (prog) prog.textContent = s.rounds_done + (s.rounds ? "/" + s.rounds : "");
  }
  const runData = document.getElementById("run-data");
  if (runData) {
    let data = JSON.parse(runData.textContent);
    drawRun(data);
    const url = "/api/runs/" + encodeURIComponent(data.summary.run_id);
    const poll = () => {
      if (data.summary.state === "finished") return;
      fetch(url).then((r) => r.ok ? r.json() : null).then((d) => { if (d) { data = d; drawRun(d); } })
        .finally(() => setTimeout(poll, 2000));
    };
    setTimeout(poll, 2000);
  }
  const devices = document.getElementById("devices");
  if (devices) {
    const rows = {};
    devices.querySelectorAll("tr[data-device]").forEach((tr) => { rows[tr.dataset.device] = tr; });
    const refresh = () => fetch("/api/devices").then((r) => r.ok ? r.json() : []).then((list) => {
      let online = 0;
      for (const d of list) {
        if (d.online) online++;
        const tr = rows[d.id];
        if (!tr) continue;
        const dot = tr.querySelector(".online .dot");
        dot.className = "dot " + (d.online ? "on" : "off");
        dot.textContent = d.online ? "online" : "offline";
        tr.querySelector(".seen").textContent = (d.last_seen || "-").slice(0, 19);
      }
      const c = document.getElementById("count-online");
      if (c) c.textContent = String(online);
    }).finally(() => setTimeout(refresh, 10000));
    setTimeout(refresh, 10000);
  }
})();
