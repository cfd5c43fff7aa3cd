// The operators' console (src/admin/console): the only script, served from
// /console/static (CSP script-src 'self'). Pages marked
// <body data-refresh="N"> reload every N seconds, unless a field is being
// edited or the tab is hidden.
(function () {
  "use strict";
  var seconds = parseInt(document.body.getAttribute("data-refresh") || "", 10);
  if (!(seconds > 0)) {
    return;
  }
  window.setInterval(function () {
    var active = document.activeElement;
    var editing = active && (active.tagName === "INPUT" || active.tagName === "SELECT");
    if (!editing && document.visibilityState === "visible") {
      window.location.reload();
    }
  }, seconds * 1000);
})();
