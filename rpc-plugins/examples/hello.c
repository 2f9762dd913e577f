/*
 * hello.c: a websocket_jsonrpc plugin in plain C, written against wsgate_rpc.h.
 *
 * Build:  cc -shared -fPIC -Wall -Wextra -I rpc-plugins/include \
 *             -o libhello.so rpc-plugins/examples/hello.c
 * Run:    websocket_jsonrpc -R /tmp/ws -n hello -L ./libhello.so -C "any text"
 *
 * Methods:
 *   hello      -> {"greeting": "hello from C", "calls": <calls of this method
 *                  in this session>, "config": <the -C string or null>}
 *   client     -> the JSON object session_open was given for this client
 *   fail       -> the error {"code": 9001, "message": "failure from C"}
 *   malformed  -> a result that is not JSON (the client gets -32603)
 *   broken     -> WSGATE_RPC_FAILED (the client gets -32603)
 *
 * The end-to-end tests also build it with -DHELLO_ABI_VERSION=<n> (a plugin
 * for another ABI version) and -DHELLO_NO_ENTRY (no entry symbol at all).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wsgate_rpc.h"

#ifndef HELLO_ABI_VERSION
#define HELLO_ABI_VERSION WSGATE_RPC_ABI_VERSION
#endif

struct hello_plugin {
    char *config_json; /* the -C string as a JSON string, or "null"; read-only after init */
};

struct hello_session {
    unsigned long calls; /* only touched by this session's calls, which never overlap */
    char *client;        /* the client JSON of session_open, copied: it is valid only then */
};

/* Writes text as a JSON string literal into a new malloc'd buffer. */
static char *json_string(const char *text)
{
    size_t len = strlen(text);
    char *out = malloc(len * 6 + 3); /* worst case: every byte becomes \u00XX */
    if (out == NULL)
        return NULL;
    char *p = out;
    *p++ = '"';
    for (const unsigned char *c = (const unsigned char *)text; *c != '\0'; c++) {
        if (*c == '"' || *c == '\\') {
            *p++ = '\\';
            *p++ = (char)*c;
        } else if (*c < 0x20) {
            p += sprintf(p, "\\u%04x", *c);
        } else {
            *p++ = (char)*c;
        }
    }
    *p++ = '"';
    *p = '\0';
    return out;
}

static char *copy(const char *text)
{
    char *out = malloc(strlen(text) + 1);
    if (out != NULL)
        strcpy(out, text);
    return out;
}

static int32_t hello_init(const char *config, void **plugin, char **error)
{
    struct hello_plugin *state = calloc(1, sizeof(*state));
    if (state == NULL) {
        *error = copy("out of memory");
        return WSGATE_RPC_FAILED;
    }
    state->config_json = config != NULL ? json_string(config) : copy("null");
    if (state->config_json == NULL) {
        free(state);
        *error = copy("out of memory");
        return WSGATE_RPC_FAILED;
    }
    *plugin = state;
    return WSGATE_RPC_OK;
}

static int32_t hello_session_open(void *plugin, const char *client, void **session, char **error)
{
    (void)plugin;
    struct hello_session *state = calloc(1, sizeof(*state));
    if (state == NULL) {
        *error = copy("out of memory");
        return WSGATE_RPC_FAILED;
    }
    state->client = copy(client);
    if (state->client == NULL) {
        free(state);
        *error = copy("out of memory");
        return WSGATE_RPC_FAILED;
    }
    *session = state;
    return WSGATE_RPC_OK;
}

static void hello_session_close(void *plugin, void *session)
{
    (void)plugin;
    struct hello_session *state = session;
    free(state->client);
    free(state);
}

static int32_t hello_call(void *plugin, void *session, const char *method, const char *params,
                          char **out)
{
    struct hello_plugin *state = plugin;
    struct hello_session *client = session;
    (void)params;

    if (strcmp(method, "hello") == 0) {
        client->calls++;
        const char *format = "{\"greeting\":\"hello from C\",\"calls\":%lu,\"config\":%s}";
        size_t size = strlen(format) + strlen(state->config_json) + 24;
        *out = malloc(size);
        if (*out == NULL)
            return WSGATE_RPC_FAILED;
        snprintf(*out, size, format, client->calls, state->config_json);
        return WSGATE_RPC_OK;
    }
    if (strcmp(method, "client") == 0) {
        *out = copy(client->client);
        return *out != NULL ? WSGATE_RPC_OK : WSGATE_RPC_FAILED;
    }
    if (strcmp(method, "fail") == 0) {
        *out = copy("{\"code\":9001,\"message\":\"failure from C\"}");
        return WSGATE_RPC_ERROR;
    }
    if (strcmp(method, "malformed") == 0) {
        *out = copy("{\"unterminated\": [1, 2");
        return WSGATE_RPC_OK;
    }
    *out = copy("broken on purpose");
    return WSGATE_RPC_FAILED;
}

static void hello_free_string(char *string)
{
    free(string);
}

static void hello_release(void *plugin)
{
    struct hello_plugin *state = plugin;
    free(state->config_json);
    free(state);
}

static const char *const hello_methods[] = {"hello", "client", "fail", "malformed", "broken", NULL};

static const wsgate_rpc_plugin_t hello_table = {
    .abi_version = HELLO_ABI_VERSION,
    .name = "hello",
    .methods = hello_methods,
    .init = hello_init,
    .session_open = hello_session_open,
    .session_close = hello_session_close,
    .call = hello_call,
    .free_string = hello_free_string,
    .release = hello_release,
};

#ifndef HELLO_NO_ENTRY
const wsgate_rpc_plugin_t *wsgate_rpc_plugin(void)
{
    return &hello_table;
}
#else
/* Keeps the table referenced so the build stays warning-free. */
const wsgate_rpc_plugin_t *hello_table_without_entry(void)
{
    return &hello_table;
}
#endif
