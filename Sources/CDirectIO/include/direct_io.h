#ifndef IDENTGATE_DIRECT_IO_H
#define IDENTGATE_DIRECT_IO_H

// The Linux calls the direct connection driver uses that Swift's Glibc module does not
// bring: epoll and eventfd, and two GNU calls wrapped (they need _GNU_SOURCE).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

/// accept4(2): the connection comes non-blocking and close-on-exec in one call.
int identgate_accept4(int descriptor, struct sockaddr *address, socklen_t *length, int flags);

/// Names the calling thread (at most 15 bytes show), for ps and top.
void identgate_name_thread(const char *name);

#endif
