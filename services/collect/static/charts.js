/** charts.js: a small line chart on <canvas>, drawn by hand so the pages fetch nothing from elsewhere. */

/** A "nice" axis maximum at or above `value` (1, 2 or 5 times a power of ten). */
function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
}

/**
 * Draw `lines` ([{values, color}], oldest value first, null for a gap) across the canvas, the
 * newest at the right edge and `slots` values wide, with a zero-based y axis labelled in `unit`.
 * Earlier lines are drawn wider, so a line hidden under a later one with the same values still shows.
 */
export function drawLines(canvas, lines, { slots, unit = "" }) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  const style = getComputedStyle(document.documentElement);
  const [muted, line] = ["--muted", "--line"].map((name) => style.getPropertyValue(name).trim());
  const top = 8;
  const bottom = height - 20;
  const right = width - 6;
  const peak = niceCeiling(Math.max(0, ...lines.flatMap((l) => l.values.filter((v) => v != null))));
  const labels = [0, 1, 2, 3, 4].map((i) => `${Number(((peak * i) / 4).toPrecision(3))}${unit}`);

  g.font = "11px system-ui, sans-serif";
  const left = Math.ceil(Math.max(...labels.map((l) => g.measureText(l).width))) + 10;
  g.fillStyle = muted;
  g.strokeStyle = line;
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = Math.round(bottom - ((bottom - top) * i) / 4) + 0.5;
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(right, y);
    g.stroke();
    g.fillText(labels[i], left - 6, y);
  }
  g.textAlign = "left";
  g.textBaseline = "alphabetic";
  g.fillText(`${slots} s ago`, left, height - 4);
  g.textAlign = "right";
  g.fillText("now", right, height - 4);

  const x = (i, n) => right - ((right - left) * (n - 1 - i)) / (slots - 1);
  const y = (v) => bottom - ((bottom - top) * v) / peak;
  g.lineJoin = "round";
  lines.forEach(({ values, color }, index) => {
    g.lineWidth = 1.5 + 1.5 * (lines.length - 1 - index);
    g.strokeStyle = color;
    g.beginPath();
    let drawing = false;
    values.forEach((v, i) => {
      if (v == null) {
        drawing = false;
        return;
      }
      if (drawing) g.lineTo(x(i, values.length), y(v));
      else g.moveTo(x(i, values.length), y(v));
      drawing = true;
    });
    g.stroke();
    g.fillStyle = color; // a value with no neighbour draws no line: show it as a dot
    values.forEach((v, i) => {
      if (v == null || values[i - 1] != null || values[i + 1] != null) return;
      g.beginPath();
      g.arc(x(i, values.length), y(v), g.lineWidth, 0, 2 * Math.PI);
      g.fill();
    });
  });
}
