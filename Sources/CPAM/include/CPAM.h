#ifndef IDENTGATE_CPAM_H
#define IDENTGATE_CPAM_H

#include <stddef.h>

// A small shim over Linux-PAM (Debian: libpam0g-dev): the conversation function is a C
// callback with a context pointer, which is simplest written in C.

/// What a check concluded.
typedef enum {
    /// The password is right and the account may be used now.
    IDENTGATE_PAM_ACCEPTED = 0,
    /// Wrong password, or no such user.
    IDENTGATE_PAM_REFUSED = 1,
    /// The password is right but the account may not be used (expired, locked, outside its hours).
    IDENTGATE_PAM_ACCOUNT_REFUSED = 2,
    /// PAM could not check at all (the service is missing, a module cannot reach its data:
    /// pam_unix cannot read /etc/shadow without privileges, a directory does not answer).
    IDENTGATE_PAM_UNAVAILABLE = 3,
} identgate_pam_result;

/// pam_authenticate then pam_acct_mgmt for `user` under `service`, answering only the
/// password prompt with `password` (`password_length` bytes, no NUL inside). On a result
/// other than ACCEPTED, `detail` holds PAM's words (NUL-terminated, cut to `detail_size`).
identgate_pam_result identgate_pam_check(const char *service, const char *user, const char *password,
                                         size_t password_length, char *detail, size_t detail_size);

#endif
