/*
 * wsgate_rpc.h: the C ABI of websocket_jsonrpc plugins, version 2.
 *
 * A plugin is a shared library that exports one function, wsgate_rpc_plugin(),
 * returning a pointer to a static wsgate_rpc_plugin_t. websocket_jsonrpc loads
 * it with -L, reads abi_version before anything else and refuses a mismatch,
 * calls init() once with the -C string, opens one session per WebSocket
 * client, and calls call() once per JSON-RPC method call.
 *
 * The full contract (who owns which pointer, threading, what a failure does)
 * is in docs/plugin-abi.md; the rules are repeated briefly below.
 * rpc-plugins/examples/hello.c is a complete plugin.
 */
#ifndef WSGATE_RPC_H
#define WSGATE_RPC_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version this header describes. Version 2 added the client argument
 * of session_open. */
#define WSGATE_RPC_ABI_VERSION 2u

/* The name of the one exported symbol. */
#define WSGATE_RPC_ENTRY_SYMBOL "wsgate_rpc_plugin"

/* Status codes returned by init, session_open and call. */
#define WSGATE_RPC_OK 0     /* success; call: *out holds the result, any JSON value */
#define WSGATE_RPC_ERROR 1  /* call only: *out holds {"code": int, "message": string, "data"?: any} */
#define WSGATE_RPC_FAILED 2 /* the plugin failed; *out / *error is NULL or a plain-text message */

typedef struct wsgate_rpc_plugin {
    /* WSGATE_RPC_ABI_VERSION. First in every version of the ABI. */
    uint32_t abi_version;

    /* The plugin's name: static, NUL-terminated UTF-8. */
    const char *name;

    /* The methods: a static, NULL-terminated array of static, NUL-terminated
     * UTF-8 names. At least one; no duplicates; none empty, longer than 255
     * bytes, starting with "rpc." or holding control characters. */
    const char *const *methods;

    /* Called once, before anything else but the entry function, from the main
     * thread. config is the -C string or NULL (valid only during the call).
     * On success store the plugin state (any pointer, NULL included) in *plugin
     * and return WSGATE_RPC_OK. Otherwise return WSGATE_RPC_FAILED and store in
     * *error NULL or a message allocated by the plugin (freed with free_string);
     * the server then exits with that message. */
    int32_t (*init)(const char *config, void **plugin, char **error);

    /* A WebSocket client connected. client is a JSON object describing it,
     * valid only during the call: {"peer": "ip:port" (the client's address as
     * the gateway saw it; "[v6]:port" for IPv6), "path": the request path,
     * "query": the query string without '?'}; a field may be "" when unknown,
     * and later versions of the host may add fields. Store the session state
     * (any pointer, NULL included) in *session and return WSGATE_RPC_OK, or
     * return WSGATE_RPC_FAILED with an optional *error message: that client's
     * WebSocket is then closed with 1011. */
    int32_t (*session_open)(void *plugin, const char *client, void **session, char **error);

    /* The client is gone: called exactly once for each opened session, after
     * its last call has returned. */
    void (*session_close)(void *plugin, void *session);

    /* One method call. method is one of the declared names; params is the
     * request's params as JSON text (an object or an array), or "null" when the
     * request had none. Both are valid only during the call. Store a string
     * allocated by the plugin in *out (freed with free_string) and return
     * WSGATE_RPC_OK (*out: the result JSON), WSGATE_RPC_ERROR (*out: an error
     * object) or WSGATE_RPC_FAILED (*out: NULL or a message for the log; the
     * client gets -32603). Malformed JSON in *out also gives the client -32603.
     * Calls of one session never overlap; calls of different sessions may run
     * at the same time on different threads. */
    int32_t (*call)(void *plugin, void *session, const char *method, const char *params,
                    char **out);

    /* Frees a string this plugin stored in *out or *error. Called exactly once
     * for each non-NULL one, possibly from another thread. */
    void (*free_string)(char *string);

    /* Called once, after every session was closed. The library is unloaded next. */
    void (*release)(void *plugin);
} wsgate_rpc_plugin_t;

/* The entry symbol. It must do nothing but return a pointer to a static table:
 * it is the only function called before abi_version is checked. */
const wsgate_rpc_plugin_t *wsgate_rpc_plugin(void);

#ifdef __cplusplus
}
#endif

#endif /* WSGATE_RPC_H */
