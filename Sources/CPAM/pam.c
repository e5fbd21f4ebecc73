#include "CPAM.h"

#include <security/pam_appl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/// Answers the password prompt (echo off) with the password; any prompt that asks for
/// something else (echo on: a user name, an OTP, "new password") fails the conversation,
/// as no one is there to answer it. Messages (info, errors) get empty answers.
static int conversation(int count, const struct pam_message **messages, struct pam_response **responses, void *data) {
    const char *password = data;
    if (count <= 0 || count > PAM_MAX_NUM_MSG) return PAM_CONV_ERR;
    struct pam_response *answers = calloc((size_t)count, sizeof *answers);
    if (!answers) return PAM_BUF_ERR;
    for (int i = 0; i < count; i++) {
        switch (messages[i]->msg_style) {
        case PAM_PROMPT_ECHO_OFF:
            answers[i].resp = strdup(password);
            if (!answers[i].resp) goto fail;
            break;
        case PAM_ERROR_MSG:
        case PAM_TEXT_INFO:
            break;
        default:
            goto fail;
        }
    }
    *responses = answers;
    return PAM_SUCCESS;
fail:
    for (int i = 0; i < count; i++) {
        if (answers[i].resp) {
            memset(answers[i].resp, 0, strlen(answers[i].resp));
            free(answers[i].resp);
        }
    }
    free(answers);
    return PAM_CONV_ERR;
}

identgate_pam_result identgate_pam_check(const char *service, const char *user, const char *password,
                                         size_t password_length, char *detail, size_t detail_size) {
    detail[0] = 0;
    if (memchr(password, 0, password_length)) {
        snprintf(detail, detail_size, "a password with a NUL byte cannot be passed to PAM");
        return IDENTGATE_PAM_REFUSED;
    }
    char *copy = malloc(password_length + 1);
    if (!copy) {
        snprintf(detail, detail_size, "out of memory");
        return IDENTGATE_PAM_UNAVAILABLE;
    }
    memcpy(copy, password, password_length);
    copy[password_length] = 0;
    struct pam_conv conv = {conversation, copy};
    pam_handle_t *handle = NULL;
    int status = pam_start(service, user, &conv, &handle);
    identgate_pam_result result;
    if (status != PAM_SUCCESS) {
        snprintf(detail, detail_size, "pam_start(%s): %s", service, pam_strerror(handle, status));
        result = IDENTGATE_PAM_UNAVAILABLE;
    } else if ((status = pam_authenticate(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK)) != PAM_SUCCESS) {
        snprintf(detail, detail_size, "%s", pam_strerror(handle, status));
        result = (status == PAM_AUTH_ERR || status == PAM_USER_UNKNOWN || status == PAM_MAXTRIES)
                     ? IDENTGATE_PAM_REFUSED
                     : IDENTGATE_PAM_UNAVAILABLE;
    } else if ((status = pam_acct_mgmt(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK)) != PAM_SUCCESS) {
        snprintf(detail, detail_size, "%s", pam_strerror(handle, status));
        result = (status == PAM_ACCT_EXPIRED || status == PAM_NEW_AUTHTOK_REQD || status == PAM_PERM_DENIED ||
                  status == PAM_AUTH_ERR || status == PAM_USER_UNKNOWN)
                     ? IDENTGATE_PAM_ACCOUNT_REFUSED
                     : IDENTGATE_PAM_UNAVAILABLE;
    } else {
        result = IDENTGATE_PAM_ACCEPTED;
    }
    if (handle) pam_end(handle, status);
    memset(copy, 0, password_length);
    free(copy);
    return result;
}
