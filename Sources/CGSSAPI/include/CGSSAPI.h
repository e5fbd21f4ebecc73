#ifndef IDENTGATE_CGSSAPI_H
#define IDENTGATE_CGSSAPI_H

#include <stddef.h>

// A small acceptor-side shim over MIT Kerberos' GSS-API (Debian: libkrb5-dev): the
// macros and buffer types of <gssapi/gssapi.h> do not import into Swift well, and the
// keytab is copied into memory here so that it is read while still root.
//
// Every function returns 0 on success; on failure -1 and a message in `error`
// (NUL-terminated, cut to `error_size`). Output buffers are allocated here and given
// back with identgate_gss_release_buffer.

typedef struct identgate_gss_acceptor identgate_gss_acceptor;
typedef struct identgate_gss_context identgate_gss_context;

/// Reads the keytab's entries for `service` (the first component of the principal:
/// `rcmd` accepts `rcmd/host@REALM`) into a keytab held in memory, and acquires
/// acceptor credentials from it. Returns the number of keys copied in `*keys`.
int identgate_gss_acceptor_create(const char *keytab, const char *service, identgate_gss_acceptor **acceptor,
                                  int *keys, char *error, size_t error_size);
void identgate_gss_acceptor_free(identgate_gss_acceptor *acceptor);

/// One step of gss_accept_sec_context. `*context` is NULL before the first step. Sets
/// `*output` (may be empty) for the client, and `*complete` to 1 once established.
int identgate_gss_accept(identgate_gss_acceptor *acceptor, identgate_gss_context **context, const void *input,
                         size_t input_size, void **output, size_t *output_size, int *complete, char *error,
                         size_t error_size);

/// The authenticated initiator (`alice@TEST.EXAMPLE`) and the mechanism (`krb5`, or the
/// OID in dotted form), once complete.
int identgate_gss_peer(identgate_gss_context *context, char *principal, size_t principal_size, char *mechanism,
                       size_t mechanism_size);

/// The library's own output buffer (laid out as gss_buffer_desc), read in place and given
/// back with identgate_gss_release_output: wrapping and unwrapping copy nothing more.
typedef struct identgate_gss_output {
    size_t length;
    void *value;
} identgate_gss_output;

/// gss_wrap with or without confidentiality; gss_unwrap, telling whether the message was
/// encrypted. On a stream every token must come in order; for `datagram`s (UDP), where
/// loss and reordering are normal, only a replayed token is refused.
int identgate_gss_wrap(identgate_gss_context *context, int confidential, const void *input, size_t input_size,
                       identgate_gss_output *output, char *error, size_t error_size);
int identgate_gss_unwrap(identgate_gss_context *context, int datagram, const void *input, size_t input_size,
                         identgate_gss_output *output, int *confidential, char *error, size_t error_size);
void identgate_gss_release_output(identgate_gss_output *output);

/// The largest message whose wrapped token fits in `token_limit` bytes.
int identgate_gss_wrap_size_limit(identgate_gss_context *context, int confidential, size_t token_limit,
                                  size_t *message_limit);

void identgate_gss_context_free(identgate_gss_context *context);
void identgate_gss_release_buffer(void *buffer);

#endif
