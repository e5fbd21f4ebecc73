// zlib (Debian: zlib1g-dev), to read gzip-compressed rotated audit logs.
#include <zlib.h>
