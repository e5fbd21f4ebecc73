#include "CGSSAPI.h"

#include <gssapi/gssapi.h>
#include <gssapi/gssapi_ext.h>
#include <gssapi/gssapi_krb5.h>
#include <krb5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct identgate_gss_acceptor {
    krb5_context krb5;
    krb5_keytab memory;
    gss_cred_id_t credential;
};

struct identgate_gss_context {
    gss_ctx_id_t context;
    gss_name_t source;
    gss_OID mechanism;
};

static void gss_message(OM_uint32 major, OM_uint32 minor, const char *what, char *error, size_t size) {
    char text[512] = "";
    size_t used = 0;
    OM_uint32 kinds[2] = {GSS_C_GSS_CODE, GSS_C_MECH_CODE};
    OM_uint32 codes[2] = {major, minor};
    for (int k = 0; k < 2; k++) {
        if (codes[k] == 0) continue;
        OM_uint32 context = 0, status;
        do {
            gss_buffer_desc message = GSS_C_EMPTY_BUFFER;
            OM_uint32 ignored;
            status = gss_display_status(&ignored, codes[k], kinds[k], GSS_C_NO_OID, &context, &message);
            if (GSS_ERROR(status)) break;
            int n = snprintf(text + used, sizeof text - used, "%s%.*s", used ? "; " : "", (int)message.length,
                             (const char *)message.value);
            gss_release_buffer(&ignored, &message);
            if (n < 0 || (size_t)n >= sizeof text - used) break;
            used += (size_t)n;
        } while (context != 0);
    }
    snprintf(error, size, "%s: %s", what, used ? text : "unknown GSS-API error");
}

int identgate_gss_acceptor_create(const char *keytab, const char *service, identgate_gss_acceptor **out, int *keys,
                                  char *error, size_t error_size) {
    *out = NULL;
    *keys = 0;
    identgate_gss_acceptor *acceptor = calloc(1, sizeof *acceptor);
    if (!acceptor) {
        snprintf(error, error_size, "out of memory");
        return -1;
    }
    krb5_error_code code = krb5_init_context(&acceptor->krb5);
    if (code) {
        snprintf(error, error_size, "krb5_init_context failed (%d)", code);
        free(acceptor);
        return -1;
    }
    krb5_keytab file = NULL;
    krb5_kt_cursor cursor;
    char name[64];
    // A name of our own: two gateways in one process (tests) must not share one.
    snprintf(name, sizeof name, "MEMORY:identgate-%p", (void *)acceptor);
    if ((code = krb5_kt_resolve(acceptor->krb5, keytab, &file)) ||
        (code = krb5_kt_resolve(acceptor->krb5, name, &acceptor->memory)) ||
        (code = krb5_kt_start_seq_get(acceptor->krb5, file, &cursor))) {
        const char *message = krb5_get_error_message(acceptor->krb5, code);
        snprintf(error, error_size, "cannot read the keytab %s: %s", keytab, message);
        krb5_free_error_message(acceptor->krb5, message);
        if (file) krb5_kt_close(acceptor->krb5, file);
        identgate_gss_acceptor_free(acceptor);
        return -1;
    }
    krb5_keytab_entry entry;
    size_t service_length = strlen(service);
    while (krb5_kt_next_entry(acceptor->krb5, file, &entry, &cursor) == 0) {
        const krb5_data *first = entry.principal->length > 0 ? &entry.principal->data[0] : NULL;
        if (first && first->length == service_length && memcmp(first->data, service, service_length) == 0) {
            if (krb5_kt_add_entry(acceptor->krb5, acceptor->memory, &entry) == 0) (*keys)++;
        }
        krb5_free_keytab_entry_contents(acceptor->krb5, &entry);
    }
    krb5_kt_end_seq_get(acceptor->krb5, file, &cursor);
    krb5_kt_close(acceptor->krb5, file);
    if (*keys == 0) {
        snprintf(error, error_size, "the keytab %s holds no key for the service '%s' (%s/HOST@REALM)", keytab, service,
                 service);
        identgate_gss_acceptor_free(acceptor);
        return -1;
    }
    // Credentials for Kerberos itself (RFC 1961 clients send its tokens bare) and for
    // SPNEGO (RFC 4559's Negotiate wraps them), both from the keys in memory.
    OM_uint32 minor;
    gss_key_value_element_desc element = {"keytab", name};
    gss_key_value_set_desc store = {1, &element};
    gss_OID_desc spnego = {6, "\x2b\x06\x01\x05\x05\x02"};
    gss_OID_set mechanisms = GSS_C_NO_OID_SET;
    OM_uint32 major = gss_create_empty_oid_set(&minor, &mechanisms);
    if (!GSS_ERROR(major)) major = gss_add_oid_set_member(&minor, (gss_OID)gss_mech_krb5, &mechanisms);
    if (!GSS_ERROR(major)) major = gss_add_oid_set_member(&minor, &spnego, &mechanisms);
    if (!GSS_ERROR(major)) {
        major = gss_acquire_cred_from(&minor, GSS_C_NO_NAME, GSS_C_INDEFINITE, mechanisms, GSS_C_ACCEPT, &store,
                                      &acceptor->credential, NULL, NULL);
    }
    OM_uint32 ignored;
    gss_release_oid_set(&ignored, &mechanisms);
    if (GSS_ERROR(major)) {
        gss_message(major, minor, "cannot use the keytab's keys", error, error_size);
        identgate_gss_acceptor_free(acceptor);
        return -1;
    }
    *out = acceptor;
    return 0;
}

void identgate_gss_acceptor_free(identgate_gss_acceptor *acceptor) {
    if (!acceptor) return;
    OM_uint32 minor;
    if (acceptor->credential) gss_release_cred(&minor, &acceptor->credential);
    if (acceptor->memory) krb5_kt_close(acceptor->krb5, acceptor->memory);
    if (acceptor->krb5) krb5_free_context(acceptor->krb5);
    free(acceptor);
}

static int copy_out(gss_buffer_desc *buffer, void **output, size_t *output_size) {
    *output = NULL;
    *output_size = buffer->length;
    if (buffer->length > 0) {
        *output = malloc(buffer->length);
        if (!*output) return -1;
        memcpy(*output, buffer->value, buffer->length);
    }
    OM_uint32 minor;
    gss_release_buffer(&minor, buffer);
    return 0;
}

int identgate_gss_accept(identgate_gss_acceptor *acceptor, identgate_gss_context **context, const void *input,
                         size_t input_size, void **output, size_t *output_size, int *complete, char *error,
                         size_t error_size) {
    *output = NULL;
    *output_size = 0;
    *complete = 0;
    if (!*context) {
        *context = calloc(1, sizeof **context);
        if (!*context) {
            snprintf(error, error_size, "out of memory");
            return -1;
        }
    }
    identgate_gss_context *state = *context;
    gss_buffer_desc in = {input_size, (void *)input};
    gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
    OM_uint32 minor, flags = 0;
    if (state->source) gss_release_name(&minor, &state->source);
    OM_uint32 major = gss_accept_sec_context(&minor, &state->context, acceptor->credential, &in,
                                             GSS_C_NO_CHANNEL_BINDINGS, &state->source, &state->mechanism, &out, &flags,
                                             NULL, NULL);
    // A failed step may still have a token for the client (an error token); it is not sent.
    if (GSS_ERROR(major)) {
        gss_release_buffer(&minor, &out);
        gss_message(major, minor, "GSS-API context not accepted", error, error_size);
        return -1;
    }
    if (copy_out(&out, output, output_size) != 0) {
        snprintf(error, error_size, "out of memory");
        return -1;
    }
    *complete = (major & GSS_S_CONTINUE_NEEDED) ? 0 : 1;
    return 0;
}

int identgate_gss_peer(identgate_gss_context *context, char *principal, size_t principal_size, char *mechanism,
                       size_t mechanism_size) {
    OM_uint32 minor;
    gss_buffer_desc name = GSS_C_EMPTY_BUFFER;
    if (!context->source || GSS_ERROR(gss_display_name(&minor, context->source, &name, NULL))) return -1;
    snprintf(principal, principal_size, "%.*s", (int)name.length, (const char *)name.value);
    gss_release_buffer(&minor, &name);
    if (context->mechanism && context->mechanism->length == gss_mech_krb5->length &&
        memcmp(context->mechanism->elements, gss_mech_krb5->elements, gss_mech_krb5->length) == 0) {
        snprintf(mechanism, mechanism_size, "krb5");
    } else {
        gss_buffer_desc oid = GSS_C_EMPTY_BUFFER;
        if (context->mechanism && !GSS_ERROR(gss_oid_to_str(&minor, context->mechanism, &oid))) {
            snprintf(mechanism, mechanism_size, "%.*s", (int)oid.length, (const char *)oid.value);
            gss_release_buffer(&minor, &oid);
        } else {
            snprintf(mechanism, mechanism_size, "unknown");
        }
    }
    return 0;
}

_Static_assert(sizeof(identgate_gss_output) == sizeof(gss_buffer_desc), "identgate_gss_output is a gss_buffer_desc");

int identgate_gss_wrap(identgate_gss_context *context, int confidential, const void *input, size_t input_size,
                       identgate_gss_output *output, char *error, size_t error_size) {
    gss_buffer_desc in = {input_size, (void *)input};
    gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
    OM_uint32 minor;
    int encrypted = 0;
    output->length = 0;
    output->value = NULL;
    OM_uint32 major = gss_wrap(&minor, context->context, confidential, GSS_C_QOP_DEFAULT, &in, &encrypted, &out);
    if (GSS_ERROR(major)) {
        gss_message(major, minor, "gss_wrap failed", error, error_size);
        return -1;
    }
    if (confidential && !encrypted) {
        gss_release_buffer(&minor, &out);
        snprintf(error, error_size, "the mechanism cannot encrypt");
        return -1;
    }
    output->length = out.length;
    output->value = out.value;
    return 0;
}

int identgate_gss_unwrap(identgate_gss_context *context, int datagram, const void *input, size_t input_size,
                         identgate_gss_output *output, int *confidential, char *error, size_t error_size) {
    gss_buffer_desc in = {input_size, (void *)input};
    gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
    OM_uint32 minor;
    int encrypted = 0;
    output->length = 0;
    output->value = NULL;
    OM_uint32 major = gss_unwrap(&minor, context->context, &in, &out, &encrypted, NULL);
    // Duplicate, old, unseq or gap tokens are supplementary info, not errors, to GSS:
    // on a reliable stream they mean replay or reordering, and are refused; datagrams
    // may be lost or reordered, but not replayed.
    OM_uint32 refused = datagram ? GSS_S_DUPLICATE_TOKEN
                                 : (GSS_S_DUPLICATE_TOKEN | GSS_S_OLD_TOKEN | GSS_S_UNSEQ_TOKEN | GSS_S_GAP_TOKEN);
    if (GSS_ERROR(major) || (major & refused)) {
        gss_release_buffer(&minor, &out);
        gss_message(major, minor, "message failed its GSS-API check", error, error_size);
        return -1;
    }
    *confidential = encrypted;
    output->length = out.length;
    output->value = out.value;
    return 0;
}

void identgate_gss_release_output(identgate_gss_output *output) {
    OM_uint32 minor;
    gss_buffer_desc buffer = {output->length, output->value};
    gss_release_buffer(&minor, &buffer);
    output->length = 0;
    output->value = NULL;
}

int identgate_gss_wrap_size_limit(identgate_gss_context *context, int confidential, size_t token_limit,
                                  size_t *message_limit) {
    OM_uint32 minor, limit = 0;
    OM_uint32 major = gss_wrap_size_limit(&minor, context->context, confidential, GSS_C_QOP_DEFAULT,
                                          (OM_uint32)token_limit, &limit);
    if (GSS_ERROR(major)) return -1;
    *message_limit = limit;
    return 0;
}

void identgate_gss_context_free(identgate_gss_context *context) {
    if (!context) return;
    OM_uint32 minor;
    if (context->context != GSS_C_NO_CONTEXT) gss_delete_sec_context(&minor, &context->context, GSS_C_NO_BUFFER);
    if (context->source) gss_release_name(&minor, &context->source);
    free(context);
}

void identgate_gss_release_buffer(void *buffer) { free(buffer); }
