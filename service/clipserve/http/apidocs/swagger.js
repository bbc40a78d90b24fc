// Swagger UI over the schema inlined in the page. Requests go to this server, whatever path
// prefix it sits under: the server URL is the page's root, resolved against the page's own URL.
"use strict";
(function () {
  const root = new URL(document.body.dataset.root || "./", window.location.href);
  const spec = JSON.parse(document.getElementById("openapi-spec").textContent);
  spec.servers = [{ url: root.href.replace(/\/$/, ""), description: "this server" }];
  window.ui = SwaggerUIBundle({
    spec: spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The API key stays in this page's memory (never local storage).
    persistAuthorization: false,
  });
})();
