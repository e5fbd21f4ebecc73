#ifndef IDENTGATE_CPRIVILEGES_H
#define IDENTGATE_CPRIVILEGES_H

// Fixed-arity wrappers for what Swift cannot call directly (prctl is variadic) and for
// libcap (Debian: libcap-dev). Each returns 0 on success, or -1 with errno set.

/// Drops every capability from this thread's bounding set (needs CAP_SETPCAP: call
/// while still root).
int identgate_drop_bounding_set(void);

/// Empties this thread's effective, permitted and inheritable sets with libcap.
int identgate_clear_capability_sets(void);

/// Clears this thread's ambient set.
int identgate_clear_ambient_set(void);

/// Sets PR_SET_NO_NEW_PRIVS: execve can never grant privileges again.
int identgate_set_no_new_privs(void);

/// SO_PEERCRED (struct ucred needs _GNU_SOURCE, which Swift's Glibc does not set): the
/// process at the other end of a UNIX socket, as it was when it connected.
int identgate_peer_credentials(int descriptor, int *pid, unsigned int *uid);

#endif
