/*
 * {{name}}: a toka-host agent in C, made by `toka-host new agent {{name}} --lang c`.
 *
 * The host calls `exports_agent_run` once per task. `toka-host build` generates the bindings of world
 * toka:agent/agent into build/gen/ (`agent.h`: every import, e.g. `toka_agent_log_log`, `toka_agent_events_emit`,
 * `toka_agent_state_get`, `toka_agent_tools_call`), compiles with clang for wasm32-wasi as a reactor and makes the
 * component. Strings handed back to the host must come from malloc: the generated post-return function frees them.
 *
 * Input `{"name": "Ada"}` gives `{"greeting":"Hello, Ada!"}`. The reader below finds a top-level "name" string
 * without escapes, which is all this example needs: vendor a JSON library (cJSON, for example) for real input.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

/* Sets `s` to a malloc'd copy of the NUL-terminated `text`. */
static void set_string(agent_string_t *s, const char *text) {
    size_t len = strlen(text);
    uint8_t *ptr = malloc(len ? len : 1);
    if (ptr == NULL) {
        abort();
    }
    memcpy(ptr, text, len);
    s->ptr = ptr;
    s->len = len;
}

static bool invalid_input(agent_agent_error_t *err, const char *message) {
    err->tag = TOKA_AGENT_TYPES_AGENT_ERROR_INVALID_INPUT;
    set_string(&err->val.invalid_input, message);
    return false;
}

/* The value of "name" in `input` (a NUL-terminated copy in `out`), "world" if absent; false if it is not a plain
 * string of at most `cap - 1` bytes. */
static bool find_name(const char *input, char *out, size_t cap) {
    const char *key = strstr(input, "\"name\"");
    if (key == NULL) {
        snprintf(out, cap, "world");
        return true;
    }
    const char *p = key + strlen("\"name\"");
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ':') {
        p++;
    }
    if (*p != '"') {
        return false;
    }
    const char *end = strchr(++p, '"');
    if (end == NULL || end == p || (size_t)(end - p) >= cap || memchr(p, '\\', (size_t)(end - p)) != NULL) {
        return false;
    }
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = '\0';
    return true;
}

bool exports_agent_run(agent_task_t *task, agent_string_t *ret, agent_agent_error_t *err) {
    char *input = malloc(task->input.len + 1);
    if (input == NULL) {
        abort();
    }
    memcpy(input, task->input.ptr, task->input.len);
    input[task->input.len] = '\0';
    agent_task_free(task);

    char name[256];
    bool ok = find_name(input, name, sizeof name);
    free(input);
    if (!ok) {
        return invalid_input(err, "\"name\" must be a non-empty string without escapes, under 256 bytes");
    }

    char line[300];
    snprintf(line, sizeof line, "greeting %s", name);
    agent_string_t message = {(uint8_t *)line, strlen(line)};
    toka_agent_log_log(TOKA_AGENT_LOG_LEVEL_INFO, &message);

    char result[300];
    snprintf(result, sizeof result, "{\"greeting\":\"Hello, %s!\"}", name);
    set_string(ret, result);
    return true;
}
