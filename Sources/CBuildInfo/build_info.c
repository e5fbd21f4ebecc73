#include "build_info.h"

#ifndef IDENTGATE_COMMIT
#define IDENTGATE_COMMIT "unknown"
#endif

const char *identgate_build_commit(void) { return IDENTGATE_COMMIT; }
