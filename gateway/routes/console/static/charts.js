// What every console chart shares (uPlot): its width, colours, and x axes whose ticks read as what they are —
// a day ("Dec 6", UTC, as the ledger's days) or a clock time ("14:05") — spaced so that their labels never
// crowd, each tick at a whole data point. The labels drawn are kept in the chart box's data-x-ticks, the x range
// shown (seconds) in its data-x-range.
"use strict";
window.consoleCharts = (function () {
  const colors = ["#1f6feb", "#2da44e", "#d4a72c", "#cf222e", "#8250df", "#1b7c83"];
  const width = (box) => Math.max(280, box.clientWidth);
  const dayLabel = (t) => new Date(t * 1000).toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
  const timeLabel = (t) => new Date(t * 1000).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });

  // An x axis over the chart's points (seconds, evenly spaced), a tick every so many points, labelled by label().
  function axis(box, label, pixelsPerTick) {
    return {
      splits: (u) => {
        const x = u.data[0];
        const fits = Math.max(1, Math.floor(u.bbox.width / devicePixelRatio / pixelsPerTick));
        const step = Math.ceil(x.length / fits);
        return x.filter((_, i) => i % step === 0);
      },
      values: (u, splits) => {
        const labels = splits.map(label);
        box.dataset.xTicks = labels.join("|");
        return labels;
      },
    };
  }

  // A chart in box: options without width (taken from the box, and again when the window resizes).
  function draw(box, options, data) {
    const height = options.height || 240;
    const shown = (u) => { box.dataset.xRange = `${u.scales.x.min},${u.scales.x.max}`; };
    const plot = new uPlot({ width: width(box), ...options, height, hooks: { draw: [shown] } }, data, box);
    window.addEventListener("resize", () => plot.setSize({ width: width(box), height }));
    return plot;
  }

  // Days first..last (YYYY-MM-DD, inclusive) as seconds at each UTC midnight.
  function days(first, last) {
    const out = [];
    for (let t = Date.parse(first + "T00:00:00Z"); t <= Date.parse(last + "T00:00:00Z"); t += 864e5) out.push(t / 1000);
    return out;
  }

  return {
    colors,
    draw,
    days,
    // Day charts: a tick per day (or every few days), and half a day of room either side so that the first and
    // the last day (today) show whole.
    dayAxis: (box) => axis(box, dayLabel, 56),
    dayScale: (x) => ({ time: true, range: () => [x[0] - 43200, x[x.length - 1] + 43200] }),
    minuteAxis: (box) => axis(box, timeLabel, 60),
  };
})();
