// Cost charts: each <canvas data-chart="ID"> draws the JSON in <script id="ID"> with Chart.js,
// vendored under static/vendor and loaded only on pages that have a chart. Runs on load and
// after htmx swaps in new content (filters, tabs).
(function () {
  const self = document.currentScript;
  let loading = null;

  function library() {
    if (window.Chart) return Promise.resolve();
    if (!loading) {
      loading = new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = self.dataset.chartjs;
        script.onload = resolve;
        script.onerror = reject;
        document.head.appendChild(script);
      });
    }
    return loading;
  }

  function draw(root) {
    const canvases = root.querySelectorAll("canvas[data-chart]:not([data-drawn])");
    if (!canvases.length) return;
    library().then(() => canvases.forEach((canvas) => {
      if (canvas.dataset.drawn) return;
      const source = document.getElementById(canvas.dataset.chart);
      if (!source) return;
      const data = JSON.parse(source.textContent);
      const stacked = canvas.dataset.stacked === "1";
      new window.Chart(canvas, {
        type: "bar",
        data: { labels: data.labels, datasets: data.datasets },
        options: {
          animation: false,
          maintainAspectRatio: false,
          scales: {
            x: { stacked: stacked },
            y: { stacked: stacked, title: { display: true, text: data.currency } },
          },
          plugins: { legend: { position: "bottom" } },
        },
      });
      canvas.dataset.drawn = "1";
    }));
  }

  document.addEventListener("DOMContentLoaded", () => draw(document));
  document.addEventListener("htmx:afterSettle", () => draw(document));
})();
