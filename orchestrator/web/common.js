// What both pages share: the API key, calls to the API with its one-line errors, and option controls
// built from the service's own OpenAPI document (names, choices, defaults, bounds, help).

const KEY = "faceswap-api-key";
const keyWaiters = [];

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

// The key form, made once at the top of the page's <main>.
function keySection() {
  let section = document.getElementById("key-section");
  if (section) return section;
  section = document.createElement("section");
  section.id = "key-section";
  section.className = "panel";
  section.setAttribute("aria-labelledby", "key-title");
  section.innerHTML = `
    <h2 id="key-title">API key</h2>
    <form id="key-form">
      <p id="key-message"></p>
      <label for="api-key">API key</label>
      <input id="api-key" type="password" autocomplete="off" required>
      <button type="submit">Use this key</button>
    </form>`;
  document.querySelector("main").prepend(section);
  const input = section.querySelector("#api-key");
  section.querySelector("form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    section.hidden = true;
    keyWaiters.splice(0).forEach((resolve) => resolve());
  });
  return section;
}

// Show the key form and resolve when the user has entered a key.
function askForKey(message) {
  const section = keySection();
  section.querySelector("#key-message").textContent = message;
  section.hidden = false;
  const input = section.querySelector("#api-key");
  input.value = "";
  input.focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

// fetch() with the key; a 401 asks for the key and tries again; any other error throws its `detail`.
export async function api(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    if (apiKey()) headers.set("X-API-Key", apiKey());
    const response = await fetch(path, { ...init, headers });
    if (response.status === 401) {
      await askForKey(apiKey() ? "That API key was refused; enter it again." : "This service needs an API key.");
      continue;
    }
    if (!response.ok) throw new Error(await problem(response));
    return response;
  }
}

export async function apiJson(path, init) {
  return (await api(path, init)).json();
}

async function problem(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`.trim();
}

export function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// Server-sent events read with fetch (EventSource cannot send the key): calls onEvent(type, data).
export async function readEvents(path, onEvent) {
  const response = await api(path, { headers: { Accept: "text/event-stream" } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      }
      if (data.length) onEvent(type, JSON.parse(data.join("\n")));
    }
  }
}

// --- the OpenAPI document

let documentPromise;

export function openapi() {
  documentPromise ??= fetch("/openapi.json").then((response) => {
    if (!response.ok) throw new Error(`the API description could not be read (${response.status})`);
    return response.json();
  });
  return documentPromise;
}

// A schema's properties with `allOf` and `$ref` resolved, and its required names.
export function properties(doc, schema) {
  const resolved = schema.$ref ? doc.components.schemas[schema.$ref.split("/").pop()] : schema;
  let props = {};
  let required = [...(resolved.required || [])];
  for (const part of resolved.allOf || []) {
    const inner = properties(doc, part);
    props = { ...props, ...inner.props };
    required = required.concat(inner.required);
  }
  return { props: { ...props, ...(resolved.properties || {}) }, required };
}

export function schemaNamed(doc, name) {
  return properties(doc, { $ref: `#/components/schemas/${name}` });
}

// The body schema of an operation's request (multipart for uploads).
export function requestBody(doc, path, method) {
  const content = doc.paths[path][method].requestBody.content;
  return properties(doc, Object.values(content)[0].schema);
}

// `anyOf: [X, null]` -> X, nullable.
function unwrap(prop) {
  const options = prop.anyOf || [];
  const inner = options.find((option) => option.type !== "null");
  if (inner && options.length === 2) return { schema: { ...inner, ...prop, anyOf: undefined }, nullable: true };
  return { schema: prop, nullable: false };
}

export function isFile(prop) {
  const { schema } = unwrap(prop);
  return Boolean(schema.contentMediaType || (schema.items && schema.items.contentMediaType));
}

let counter = 0;

function labelled(name, prop, input) {
  const wrapper = document.createElement("div");
  wrapper.className = "field";
  const id = input.id || `field-${name}-${++counter}`;
  input.id = id;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = prop.title || name;
  const code = document.createElement("code");
  code.textContent = name;
  label.append(" ", code);
  wrapper.append(label, input);
  if (prop.description) {
    const hint = document.createElement("small");
    hint.id = `${id}-hint`;
    hint.textContent = prop.description;
    input.setAttribute("aria-describedby", hint.id);
    wrapper.append(hint);
  }
  return wrapper;
}

// One control for one schema property; returns {element, read} where read() gives a typed value
// (undefined when left at "the service's default").
export function control(name, prop, required = false) {
  const { schema, nullable } = unwrap(prop);
  let input;
  let read;
  if (schema.contentMediaType || (schema.items && schema.items.contentMediaType)) {
    input = document.createElement("input");
    input.type = "file";
    input.name = name;
    input.multiple = schema.type === "array";
    input.required = required;
    read = () => [...input.files];
  } else if (schema.type === "array" && schema.items && schema.items.enum) {
    const group = document.createElement("fieldset");
    group.className = "field choices";
    const legend = document.createElement("legend");
    legend.textContent = schema.title || name;
    const code = document.createElement("code");
    code.textContent = name;
    legend.append(" ", code);
    group.append(legend);
    const chosen = new Set(schema.default || []);
    const boxes = schema.items.enum.map((value) => {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = name;
      box.value = value;
      box.checked = chosen.has(value);
      box.id = `field-${name}-${value}-${++counter}`;
      const label = document.createElement("label");
      label.htmlFor = box.id;
      label.append(box, ` ${value}`);
      group.append(label);
      return box;
    });
    if (schema.description) {
      const hint = document.createElement("small");
      hint.textContent = schema.description;
      group.append(hint);
    }
    return { name, element: group, read: () => boxes.filter((box) => box.checked).map((box) => box.value) };
  } else if (schema.enum) {
    input = document.createElement("select");
    input.name = name;
    if (nullable || schema.default === undefined) {
      input.append(new Option(nullable ? "(default)" : "", ""));
    }
    for (const value of schema.enum) input.append(new Option(value, value, false, value === schema.default));
    read = () => (input.value === "" ? undefined : input.value);
  } else if (schema.type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.name = name;
    input.checked = Boolean(schema.default);
    read = () => input.checked;
  } else if (schema.type === "integer" || schema.type === "number") {
    input = document.createElement("input");
    input.type = "number";
    input.name = name;
    input.inputMode = schema.type === "integer" ? "numeric" : "decimal";
    input.step = schema.type === "integer" ? "1" : "any";
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
    if (schema.default !== undefined && schema.default !== null) input.value = schema.default;
    input.required = required;
    read = () => (input.value === "" ? undefined : Number(input.value));
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.name = name;
    if (schema.default !== undefined && schema.default !== null) input.value = schema.default;
    input.required = required;
    read = () => (input.value === "" ? undefined : input.value);
  }
  return { name, element: labelled(name, schema, input), read, input };
}

// Controls for the named properties, appended to `container`.
export function controls(container, props, required, names) {
  return names.map((name) => {
    const made = control(name, props[name], required.includes(name));
    container.append(made.element);
    return made;
  });
}

// Typed values of controls, leaving out those at the service's default.
export function values(made) {
  const result = {};
  for (const { name, read } of made) {
    const value = read();
    if (value !== undefined) result[name] = value;
  }
  return result;
}

export function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(new Error(`${file.name}: could not be read`));
    reader.readAsDataURL(file);
  });
}
