#define _GNU_SOURCE
#include "CPrivileges.h"

#include <errno.h>
#include <stddef.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/socket.h>

int identgate_drop_bounding_set(void) {
    // Up to the kernel's last capability: PR_CAPBSET_READ fails with EINVAL beyond it.
    for (int capability = 0; prctl(PR_CAPBSET_READ, capability, 0, 0, 0) >= 0; capability++) {
        if (prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0) return -1;
    }
    return errno == EINVAL ? 0 : -1;
}

int identgate_clear_capability_sets(void) {
    cap_t empty = cap_init();
    if (empty == NULL) return -1;
    int result = cap_set_proc(empty);
    int saved = errno;
    cap_free(empty);
    errno = saved;
    return result;
}

int identgate_clear_ambient_set(void) {
    return prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
}

int identgate_set_no_new_privs(void) {
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

int identgate_peer_credentials(int descriptor, int *pid, unsigned int *uid) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(descriptor, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    return 0;
}
