// The playground: chat with any of the tenant's models through the same OpenAI API, streamed, with usage and why the
// answer stopped (finish_reason); a conversation of many turns (each request carries the earlier ones); JSON mode
// or a JSON schema (`response_format`), and a demo tool (`tools`, `tool_choice`) whose calls the page shows.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const WEATHER_TOOL = {
    type: "function",
    function: {
      name: "get_weather",
      description: "The current weather in a city.",
      parameters: {
        type: "object",
        properties: { city: { type: "string", description: "The city's name, e.g. Paris" } },
        required: ["city"],
        additionalProperties: false,
      },
    },
  };
  let controller = null;
  const history = [];  // the turns answered so far, as the chat API takes them
  const FINISH = {
    stop: "the model ended its answer",
    length: "it reached max tokens: raise them for a longer answer",
    tool_calls: "the model called a tool",
    content_filter: "the answer was filtered",
  };
  const NOT_RUN = "The playground does not run tools: there is no result.";

  // The conversation so far, and the message being answered.
  const showConversation = (pending) => {
    const turns = pending ? [...history, pending] : history;
    $("conversation").replaceChildren(...turns.filter((m) => m.role !== "tool").map((message) => {
      const item = document.createElement("li");
      item.className = message.role;
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = message.role === "user" ? "you" : "model";
      const called = (message.tool_calls || []).map((c) => `called ${c.function.name} with ${c.function.arguments}`);
      item.append(role, [message.content || "", ...called].filter(Boolean).join("\n"));
      return item;
    }));
    $("conversation-empty").hidden = turns.length > 0;
  };

  // What the model answered, as the next request must carry it (a tool call gets its "not run" reply).
  const remember = (user) => {
    const answer = { role: "assistant", content: $("answer").textContent };
    const made = calls.filter(Boolean);
    history.push(user);
    if (!made.length) { history.push(answer); return; }
    answer.tool_calls = made.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
    history.push(answer, ...made.map((c) => ({ role: "tool", tool_call_id: c.id, content: NOT_RUN })));
  };

  $("new-conversation").addEventListener("click", () => {
    history.length = 0;
    for (const id of ["answer", "finish", "usage", "error"]) $(id).textContent = "";
    calls.length = 0; addToolCallDeltas([]);
    showConversation(null);
  });

  llmaas.call("/v1/models").then((list) => {
    for (const model of list.data) $("model").add(new Option(model.id, model.id));
    document.body.dataset.modelsLoaded = "true";
  });

  const showOptions = () => {
    $("schema-row").hidden = $("format").value !== "json_schema";
    $("tools-note").hidden = $("tools").value === "none";
  };
  $("format").addEventListener("change", showOptions);
  $("tools").addEventListener("change", showOptions);
  showOptions();

  // The request body, as OpenAI's chat completions API takes it; throws on a schema that is not JSON.
  const requestBody = () => {
    const messages = [];
    if ($("system").value.trim()) messages.push({ role: "system", content: $("system").value });
    messages.push(...history, { role: "user", content: $("prompt").value });
    const body = {
      model: $("model").value, messages, stream: true, stream_options: { include_usage: true },
      temperature: Number($("temperature").value), max_completion_tokens: Number($("max-tokens").value),
    };
    const format = $("format").value;
    if (format === "json_object") body.response_format = { type: "json_object" };
    if (format === "json_schema") {
      let schema;
      try { schema = JSON.parse($("schema").value); } catch (error) {
        throw new Error(`The JSON schema is not valid JSON: ${error.message}`);
      }
      body.response_format = { type: "json_schema", json_schema: { name: "playground", schema, strict: true } };
    }
    if ($("tools").value !== "none") {
      body.tools = [WEATHER_TOOL];
      body.tool_choice = $("tools").value;
      body.parallel_tool_calls = false;  // one question, one call (a small model would repeat calls to the end)
    }
    return body;
  };

  // One tool call per index, its arguments streamed in pieces (OpenAI's `delta.tool_calls`).
  const calls = [];
  const addToolCallDeltas = (deltas) => {
    for (const delta of deltas) {
      const call = calls[delta.index] || (calls[delta.index] = { id: "", name: "", arguments: "" });
      if (delta.id) call.id = delta.id;
      if (delta.function && delta.function.name) call.name = delta.function.name;
      if (delta.function && delta.function.arguments) call.arguments += delta.function.arguments;
    }
    const list = $("tool-calls");
    list.replaceChildren(...calls.filter(Boolean).map((call) => {
      const item = document.createElement("li");
      const name = document.createElement("code");
      name.className = "tool-name";
      name.textContent = call.name;
      const args = document.createElement("code");
      args.className = "tool-arguments";
      args.textContent = call.arguments;
      item.append("called ", name, " with ", args);
      return item;
    }));
    list.hidden = calls.length === 0;
  };

  const showChunk = (chunk) => {
    for (const choice of chunk.choices) {
      const delta = choice.delta || {};
      $("answer").textContent += delta.content || "";
      if (delta.tool_calls) addToolCallDeltas(delta.tool_calls);
      if (choice.finish_reason) {
        const why = FINISH[choice.finish_reason];
        $("finish").textContent = `finish_reason: ${choice.finish_reason}${why ? ` (${why})` : ""}`;
      }
    }
    if (chunk.usage) {
      const u = chunk.usage;
      const cached = u.prompt_tokens_details ? u.prompt_tokens_details.cached_tokens : 0;
      $("usage").textContent =
        `${u.prompt_tokens} prompt (${cached} cached) + ${u.completion_tokens} completion = ${u.total_tokens} tokens`;
    }
  };

  const readStream = async (response) => {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, end); buffer = buffer.slice(end + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        showChunk(chunk);
      }
    }
  };

  $("stop").addEventListener("click", () => controller && controller.abort());
  $("playground").addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const id of ["answer", "finish", "usage", "error"]) $(id).textContent = "";
    calls.length = 0; addToolCallDeltas([]);
    document.body.dataset.answered = "false";
    controller = new AbortController();
    $("send").disabled = true; $("stop").disabled = false;
    try {
      const body = requestBody();
      const user = body.messages[body.messages.length - 1];
      showConversation(user);
      const response = await llmaas.fetch("/v1/chat/completions", { method: "POST", body, signal: controller.signal });
      if (!response.ok) {
        const failure = await response.json().catch(() => ({}));
        throw new Error((failure.error && failure.error.message) || response.statusText);
      }
      await readStream(response);
      remember(user);
    } catch (error) {
      if (error.name !== "AbortError") $("error").textContent = error.message;
    } finally {
      $("send").disabled = false; $("stop").disabled = true; controller = null;
      document.body.dataset.answered = "true";
    }
  });
})();
