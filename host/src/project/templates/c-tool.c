/*
 * {{name}}: a toka-host tool in C, made by `toka-host new tool {{name}} --lang c`.
 *
 * `exports_tool_describe` tells callers the tool's name, schemas and side effects; the host checks every input
 * against the input schema before `exports_tool_invoke` runs and every output against the output schema after.
 * `toka-host build` generates the bindings of world toka:agent/tool into build/gen/ (`tool.h`), compiles with
 * clang for wasm32-wasi as a reactor and makes the component. Strings handed back to the host must come from
 * malloc: the generated post-return functions free them.
 *
 * Input `{"name": "Ada"}` gives `{"greeting":"Hello, Ada!"}`. The host has already checked the input against the
 * schema; the reader below finds the "name" string without escapes, which is all this example needs: vendor a JSON
 * library (cJSON, for example) for real input.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"

static void set_string(tool_string_t *s, const char *text) {
    size_t len = strlen(text);
    uint8_t *ptr = malloc(len ? len : 1);
    if (ptr == NULL) {
        abort();
    }
    memcpy(ptr, text, len);
    s->ptr = ptr;
    s->len = len;
}

void exports_tool_describe(tool_tool_spec_t *ret) {
    set_string(&ret->name, "{{name}}");
    set_string(&ret->version, "0.1.0");
    set_string(&ret->description, "Greets someone by name.");
    set_string(&ret->input_schema,
               "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",\"type\":\"object\","
               "\"properties\":{\"name\":{\"type\":\"string\",\"minLength\":1}},\"required\":[\"name\"],"
               "\"additionalProperties\":false}");
    set_string(&ret->output_schema,
               "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",\"type\":\"object\","
               "\"properties\":{\"greeting\":{\"type\":\"string\"}},\"required\":[\"greeting\"]}");
    ret->side_effect = TOKA_AGENT_TYPES_SIDE_EFFECT_NONE;
    /* The rights it needs, as KIND:VALUE ("fs:/:ro"): a call gets these intersected with its caller's. */
    ret->grants.ptr = NULL;
    ret->grants.len = 0;
}

bool exports_tool_invoke(tool_string_t *input, tool_string_t *ret, tool_tool_error_t *err) {
    char *text = malloc(input->len + 1);
    if (text == NULL) {
        abort();
    }
    memcpy(text, input->ptr, input->len);
    text[input->len] = '\0';
    tool_string_free(input);

    char name[256] = "";
    const char *key = strstr(text, "\"name\"");
    const char *p = key ? key + strlen("\"name\"") : NULL;
    while (p && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ':')) {
        p++;
    }
    const char *end = (p && *p == '"') ? strchr(++p, '"') : NULL;
    bool ok = end && (size_t)(end - p) < sizeof name && !memchr(p, '\\', (size_t)(end - p));
    if (ok) {
        memcpy(name, p, (size_t)(end - p));
        name[end - p] = '\0';
    }
    free(text);
    if (!ok) {
        err->tag = TOKA_AGENT_TYPES_TOOL_ERROR_INVALID_INPUT;
        set_string(&err->val.invalid_input, "\"name\" must be a string without escapes, under 256 bytes");
        return false;
    }
    char result[300];
    snprintf(result, sizeof result, "{\"greeting\":\"Hello, %s!\"}", name);
    set_string(ret, result);
    return true;
}
