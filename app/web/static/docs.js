// Swagger UI over the service's OpenAPI document (vendored swagger-ui-dist: static/swagger-ui/README.md).
// A file, not an inline script: the page's Content-Security-Policy admits only this origin's scripts.
const root = document.getElementById("swagger-ui");
window.ui = window.SwaggerUIBundle({
  url: root.dataset.url,
  domNode: root,
  deepLinking: true,
  validatorUrl: null, // never send the document to swagger.io's validator
  presets: [window.SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
