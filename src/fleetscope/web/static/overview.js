// Draws the overview's plotly charts from the JSON embedded in the page, and wires the
// "copy query" buttons. No network requests: the server rendered everything.
(function () {
  "use strict";

  function drawCharts() {
    var holder = document.getElementById("overview-charts");
    if (!holder || typeof Plotly === "undefined") return;
    var charts = JSON.parse(holder.textContent);
    var config = { displaylogo: false, responsive: true,
                   modeBarButtonsToRemove: ["select2d", "lasso2d"] };
    charts.forEach(function (c) {
      var el = document.getElementById(c.id);
      if (el) Plotly.newPlot(el, c.figure.data, c.figure.layout, config);
    });
  }

  function copyText(text, done) {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text, done); });
    } else {
      fallback(text, done);
    }
  }

  function fallback(text, done) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); done(); } finally { document.body.removeChild(area); }
  }

  function wireCopy() {
    document.querySelectorAll("button.copy").forEach(function (btn) {
      btn.addEventListener("click", function () {
        var src = document.getElementById(btn.getAttribute("data-copy"));
        if (!src) return;
        copyText(src.textContent, function () {
          var label = btn.textContent;
          btn.textContent = "copied";
          btn.classList.add("done");
          setTimeout(function () { btn.textContent = label; btn.classList.remove("done"); }, 1500);
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts();
    wireCopy();
  });
})();
