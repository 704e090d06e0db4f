// The console's one way to call the gateway's APIs from a page: /console/api + the API's own path, with the
// session's CSRF token (the session cookie goes along by itself). JSON in and out; an API error is thrown with
// its message. `llmaas.fetch` is the raw call (streams), `llmaas.call` parses and checks the answer.
"use strict";
window.llmaas = (function () {
  const meta = document.querySelector("meta[name=csrf-token]");
  const csrf = meta ? meta.content : "";
  const fetchApi = (path, init = {}) => {
    const headers = { "X-CSRF-Token": csrf, ...(init.headers || {}) };
    let body = init.body;
    if (body !== undefined && !(body instanceof FormData) && typeof body !== "string") {
      body = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    return fetch("/console/api" + path, { ...init, headers, body });
  };
  const call = async (path, init = {}) => {
    const response = await fetchApi(path, init);
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((answer.error && answer.error.message) || response.statusText);
    return answer;
  };
  return { fetch: fetchApi, call };
})();
