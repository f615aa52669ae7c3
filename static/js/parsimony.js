/* Parsimony: small progressive enhancements. Every page works without this file. */
(function () {
  "use strict";

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KB";
    return (n / 1048576).toFixed(1) + " MB";
  }

  /* Drop zone: a real <input type=file multiple> inside a label; dropping files fills it. */
  function initDropzone(zone) {
    var input = zone.querySelector("input[type=file]");
    var list = zone.querySelector(".dropzone-list");
    if (!input) return;
    function show() {
      if (!list) return;
      list.textContent = "";
      Array.prototype.forEach.call(input.files, function (file) {
        var li = document.createElement("li");
        li.textContent = file.name + " (" + formatBytes(file.size) + ")";
        list.appendChild(li);
      });
      zone.classList.toggle("has-files", input.files.length > 0);
    }
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    });
    ["dragleave", "dragend"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
      });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("dragging");
      if (event.dataTransfer && event.dataTransfer.files.length) {
        input.files = event.dataTransfer.files;
        show();
      }
    });
    input.addEventListener("change", show);
    // A file dropped beside the zone must not navigate away from the page.
    window.addEventListener("dragover", function (event) { event.preventDefault(); });
    window.addEventListener("drop", function (event) { event.preventDefault(); });
  }

  /* Copy buttons for one-time secrets. */
  function initCopy(button) {
    button.addEventListener("click", function () {
      var source = document.querySelector(button.getAttribute("data-copy"));
      if (!source) return;
      source.select();
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(source.value).then(done, function () { document.execCommand("copy"); done(); });
      } else {
        document.execCommand("copy");
        done();
      }
    });
  }

  /* Spend per day: Chart.js (served from the django-admincharts package, no CDN). */
  function initSpendChart() {
    var canvas = document.getElementById("spend-chart");
    var data = document.getElementById("spend-data");
    if (!canvas || !data || typeof window.Chart === "undefined") return;
    var chart = JSON.parse(data.textContent);
    var accent = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#1f6f5c";
    new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: chart.labels.map(function (d) { return d.slice(5); }),
        datasets: [{ label: "Spend (USD)", data: chart.values, backgroundColor: accent, borderRadius: 3 }]
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: function (item) { return "$" + Number(item.raw).toPrecision(4); } } }
        },
        scales: {
          x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 8 } },
          y: { beginAtZero: true, ticks: { callback: function (v) { return "$" + Number(v).toPrecision(2); } } }
        }
      }
    });
  }

  /* A <select data-autosubmit> submits its form on change (no inline handlers: the CSP forbids them). */
  function initAutosubmit(select) {
    select.addEventListener("change", function () {
      if (select.form) select.form.requestSubmit();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("select[data-autosubmit]").forEach(initAutosubmit);
    document.querySelectorAll("[data-dropzone]").forEach(initDropzone);
    document.querySelectorAll("button.copy[data-copy]").forEach(initCopy);
    initSpendChart();
  });
})();
