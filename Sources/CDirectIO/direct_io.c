#define _GNU_SOURCE
#include <pthread.h>
#include <sys/socket.h>
#include "direct_io.h"

int identgate_accept4(int descriptor, struct sockaddr *address, socklen_t *length, int flags) {
    return accept4(descriptor, address, length, flags);
}

void identgate_name_thread(const char *name) {
    pthread_setname_np(pthread_self(), name);
}
